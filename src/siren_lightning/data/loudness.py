"""Per-frame loudness curves: a plan an LM with `control_dim` 1 can be conditioned on.

A frame-level LM that reads only its caption must decide at every frame whether an event
starts, ends or changes level, and those rare decisions are where SynthCaps' count and envelope
fail (docs/model.md). A loudness curve per codec frame says all three at once; conditioning on it
is Music ControlNet's dynamics control (Wu et al. 2024) and PicoAudio's timestamp control (Xie
et al. 2024) at the granularity of one codec frame. A deviation from the paper.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from siren_lightning.data.audio import load_audio
from siren_lightning.data.manifest import read_manifest

FLOOR_DB = -60.0


def frame_loudness(audio: np.ndarray, hop: int, floor_db: float = FLOOR_DB) -> np.ndarray:
    """Loudness of each codec frame, scaled to [0, 1].

    Frame t covers samples t*hop .. (t+1)*hop - 1 (the last frame zero-padded): its RMS in dB
    re full scale, clipped at `floor_db`, then mapped linearly so that `floor_db` is 0 and 0 dB
    is 1.

    Args:
        audio: [N] float samples.

    Returns:
        [ceil(N / hop)] float32.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    frames = max(1, -(-audio.size // hop))
    padded = np.pad(audio, (0, frames * hop - audio.size)).reshape(frames, hop)
    db = 20 * np.log10(np.sqrt((padded**2).mean(axis=1)) + 1e-12)
    return ((np.clip(db, floor_db, 0.0) - floor_db) / -floor_db).astype(np.float32)


def loudness_of_manifest(manifest: str | Path, hop: int, sample_rate: int) -> dict[str, Tensor]:
    """{clip id: [T] loudness} for every clip of a manifest (audio read at `sample_rate`)."""
    out = {}
    for clip in tqdm(read_manifest(manifest), desc="loudness", unit="clip"):
        audio = load_audio(clip.audio, sample_rate)
        out[clip.id] = torch.from_numpy(frame_loudness(audio.numpy(), hop))
    return out


def read_curves(folder: str | Path, who: str) -> dict[str, Tensor]:
    """{clip id: [T] curve} of every `siren loudness` file (`*.pt`) in a folder."""
    files = sorted(Path(folder).glob("*.pt"))
    if not files:
        raise FileNotFoundError(
            f"{who}: no loudness curves (*.pt) in {folder}: write them with `siren loudness`"
        )
    curves: dict[str, Tensor] = {}
    for path in files:
        curves.update(torch.load(path, weights_only=True))
    return curves


def pad_curves(curves: list[Tensor], frames: int) -> Tensor:
    """[T_i] or [T_i, C] curves -> [B, frames, C] float, each zero-padded or cut to `frames`."""
    curves = [c if c.dim() == 2 else c[:, None] for c in curves]
    out = torch.zeros(len(curves), frames, curves[0].shape[-1])
    for i, curve in enumerate(curves):
        piece = curve[:frames]
        out[i, : piece.shape[0]] = piece.float()
    return out


def control_arguments(
    curves: list[Tensor],
    frames: int,
    scale: float = 0.0,
    guidance: str = "reversed",
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """`models.sampling.generate`'s control arguments for a batch of curves: `control` [B,
    frames, C] and, when `scale` != 0, `control_contrast` (each curve's `guidance_curve` copy of
    this kind, padded alike) and `control_scale`."""
    out: dict[str, Any] = {"control": pad_curves(curves, frames).to(device)}
    if scale != 0:
        copies = [guidance_curve(c, guidance) for c in curves]
        out["control_contrast"] = pad_curves(copies, frames).to(device)
        out["control_scale"] = scale
    return out


def window_control(
    curves: dict[str, Tensor], ids: list[str], offsets: Tensor | None, frames: int
) -> Tensor:
    """The control [B, T, 1] of a batch's windows: each clip's curve from its window's first
    frame, zero-padded (or cut) to `frames`."""
    missing = [clip for clip in ids if clip not in curves]
    if missing:
        raise ValueError(f"control: clip {missing[0]} has no loudness curve")
    starts = [0] * len(ids) if offsets is None else [int(o) for o in offsets]
    return pad_curves([curves[c][s:] for c, s in zip(ids, starts, strict=True)], frames)


GUIDANCE_CURVES = ("flat", "steady", "reversed")


def guidance_curve(curve: Tensor, kind: str, sounding: float = 0.35) -> Tensor:
    """A copy of a control curve without part of its plan, for control guidance.

    `generate(control_contrast=)` reads the captions under it too and adds ``control_scale *
    (cond - contrast)`` to the guided logits, so the draws move towards what the curve says and
    this copy does not (`models.sampling.contrast_control`).

    Args:
        curve: [T] or [T, C] per-frame loudness in [0, 1].
        kind: "flat": every frame at the clip's mean (no timing, no shape); "steady": each run
            of frames at or above `sounding` at the run's mean (the timing kept, the shape
            within each event removed); "reversed": each such run reversed in time (a fade in
            becomes a fade out: the contrast is twice the shape).

    Returns:
        a tensor of the curve's shape.
    """
    if kind not in GUIDANCE_CURVES:
        raise ValueError(f"guidance curve {kind!r} is not one of {list(GUIDANCE_CURVES)}")
    if kind == "flat":
        return curve.float().mean(dim=0, keepdim=True).expand_as(curve).clone()
    out = curve.float().clone()
    level = out if out.dim() == 1 else out[:, 0]  # the runs of the first feature
    on = (level >= sounding).tolist()
    start = 0
    for t in range(len(on) + 1):
        if t < len(on) and on[t]:
            continue
        if t > start:  # frames start .. t-1 sound
            run = out[start:t]
            out[start:t] = run.flip(0) if kind == "reversed" else run.mean(dim=0)
        start = t + 1
    return out


def main(argv: list[str]) -> int:
    """Write the per-frame loudness curves of a manifest's clips (for `control_cache:`)."""
    p = argparse.ArgumentParser(prog="siren loudness", description=main.__doc__)
    p.add_argument("--manifest", required=True, help="JSONL manifest")
    p.add_argument("--out", required=True, help="destination .pt file")
    p.add_argument("--hop-length", type=int, default=320, help="samples per codec frame")
    p.add_argument("--sample-rate", type=int, default=16000)
    args = p.parse_args(argv)
    curves = loudness_of_manifest(args.manifest, args.hop_length, args.sample_rate)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(curves, args.out)
    print(f"{len(curves)} loudness curves -> {args.out}")
    return 0
