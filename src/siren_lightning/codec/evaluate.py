"""Attribute survival of a codec on SynthCaps (DESIGN.md section 4's bar for the embedded codec).

For each held-out clip, the original and its resynthesis (encode -> first n codebooks -> decode)
are measured by signal processing (`siren_lightning.data.synthcaps.measure_attributes`): pitch
band, onset count and envelope direction. A clip "survives" when all three agree. Beside it: the
multi-scale mel distance (DAC's 7-scale recipe) and SI-SDR (torchmetrics) of the resynthesis.

`python -m siren_lightning.codec.evaluate --codec assets/codec_tiny --manifest data/synthcaps/test.jsonl`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from audiotools import AudioSignal
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
from tqdm import tqdm

from siren_lightning.codec.base import RVQCodec

JUDGED = ("pitch", "count", "envelope")


def agreement(original: dict[str, Any], resynthesis: dict[str, Any]) -> dict[str, bool]:
    """Which judged attributes of two measurements match; "all" is their conjunction."""
    out = {k: original[k] == resynthesis[k] for k in JUDGED}
    out["all"] = all(out.values())
    return out


@torch.no_grad()
def attribute_survival(
    codec: RVQCodec,
    audios: list[torch.Tensor],
    n_quantizers: tuple[int, ...] = (1, 2, 4, 8, 12),
    stated: list[dict[str, Any]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure attribute agreement, mel distance and SI-SDR per number of codebooks.

    Args:
        codec: any codec of the interface.
        audios: clips [N_i] at the codec's rate.
        n_quantizers: numbers of leading codebooks to decode with.
        stated: the clips' generator attributes (adds agreement of the *original* with them,
            i.e. the measurement's own accuracy, as a reference row).

    Returns:
        {"n_clips", "rows": {"<n>": {"agree_all", "agree_pitch", "agree_count", "agree_envelope",
        "mel_distance", "si_sdr"}}, "original_vs_stated": {...} (if stated)}.
    """
    from siren_lightning.data.synthcaps import measure_attributes
    from siren_lightning.stages.codec import dac_mel_loss

    mel = dac_mel_loss()
    sr = codec.sample_rate
    codec.eval()
    measured = [measure_attributes(a.numpy(), sr) for a in audios]
    rows: dict[str, dict[str, float]] = {}
    counts = {str(n): {k: 0 for k in (*JUDGED, "all")} for n in n_quantizers}
    sums = {str(n): {"mel_distance": 0.0, "si_sdr": 0.0} for n in n_quantizers}
    for audio, orig in tqdm(list(zip(audios, measured)), disable=not progress, desc="survival"):
        x = audio[None, None]  # [1, 1, N]
        codes = codec.encode(x)  # [1, r, T]
        for n in n_quantizers:
            recon = codec.decode(codes[:, :n])[..., : audio.numel()]  # [1, 1, N]
            agree = agreement(orig, measure_attributes(recon[0, 0].numpy(), sr))
            for k, v in agree.items():
                counts[str(n)][k] += int(v)
            sums[str(n)]["mel_distance"] += float(mel(AudioSignal(recon, sr), AudioSignal(x, sr)))
            sums[str(n)]["si_sdr"] += float(
                scale_invariant_signal_distortion_ratio(recon[0, 0], audio)
            )
    m = max(len(audios), 1)
    for n in map(str, n_quantizers):
        rows[n] = {f"agree_{k}": counts[n][k] / m for k in (*JUDGED, "all")}
        rows[n].update({k: v / m for k, v in sums[n].items()})
    result: dict[str, Any] = {"n_clips": len(audios), "rows": rows}
    if stated is not None:
        ok = [{k: measured[i][k] == stated[i][k] for k in JUDGED} for i in range(len(audios))]
        result["original_vs_stated"] = {f"agree_{k}": sum(o[k] for o in ok) / m for k in JUDGED} | {
            "agree_all": sum(all(o.values()) for o in ok) / m
        }
    return result


def main(argv: list[str]) -> int:
    """Print (and optionally save) the attribute-survival table of a codec."""
    from siren_lightning.codec.checkpoint import load_codec
    from siren_lightning.data.audio import load_audio
    from siren_lightning.data.manifest import read_manifest

    parser = argparse.ArgumentParser(prog="siren codec-eval", description=main.__doc__)
    parser.add_argument("--codec", required=True)
    parser.add_argument("--manifest", default="data/synthcaps/test.jsonl")
    parser.add_argument("--max-clips", type=int, default=200)
    parser.add_argument("--n-quantizers", type=int, nargs="+", default=[1, 2, 4, 8, 12])
    parser.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    codec = load_codec(args.codec)
    clips = read_manifest(args.manifest)[: args.max_clips]
    audios = [load_audio(c.audio, codec.sample_rate) for c in clips]
    result = attribute_survival(
        codec,
        audios,
        tuple(args.n_quantizers),
        stated=[c.attributes for c in clips],
        progress=True,
    )
    result["codec_sha256"] = codec.sha256()
    result["manifest"] = args.manifest
    print(
        f"{'codebooks':>9} {'agree':>6} {'pitch':>6} {'count':>6} {'env':>6} {'mel':>7} {'SI-SDR':>8}"
    )
    for n, row in result["rows"].items():
        print(
            f"{n:>9} {row['agree_all']:6.3f} {row['agree_pitch']:6.3f} {row['agree_count']:6.3f} "
            f"{row['agree_envelope']:6.3f} {row['mel_distance']:7.3f} {row['si_sdr']:8.2f}"
        )
    if "original_vs_stated" in result:
        print(f"original vs stated attributes: {result['original_vs_stated']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
