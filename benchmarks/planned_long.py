"""Does a planned model follow its plan past the training window?

For the first captions of held-out test clips, the model's planner draws each caption's loudness
curve at S seconds and the model generates under it (`generate_audio`: one generation up to the
6 s window, the sliding window past it, each window reading its slice of the plan). The measure:
the Pearson correlation, over frames, between the generated audio's loudness (`frame_loudness`,
what training read) and the caption's own plan, beside the same with another caption's plan at
the same length (what a model that ignores the plan would score). Mean ± standard error over
clips, per length.

    PYTHONPATH=src python benchmarks/planned_long.py --model assets/siren_tiny_planned \
      --seconds 4 12 --clips 24   # CPU, 1 thread, a few minutes
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from siren_lightning.data.loudness import frame_loudness
from siren_lightning.data.manifest import read_manifest
from siren_lightning.generate import generate_audio, load_generation_stack, planned_controls
from siren_lightning.generation_config import model_plan, model_sampling

ROOT = Path(__file__).resolve().parents[1]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two equal-length series (0 where either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def mean_se(values: list[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.fmean(values):.3f} ± {se:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "assets/siren_tiny_planned"))
    p.add_argument("--manifest", default=str(ROOT / "data/synthcaps_clean/test.jsonl"))
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--seconds", type=float, nargs="+", default=[4.0, 12.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs/planned_long_bench"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    plan = model_plan(args.model)
    if plan is None:
        raise SystemExit(f"{args.model}: its generation.json names no plan")
    model, codec, text = load_generation_stack(args.model)
    sampling = model_sampling(args.model, "planned_long").values
    captions = [c.captions[0] for c in read_manifest(args.manifest) if c.captions][: args.clips]
    print(f"{args.model}: {len(captions)} test captions, seed {args.seed}, {sampling}")
    print("| seconds | r with its own plan | r with another caption's plan |")
    print("|---|---|---|")
    for seconds in args.seconds:
        curves = planned_controls(plan.planner, text, captions, seconds, codec)
        records = generate_audio(
            model,
            text,
            codec,
            captions,
            Path(args.out) / f"{seconds:g}s",
            seconds=seconds,
            seed=args.seed,
            batch_size=8,
            sampling=sampling,
            window_seconds=6.0,
            controls=curves,
            control_guidance=plan.control_guidance,
            control_scale=plan.control_scale,
        )
        own, other = [], []
        for i, record in enumerate(records):
            audio, _ = sf.read(record["path"], dtype="float32")
            loud = frame_loudness(audio, codec.hop_length)
            mine, theirs = curves[i][:, 0].numpy(), curves[(i + 1) % len(curves)][:, 0].numpy()
            n = min(len(loud), len(mine), len(theirs))
            own.append(correlation(loud[:n], mine[:n]))
            other.append(correlation(loud[:n], theirs[:n]))
        print(f"| {seconds:g} | {mean_se(own)} | {mean_se(other)} |", flush=True)


if __name__ == "__main__":
    main()
