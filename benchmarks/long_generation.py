"""Cost of generation past the training length against length (issue 18, item 3).

For 5, 10, 20 and 40 s of audio (50 frames/s) it measures, in one run, the CPU time per second
of audio of `editing.generate_long` (windows of 6 s re-prompted with the last 2 s; each window
prefills its 2 s of context in one forward, then steps 4 s) and, beside it, of one cached pass
over the whole length (positions and clip lengths past training, what the window avoids). Then
the ratio of each length's cost per second to the 5 s cost: the window's must stay flat. Tiny
presets with timing conditioning, random weights, greedy decoding, guidance on (2 rows per
clip): speed only.

    PYTHONPATH=src python benchmarks/long_generation.py   # CPU, 1 thread, about 16 min
"""

from __future__ import annotations

import argparse
import time

import torch

from siren_lightning.editing import generate_long, window_plan
from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
from siren_lightning.models.sampling import generate
from siren_lightning.models.siren import SirenConfig, SirenLM


def build(size: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    config = SirenConfig.from_name(size, dropout=0.0, duration_conditioning=True)
    table = torch.randn(config.num_codebooks, config.codebook_size, config.latent_dim)
    siren = SirenLM(config, table).eval()
    delay = DelayPatternLM(
        DelayLMConfig.from_name(size, dropout=0.0, duration_conditioning=True), table
    ).eval()
    return {"siren": siren, "delay LM": delay}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="tiny")
    p.add_argument("--seconds", type=float, nargs="+", default=[5.0, 10.0, 20.0, 40.0])
    p.add_argument("--window", type=float, default=6.0, help="seconds per window")
    p.add_argument("--context", type=float, default=2.0, help="seconds each window re-reads")
    p.add_argument("--frame-rate", type=float, default=50.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="rounds over every length (best kept)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = build(args.size)
    window, context = round(args.window * args.frame_rate), round(args.context * args.frame_rate)
    text_dim = models["siren"].config.text_dim
    states, mask = torch.randn(1, 12, text_dim), torch.ones(1, 12, dtype=torch.bool)
    uncond, uncond_mask = torch.randn(1, 2, text_dim), torch.ones(1, 2, dtype=torch.bool)
    kw = dict(temperature=0.0, cfg_scale=3.0, uncond_states=uncond, uncond_mask=uncond_mask)
    for model in models.values():  # warm-up
        generate_long(model, states, mask, window + 10, window, context, **kw)
    print(
        f"size={args.size}; window {args.window:g} s, context {args.context:g} s; greedy, cfg 3; "
        f"batch 1; threads={args.threads}; CPU time of this process, best of {args.repeats} "
        "rounds"
    )
    print(
        "| model | audio s | windows | window s | window ms per audio s | one pass s "
        "| one pass ms per audio s |"
    )
    print("|---|---|---|---|---|---|---|")
    per_second: dict[tuple[str, str], list[float]] = {}
    best: dict[tuple[str, float], tuple[float, float]] = {}
    for _ in range(args.repeats):  # rounds over every length, so drift hits all lengths alike
        for name, model in models.items():
            for seconds in args.seconds:
                frames = round(seconds * args.frame_rate)
                start = time.process_time()
                codes = generate_long(model, states, mask, frames, window, context, **kw)
                windowed = time.process_time() - start
                assert codes.shape[-1] == frames
                start = time.process_time()
                generate(model, states, mask, frames, **kw)
                single = time.process_time() - start
                old = best.get((name, seconds), (float("inf"), float("inf")))
                best[name, seconds] = (min(old[0], windowed), min(old[1], single))
    for name in models:
        for seconds in args.seconds:
            windowed, single = best[name, seconds]
            frames = round(seconds * args.frame_rate)
            per_second.setdefault((name, "window"), []).append(windowed / seconds)
            per_second.setdefault((name, "one pass"), []).append(single / seconds)
            print(
                f"| {name} | {seconds:g} | {len(window_plan(frames, window, context))} "
                f"| {windowed:.2f} | {1000 * windowed / seconds:.0f} | {single:.2f} "
                f"| {1000 * single / seconds:.0f} |",
                flush=True,
            )
    print()
    print("Cost per audio second relative to the shortest length:")
    print("| model | path | " + " | ".join(f"{s:g} s" for s in args.seconds) + " |")
    print("|---|---|" + "---|" * len(args.seconds))
    for (name, path), values in per_second.items():
        ratios = " | ".join(f"{v / values[0]:.2f}" for v in values)
        print(f"| {name} | {path} | {ratios} |")


if __name__ == "__main__":
    main()
