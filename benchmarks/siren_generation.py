"""Siren generation speed: KV cache vs recomputation, experts batched vs looped, growth with length.

Random weights (speed only, never quality). Prints one table; ratios are measured in one run.

    PYTHONPATH=src python benchmarks/siren_generation.py --size tiny --frames 25 50 100 200
"""

from __future__ import annotations

import argparse
import time

import torch

from siren_lightning.models.sampling import generate
from siren_lightning.models.siren import SirenConfig, SirenLM


def _time(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def temporal_share(model: SirenLM, states: torch.Tensor, mask: torch.Tensor, frames: int) -> float:
    """Fraction of a cached generation spent in the temporal steps (the rest: decoders)."""
    spent = [0.0]
    originals = []
    for expert in model.experts:
        original = expert.run_temporal

        def timed(*args, _original=original, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            spent[0] += time.perf_counter() - start
            return out

        originals.append(original)
        expert.run_temporal = timed
    total = _time(
        lambda: generate(model, states, mask, frames, temperature=0.0, batch_experts=False)
    )
    for expert, original in zip(model.experts, originals):
        expert.run_temporal = original
    return spent[0] / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frame-rate", type=float, default=50.0, help="codec frames per second")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SirenConfig.from_name(args.size, dropout=0.0)
    table = torch.randn(config.num_codebooks, config.codebook_size, config.latent_dim)
    model = SirenLM(config, table).eval()
    states = torch.randn(args.batch, 12, config.text_dim)
    mask = torch.ones(args.batch, 12, dtype=torch.bool)
    generate(model, states, mask, 3, temperature=0.0)  # warm-up
    print(f"size={args.size} batch={args.batch} threads={args.threads} device=cpu")
    print(
        "frames | cached s | ms/frame | RTF cached | experts looped s | looped/cached "
        "| uncached s | uncached/cached"
    )
    for frames in args.frames:
        cached = _time(lambda f=frames: generate(model, states, mask, f, temperature=0.0))
        looped = _time(
            lambda f=frames: generate(model, states, mask, f, temperature=0.0, batch_experts=False)
        )
        uncached = _time(
            lambda f=frames: generate(model, states, mask, f, temperature=0.0, use_cache=False)
        )
        audio_s = frames / args.frame_rate
        print(
            f"{frames:6d} | {cached:8.2f} | {1000 * cached / frames:8.1f} | "
            f"{cached / audio_s:10.2f} | {looped:16.2f} | {looped / cached:13.2f} | "
            f"{uncached:10.2f} | {uncached / cached:15.2f}"
        )
    share = temporal_share(model, states, mask, args.frames[0])
    print(f"temporal steps with experts looped: {100 * share:.0f}% of the generation time")


if __name__ == "__main__":
    main()
