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


def window_control(
    curves: dict[str, Tensor], ids: list[str], offsets: Tensor | None, frames: int
) -> Tensor:
    """The control [B, T, 1] of a batch's windows: each clip's curve from its window's first
    frame, zero-padded (or cut) to `frames`."""
    out = torch.zeros(len(ids), frames, 1)
    for i, clip in enumerate(ids):
        if clip not in curves:
            raise ValueError(f"control: clip {clip} has no loudness curve")
        start = 0 if offsets is None else int(offsets[i])
        piece = curves[clip][start : start + frames]
        out[i, : piece.shape[0], 0] = piece
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
