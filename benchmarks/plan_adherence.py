"""How much of count and envelope a loudness curve carries: the ceiling of an LM that follows it.

Each clip's curve (`siren loudness` of the originals, or `siren plan` of a planner) is rendered
as a 500 Hz tone whose level follows the curve frame by frame (linear between frame centres),
and `measure_attributes` judges count and envelope against the clip's stated attributes. An LM
conditioned on the curve can at best reach these figures; the originals' curves say how much the
rendering itself loses.

    PYTHONPATH=src python benchmarks/plan_adherence.py --manifest data/synthcaps_clean/test.jsonl \\
      --curves data/synthcaps_clean/loudness_test/test.pt --limit 200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from siren_lightning.data.loudness import FLOOR_DB
from siren_lightning.data.manifest import read_manifest
from siren_lightning.data.synthcaps import measure_attributes


def render_curve(curve: np.ndarray, hop: int, sample_rate: int, hz: float = 500.0) -> np.ndarray:
    """A tone whose RMS follows `curve` ([T] in [0, 1], `frame_loudness`'s scale); [T * hop]."""
    db = curve * -FLOOR_DB + FLOOR_DB
    rms = np.where(curve > 0, 10 ** (db / 20), 0.0)
    centres = (np.arange(curve.size) + 0.5) * hop
    n = curve.size * hop
    level = np.interp(np.arange(n), centres, rms) * np.sqrt(2)
    return level * np.sin(2 * np.pi * hz * np.arange(n) / sample_rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--curves", required=True, help="{clip id: [T] curve} (.pt)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--hop-length", type=int, default=320)
    p.add_argument("--sample-rate", type=int, default=16000)
    args = p.parse_args()
    curves = torch.load(args.curves, weights_only=True)
    clips = [c for c in read_manifest(args.manifest) if c.attributes][: args.limit]
    right = {"count": [], "envelope": []}
    for clip in clips:
        audio = render_curve(curves[clip.id].float().numpy(), args.hop_length, args.sample_rate)
        measured = measure_attributes(audio, args.sample_rate)
        for key in right:
            right[key].append(measured[key] == clip.attributes[key])
    print(f"{len(clips)} clips, curves {args.curves}")
    for key, hits in right.items():
        print(f"  {key:<9} {np.mean(hits):.3f}")


if __name__ == "__main__":
    main()
