"""Training throughput and peak memory, Siren vs the delay-pattern baseline at equal parameters.

One teacher-forced step is what `PretrainModule` does: forward, the mean of the per-codebook
masked cross-entropies (`masked_codebook_stats`), backward, AdamW. Each model runs in a fresh
process, alternating Siren / baseline for
`--rounds` rounds to spread the noise of a shared machine; the best round counts. On CPU the
step time is the process's CPU time (with one thread, what a dedicated core would take; wall time
on a shared machine mostly measures the other jobs). FLOPs per
step are counted once by `torch.utils.flop_counter.FlopCounterMode` (matmuls and attention).
On CPU the step memory is the resident-set peak during the timed steps (the kernel's VmHWM, reset
after a warm-up step that allocates the optimizer state) minus the resident set before them:
activations, gradients and temporaries (glibc is told to unmap freed blocks >= 64 KB at once, so
the resident set follows the live tensors). On CUDA the step runs under bf16 autocast, memory is
`torch.cuda.max_memory_allocated` (everything, weights and optimizer state included), and MFU is
the counted FLOPs per second over the GPU's dense bf16 peak.

    PYTHONPATH=src python benchmarks/training.py                          # tiny, CPU, 1 thread
    PYTHONPATH=src python benchmarks/training.py --device cuda --config 1.6b --batch 4 \\
        --frames 300 --checkpointing
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets.
GPU_PEAK_TFLOPS = {
    "H200": 989.4,
    "H200 NVL": 835.0,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.2,
}


def match_device(table: dict[str, float], name: str) -> float | None:
    """The entry of a device table for a device name as torch reports it (longest matching key,
    so "NVIDIA L40S" is L40S, not L4), or None."""
    hits = [key for key in table if key in name]
    return table[max(hits, key=len)] if hits else None


def gpu_peak_tflops(name: str) -> float | None:
    """The bf16 peak of a device name as torch reports it."""
    return match_device(GPU_PEAK_TFLOPS, name)


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(kind: str, size: str, checkpointing: bool, **overrides: Any) -> torch.nn.Module:
    """A `SirenLM` ("siren") or `DelayPatternLM` of a preset, random codec table (on the current
    default device: build under `with torch.device("cuda")` to initialise on a GPU)."""
    from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
    from siren_lightning.models.siren import SirenConfig, SirenLM

    if kind == "siren":
        config = SirenConfig.from_name(size, **overrides)
        model = SirenLM(config)
    else:
        config = DelayLMConfig.from_name(size, **overrides)
        model = DelayPatternLM(config)
    model.codebook_table.normal_()
    model.set_gradient_checkpointing(checkpointing)
    return model


def measure(kind: str, args: dict[str, Any], queue: mp.Queue) -> None:
    """Child process: build one model, time `steps` training steps, report numbers."""
    from torch.utils.flop_counter import FlopCounterMode

    from siren_lightning.models.siren import count_parameters
    from siren_lightning.stages.pretrain import masked_codebook_stats

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = torch.device(args["device"])
    cuda = device.type == "cuda"
    model = build(kind, args["size"], args["checkpointing"]).to(device).train()
    c = model.config
    b, t = args["batch"], args["frames"]
    codes = torch.randint(c.codebook_size, (b, c.num_codebooks, t), device=device)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    states = torch.randn(b, 16, c.text_dim, device=device)
    text_mask = torch.ones(b, 16, dtype=torch.bool, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = model(codes, states, text_mask, mask)
            ce, _, _ = masked_codebook_stats(out.logits, codes[:, out.codebooks], out.mask)
            loss = ce.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up (allocates the optimizer state)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    rss_before = proc_status_mb("VmRSS")
    # CPU time of this process on CPU (robust to other jobs on a shared machine), wall on CUDA.
    clock = time.perf_counter if cuda else time.process_time
    times = []
    for _ in range(args["steps"]):
        start = clock()
        step()
        times.append(clock() - start)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else proc_status_mb("VmHWM")
    with FlopCounterMode(display=False) as counter:
        step()
    queue.put(
        {
            "model": kind,
            "params": count_parameters(model),
            "step_s": statistics.median(times),
            "frames": b * t,
            "codes": b * t * c.num_codebooks,
            "flops": counter.get_total_flops(),
            "peak_mb": peak_mb,
            "model_rss_mb": rss_before,
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        }
    )


def run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(kind, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="tiny", help="preset of both models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=150, help="frames per clip (50 per s)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--peak-tflops", type=float, help="GPU bf16 peak if not in the table")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    # The children's glibc returns freed blocks >= 64 KB to the system at once, so the resident
    # set follows the live tensors (read at process start, hence set before spawning).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    settings = {
        "size": args.config,
        "device": args.device,
        "batch": args.batch,
        "frames": args.frames,
        "steps": args.steps,
        "threads": args.threads,
        "checkpointing": args.checkpointing,
    }
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):
        for kind in ("siren", "baseline"):
            result = run_child(kind, settings)
            if kind not in best or result["step_s"] < best[kind]["step_s"]:
                best[kind] = result
    cuda = args.device.startswith("cuda")
    device_name = best["siren"]["device_name"]
    peak = args.peak_tflops or (gpu_peak_tflops(device_name) if cuda else None)
    print(
        f"config={args.config} device={device_name} batch={args.batch} x {args.frames} frames "
        f"threads={args.threads} checkpointing={args.checkpointing} "
        f"{'wall' if cuda else 'CPU'} time; "
        f"{'bf16 autocast' if cuda else 'fp32'}; best of {args.rounds} rounds x {args.steps} steps"
    )
    memory = "peak allocated MB" if cuda else "step MB (peak RSS - RSS before)"
    header = f"| model | params | step s | frames/s | codes/s | GFLOP/step | TFLOP/s | {memory} |"
    if peak:
        header += " MFU |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for kind in ("siren", "baseline"):
        r = best[kind]
        achieved = r["flops"] / r["step_s"] / 1e12
        r["step_mb"] = r["peak_mb"] if cuda else r["peak_mb"] - r["model_rss_mb"]
        mem = f"{r['step_mb']:.0f}"
        if not cuda:
            mem += f" ({r['peak_mb']:.0f} - {r['model_rss_mb']:.0f})"
        row = (
            f"| {kind} | {r['params'] / 1e6:.2f}M | {r['step_s']:.2f} | "
            f"{r['frames'] / r['step_s']:.0f} | {r['codes'] / r['step_s']:.0f} | "
            f"{r['flops'] / 1e9:.1f} | {achieved:.3f} | {mem} |"
        )
        if peak:
            row += f" {100 * achieved / peak:.1f}% |"
        print(row)
    s, b = best["siren"], best["baseline"]
    print(
        f"\nsiren / baseline: throughput {b['step_s'] / s['step_s']:.2f}x, "
        f"FLOPs per step {s['flops'] / b['flops']:.2f}x, "
        f"step memory {s['step_mb'] / b['step_mb']:.2f}x, params {s['params'] / b['params']:.3f}x"
    )
    if cuda and not peak:
        print(f"(no bf16 peak known for {device_name!r}: pass --peak-tflops for MFU)")


if __name__ == "__main__":
    main()
