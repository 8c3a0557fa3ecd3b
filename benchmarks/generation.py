"""Generation speed, Siren vs the delay-pattern baseline at equal parameters (DESIGN.md section 8).

For 2, 5 and 10 s of audio (50 frames/s) it measures, in one run on the same machine: frames/s
and real-time factor (generation time / audio time) with the KV cache, Siren with its experts'
temporal steps batched (`StackedTemporal`) and the naive one-expert-at-a-time loop beside it, the
baseline `DelayPatternLM`; and without the cache (the whole prefix recomputed every step). Then
the ratios: cached per-frame cost at the longest / shortest length (flat = linear total cost),
uncached / cached, Siren / baseline frames/s. Random weights, greedy decoding: speed only.

    PYTHONPATH=src python benchmarks/generation.py                   # tiny, CPU, 1 thread, ~2 min
    PYTHONPATH=src python benchmarks/generation.py --uncached-max 10  # + recomputation at 10 s
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
from siren_lightning.models.sampling import generate, generate_frames
from siren_lightning.models.siren import SirenConfig, SirenLM, count_parameters

# CPU time of this process by default: on a shared machine, wall time mostly measures the other
# jobs; with one thread, CPU time is what a dedicated core would take. `--clock wall` for GPUs.
CLOCK = time.process_time


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def temporal_share(model: SirenLM, states: torch.Tensor, mask: torch.Tensor, frames: int) -> float:
    """Fraction of a cached, experts-looped Siren generation spent in the temporal steps."""
    spent = [0.0]
    originals = []
    for expert in model.experts:
        original = expert.run_stack

        def run(*args, _original=original, **kwargs):
            start = CLOCK()
            out = _original(*args, **kwargs)
            spent[0] += CLOCK() - start
            return out

        originals.append(original)
        expert.run_stack = run
    total = timed(
        lambda: generate(model, states, mask, frames, temperature=0.0, batch_experts=False)
    )
    for expert, original in zip(model.experts, originals):
        expert.run_stack = original
    return spent[0] / total


def build(size: str, device: str) -> tuple[SirenLM, DelayPatternLM]:
    torch.manual_seed(0)
    siren_config = SirenConfig.from_name(size, dropout=0.0)
    table = torch.randn(
        siren_config.num_codebooks, siren_config.codebook_size, siren_config.latent_dim
    )
    siren = SirenLM(siren_config, table).to(device).eval()
    baseline = DelayPatternLM(DelayLMConfig.from_name(size, dropout=0.0), table)
    return siren, baseline.to(device).eval()


def frame_times(model, states, mask, frames: int, **kwargs) -> list[float]:
    """Seconds between consecutive streamed frames of one cached greedy generation."""
    times, last = [], CLOCK()
    for _ in generate_frames(model, states, mask, frames, temperature=0.0, **kwargs):
        now = CLOCK()
        times.append(now - last)
        last = now
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="tiny", help="preset of both models")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frame-rate", type=float, default=50.0, help="codec frames per second")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved cached rounds (best)")
    parser.add_argument(
        "--uncached-max",
        type=float,
        default=5.0,
        help="recompute (no cache) only up to this many seconds (10 s adds ~4 min on 2 cores)",
    )
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    siren, baseline = build(args.size, args.device)
    text_dim = siren.config.text_dim
    states = torch.randn(args.batch, 12, text_dim, device=args.device)
    mask = torch.ones(args.batch, 12, dtype=torch.bool, device=args.device)
    runs = {
        "siren (experts batched)": (siren, {}),
        "baseline (delay pattern)": (baseline, {}),
        "siren (experts one at a time)": (siren, {"batch_experts": False}),
    }
    for model, kwargs in runs.values():  # warm-up
        generate(model, states, mask, 3, temperature=0.0, **kwargs)
    print(
        f"size={args.size} params: siren {count_parameters(siren) / 1e6:.2f}M, baseline "
        f"{count_parameters(baseline) / 1e6:.2f}M; batch={args.batch} threads={args.threads} "
        f"device={args.device}; greedy; {args.frame_rate:g} frames/s; {args.clock} time; cached: "
        f"best of {args.repeats} interleaved rounds"
    )
    print(
        "| model | audio s | frames | cached s | frames/s | ms/frame | RTF | uncached s "
        "| uncached/cached |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    cached: dict[tuple[str, float], float] = {}
    per_frame: dict[str, list[float]] = {}
    longest = max(args.seconds)
    for seconds in args.seconds:
        frames = round(seconds * args.frame_rate)
        for _ in range(args.repeats):
            for name, (model, kwargs) in runs.items():
                times = frame_times(model, states, mask, frames, **kwargs)
                if sum(times) < cached.get((name, seconds), float("inf")):
                    cached[name, seconds] = sum(times)
                    if seconds == longest:
                        per_frame[name] = times
        for name, (model, kwargs) in runs.items():
            t_cached = cached[name, seconds]
            uncached = "- | -"
            if not kwargs and seconds <= args.uncached_max:
                t_uncached = timed(
                    lambda m=model, f=frames: generate(
                        m, states, mask, f, temperature=0.0, use_cache=False
                    )
                )
                uncached = f"{t_uncached:.2f} | {t_uncached / t_cached:.1f}"
            print(
                f"| {name} | {seconds:g} | {frames} | {t_cached:.2f} | "
                f"{args.batch * frames / t_cached:.1f} | {1000 * t_cached / frames:.1f} | "
                f"{t_cached / seconds:.2f} | {uncached} |",
                flush=True,
            )
    short = min(args.seconds)
    window = round(short * args.frame_rate)
    print(
        f"\ncached per-frame cost, {longest:g} s / {short:g} s (1.0 = total cost linear in length):"
    )
    for name in runs:
        ratio = (cached[name, longest] / longest) / (cached[name, short] / short)
        times = per_frame[name]
        late = statistics.median(times[-window:]) / statistics.median(times[:window])
        print(
            f"  {name}: separate runs {ratio:.2f}; within the {longest:g} s run, median frame "
            f"time of its last {short:g} s / its first {short:g} s {late:.2f}"
        )
    print("siren frames/s / baseline frames/s (same length, same run):")
    for seconds in args.seconds:
        base = cached["baseline (delay pattern)", seconds]
        batched = base / cached["siren (experts batched)", seconds]
        looped = base / cached["siren (experts one at a time)", seconds]
        print(f"  {seconds:g} s: experts batched {batched:.2f}, one at a time {looped:.2f}")
    # The totals include each generation's set-up (weights stacked and laid out once per call):
    # negligible at the tiny size, a few seconds at 1.6b. Median frames leave it out.
    steady = {name: statistics.median(per_frame[name]) for name in runs}
    ratio = steady["baseline (delay pattern)"] / steady["siren (experts batched)"]
    print(
        f"steady state, median frame of the {longest:g} s run: "
        + ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in steady.items())
        + f"; siren batched / baseline frames/s {ratio:.2f}"
    )
    share = temporal_share(siren, states, mask, round(short * args.frame_rate))
    print(f"siren, experts one at a time: temporal steps are {100 * share:.0f}% of the time")


if __name__ == "__main__":
    main()
