"""GPU readiness: the paper-scale path measured in one command, inside a global time budget.

Sections, run in this order; each one's numbers go into one JSON (rewritten after every section,
so a cut-off run keeps what it measured) and into the tables printed at the end:

1. `flops`: the analytic FLOPs per training step (`training_flops`, the formula MFU uses) against
   `torch.utils.flop_counter.FlopCounterMode` on tiny models, on the CPU (attention through the
   math kernel, which the counter sees as matmuls; equal to the FLOP).
2. `agreement`: the tiny Siren's and delay LM's first 20 fp32 training losses on the GPU against
   the CPU's (same weights, same batches, no dropout, TF32 off): every loss within
   `--agreement-rtol` (1e-4 relative; TF32 or bf16 leaking in moves them by more).
3. `training`: Siren and the delay LM at 1.6b, trained through `PretrainModule` and Lightning at
   experiments/siren_1.6b.yaml's settings (bf16-mixed, gradient checkpointing, AdamW, clip 1.0,
   batch 24 x 6 s = 300 frames; all six experts, at equal parameters with the delay LM: the
   YAML's `train_groups: [0, 1]` is for 24 GB GPUs): tokens/s (a token is one frame of r codes,
   50 per second of audio), peak memory (`torch.cuda.max_memory_allocated` over the timed steps:
   weights, gradients, AdamW state and activations) and MFU = analytic model FLOPs per second
   (recomputation by checkpointing not counted) over the device's dense bf16 peak.
4. `generation`: both 1.6b models sampling with the KV cache at batch 1 and 32 as `siren generate`
   does (temperature 1, top-k 250, guidance 3: 2B rows), in bf16 and fp32: frames/s, real-time
   factor, Siren / delay LM, and ms per frame against the weight-streaming bound (bytes of the
   weights a frame reads, each once, plus the mean KV cache it reads, over the memory bandwidth).
5. `smoke`: a few 1.6b training steps through the project's strategies, `ddp` and
   `siren_lightning.strategies.SirenFSDPStrategy`, each in its own process tree (Lightning
   re-launches the script per rank): two processes when two GPUs are there, else one.

A section starts only when the time left covers its estimate (else it is recorded as skipped);
one still running at the deadline is stopped (SIGALRM; child processes killed) and recorded as
such with what it had measured. An error in one section is recorded and the next one runs.
`--dry-run` runs the same code at the tiny size on the CPU, without a budget, in about 25 s of
CPU time (a test runs it); device numbers that need CUDA (peak memory, MFU, the bandwidth
bound) are then null, and the JSON says why.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json     # ~4-5 min on an H100
    PYTHONPATH=src python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from generation import build as build_pair
from training import build, gpu_peak_tflops, match_device

ROOT = Path(__file__).resolve().parents[1]
FRAME_RATE = 50.0  # DAC 16 kHz, hop 320
SECTIONS = ("flops", "agreement", "training", "generation", "smoke")
# Seconds a section needs on an H100-class GPU (measured parts plus margin): it starts only
# when the budget has that much left.
ESTIMATES_S = {"flops": 5, "agreement": 30, "training": 120, "generation": 90, "smoke": 90}

# Memory bandwidth of the devices' HBM/GDDR, GB/s, from the vendors' data sheets.
GPU_BANDWIDTH_GBS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "A10G": 600.0,
    "L4": 300.0,
    "RTX 4090": 1008.0,
}

# Targets of issue 20.
TARGET_MFU = 0.45
TARGET_RTF_BATCH1 = 0.05
TARGET_SIREN_OVER_DELAY = 0.9


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs (the formula MFU uses; section `flops` checks it against a counter).
# ---------------------------------------------------------------------------------------------


@dataclass
class Flops:
    """Matmul FLOPs of one training step, forward and backward (2 per multiply-add).

    A linear layer's backward costs twice its forward (input and weight gradients) unless its
    input needs no gradient (frozen codec vectors, frozen text states): then only the weight
    gradient, once. Attention's two batched matmuls take gradients on both sides: twice.
    Attention scores are counted over every (query, key) pair, masked or not, as
    FlopCounterMode and PaLM's MFU count them.
    """

    forward: int = 0
    backward: int = 0

    def linear(self, rows: int, d_in: int, d_out: int, input_grad: bool = True) -> None:
        flops = 2 * rows * d_in * d_out
        self.forward += flops
        self.backward += flops * (2 if input_grad else 1)

    def attention(self, batch: int, queries: int, keys: int, width: int) -> None:
        flops = 4 * batch * queries * keys * width  # scores q.k and the weighted sum of values
        self.forward += flops
        self.backward += 2 * flops

    def mlp(self, rows: int, width: int, hidden: int) -> None:
        self.linear(rows, width, hidden)  # gate
        self.linear(rows, width, hidden)  # up
        self.linear(rows, hidden, width)  # down

    @property
    def total(self) -> int:
        return self.forward + self.backward


def _temporal_blocks(f: Flops, layers: int, b: int, t: int, text: int, c: Any) -> None:
    """`TemporalBlock`s over [B, T] with L text tokens (the delay LM's blocks are these too)."""
    d = c.width
    for _ in range(layers):
        f.linear(b * text, c.text_dim, d, input_grad=False)  # cross key (frozen text states)
        f.linear(b * text, c.text_dim, d, input_grad=False)  # cross value
        f.linear(b * t, d, d)  # cross query
        f.attention(b, t, text, d)
        f.linear(b * t, d, d)  # cross out
        f.linear(b * t, d, 3 * d)  # self qkv
        f.attention(b, t, t, d)  # causal, counted in full
        f.linear(b * t, d, d)  # self out
        f.mlp(b * t, d, c.mlp_hidden)


def siren_flops(c: Any, b: int, t: int, text: int, groups: list[int] | None = None) -> Flops:
    """One teacher-forced step of `SirenLM` (forward + backward) on [B, r, T] codes, L text tokens.

    Per expert: r projectors on every frame, the prompt summary, the temporal blocks over T
    frames, the per-frame decoder over its g + 1 tokens (its last block computes the g tokens the
    heads read, attending over all g + 1), and g heads.
    """
    f = Flops()
    d, n = c.width, c.group + 1  # decoder tokens per frame
    for _ in range(c.num_groups if groups is None else len(groups)):
        f.linear(b * t, c.num_codebooks * c.latent_dim, d, input_grad=False)  # projectors
        f.linear(b, c.text_dim, d, input_grad=False)  # summary
        _temporal_blocks(f, c.temporal_layers, b, t, text, c)
        for i in range(c.decoder_layers):
            keep = n - 1 if i == c.decoder_layers - 1 else n  # output tokens of the block
            f.linear(b * t * n, d, 3 * d)  # qkv of every token
            f.attention(b * t, keep, n, d)
            f.linear(b * t * keep, d, d)
            f.mlp(b * t * keep, d, c.mlp_hidden)
        f.linear(b * t * c.group, d, c.codebook_size)  # g heads
    return f


def delay_flops(c: Any, b: int, t: int, text: int) -> Flops:
    """One teacher-forced step of `DelayPatternLM` on [B, r, T] codes: S = T + r - 1 steps."""
    f = Flops()
    s = t + c.num_codebooks - 1
    f.linear(b * s * c.num_codebooks, c.latent_dim, c.width, input_grad=False)  # projectors
    f.linear(b, c.text_dim, c.width, input_grad=False)  # summary
    _temporal_blocks(f, c.num_layers, b, s, text, c)
    f.linear(b * s * c.num_codebooks, c.width, c.codebook_size)  # r heads
    return f


def training_flops(model: nn.Module, b: int, t: int, text: int) -> Flops:
    """`siren_flops` or `delay_flops` for a model (dispatch on its config's fields)."""
    c = model.config
    return delay_flops(c, b, t, text) if hasattr(c, "num_layers") else siren_flops(c, b, t, text)


def counted_training_flops(model: nn.Module, b: int, t: int, text: int, seed: int = 0) -> int:
    """FLOPs of one forward + backward as FlopCounterMode counts them (CPU, math attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from siren_lightning.stages.pretrain import masked_codebook_stats

    codes, mask, states, text_mask = random_batch(model.config, b, t, text, seed)
    # The CPU's fused attention kernel is invisible to the counter; the math one is matmuls.
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        out = model(codes, states, text_mask, mask)
        ce, _, _ = masked_codebook_stats(out.logits, codes[:, out.codebooks], out.mask)
        ce.mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# Weight-streaming bound of generation.
# ---------------------------------------------------------------------------------------------


def streamed_parameters(model: nn.Module) -> int:
    """Parameters a cached sampling step reads: all but those used once per prompt or replaced
    by lookup tables (code projectors, the prompt summary, the cross-attention keys/values of
    the text, the start / idle vectors)."""
    from siren_lightning.models.blocks import CrossAttention

    once: list[nn.Module] = [m for m in model.modules() if isinstance(m, CrossAttention)]
    parts = list(model.experts) if hasattr(model, "experts") else [model]
    skipped = sum(p.numel() for m in once for p in (*m.key.parameters(), *m.value.parameters()))
    for part in parts:
        skipped += sum(p.numel() for p in part.projectors.parameters())
        skipped += sum(p.numel() for p in part.summary.parameters())
        skipped += getattr(part, "start", getattr(part, "empty", torch.empty(0))).numel()
    return sum(p.numel() for p in model.parameters()) - skipped


def kv_cache_bytes(model: nn.Module, rows: int, frames: int, element: int) -> float:
    """Mean bytes of self-attention keys and values a frame reads over a `frames`-long run.

    Siren: every expert's temporal blocks hold one entry per frame (the per-frame decoders'
    caches of g + 1 tokens are negligible); the delay LM: one entry per step, S / T steps a frame.
    """
    c = model.config
    if hasattr(c, "num_layers"):
        steps = frames + c.num_codebooks - 1
        return 2 * c.num_layers * rows * c.width * (steps + 1) / 2 * element * steps / frames
    return 2 * c.num_groups * c.temporal_layers * rows * c.width * (frames + 1) / 2 * element


# ---------------------------------------------------------------------------------------------
# Shared pieces: random data, a Lightning fit that records step times and losses.
# ---------------------------------------------------------------------------------------------


def random_batch(c: Any, b: int, t: int, text: int, seed: int) -> tuple[torch.Tensor, ...]:
    """codes [B, r, T], mask [B, T], text states [B, L, Dt], text mask [B, L] (seeded, CPU)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(c.codebook_size, (b, c.num_codebooks, t), generator=g)
    states = torch.randn(b, text, c.text_dim, generator=g)
    ones = torch.ones(b, t, dtype=torch.bool), torch.ones(b, text, dtype=torch.bool)
    return codes, ones[0], states, ones[1]


class RandomCodes(torch.utils.data.Dataset):
    """`count` code clips as `SirenDataModule` batches them (cached text states), each seeded by
    its index, so every run and every device sees the same batches."""

    def __init__(self, config: Any, count: int, frames: int, text: int) -> None:
        self.config, self.count, self.frames, self.text = config, count, frames, text

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        codes, mask, states, text_mask = random_batch(self.config, 1, self.frames, self.text, i)
        return {
            "codes": codes[0],
            "mask": mask[0],
            "text_states": states[0],
            "text_mask": text_mask[0],
        }


def fit(
    network: nn.Module,
    settings: dict[str, Any],
    steps: int,
    batch: int,
    frames: int,
    text: int,
    accelerator: str,
    precision: str,
    warmup: int = 0,
    devices: int = 1,
    strategy: Any = "auto",
) -> dict[str, Any]:
    """Train `network` for `steps` steps through `PretrainModule` and a Lightning `Trainer`.

    Args:
        settings: PretrainModule arguments (optimizer, gradient_checkpointing) and
            `gradient_clip_val`.
        warmup: steps before peak memory is reset (the first allocates the optimizer state).

    Returns:
        `times` (s per step, CUDA-synchronised), `losses`, `peak_allocated_gb` and
        `peak_reserved_gb` over the steps after warm-up (None without CUDA), `rank`, `world`,
        `local_parameters` (with FSDP, the size of this rank's shard), `adamw_groups`
        ((weight decay, elements) per optimizer group).
    """
    import lightning as L

    from siren_lightning.stages.pretrain import PretrainModule

    quiet_lightning()  # after the import, which sets Lightning's log levels
    cuda = accelerator == "cuda"
    found: dict[str, Any] = {"times": [], "losses": []}

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
                if batch_idx == warmup:
                    torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            found["times"].append(time.perf_counter() - self.start)
            found["losses"].append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):
            found["rank"], found["world"] = trainer.global_rank, trainer.world_size
            found["local_parameters"] = sum(p.numel() for p in pl_module.network.parameters())
            # (weight decay, elements) of each AdamW group: PretrainModule decays the 2-D weights
            found["adamw_groups"] = [
                (group["weight_decay"], sum(p.numel() for p in group["params"]))
                for group in trainer.optimizers[0].param_groups
            ]
            if cuda:
                found["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
                found["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9

    module = PretrainModule(
        network,
        optimizer=settings["optimizer"],
        warmup_steps=1,
        total_steps=steps + 1,
        caption_dropout=0.0,
        gradient_checkpointing=settings["gradient_checkpointing"],
    )
    data = RandomCodes(network.config, steps * batch * devices, frames, text)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_steps=steps,
        gradient_clip_val=settings["gradient_clip_val"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=os.environ.get("TMPDIR", "/tmp"),
        callbacks=[Recorder()],
    )
    trainer.fit(module, train_dataloaders=loader)
    found.setdefault("peak_allocated_gb", None)
    found.setdefault("peak_reserved_gb", None)
    return found


def quiet_lightning() -> None:
    """Lightning's start-up banners and hints would bury the tables."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def read_yaml_settings(path: Path) -> dict[str, Any]:
    """Training settings of an experiment YAML: the trainer's precision and clip, the module's
    optimiser and checkpointing, the data's batch and crop (in frames), the LM config."""
    raw = yaml.safe_load(path.read_text())
    trainer, model = raw["trainer"], raw["model"]["init_args"]
    data = raw["data"]["init_args"]
    return {
        "yaml": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "precision": str(trainer.get("precision", "32-true")),
        "gradient_clip_val": trainer.get("gradient_clip_val"),
        "optimizer": model.get("optimizer") or {},  # PretrainModule's default where none
        "gradient_checkpointing": bool(model.get("gradient_checkpointing", False)),
        "train_groups": model.get("train_groups"),
        "batch": data["batch_size"],
        "frames": round(data["crop_seconds"] * data["sample_rate"] / data["hop_length"]),
        "network": model["network"]["init_args"]["config"],
    }


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Sections. Each fills `out` as it goes (kept when the budget stops it) and may set
# out["status"] = "failed" with a "reason" when a check does not hold.
# ---------------------------------------------------------------------------------------------


def section_flops(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Analytic vs counted FLOPs of a training step, at tiny sizes, on the CPU."""
    torch.manual_seed(0)
    cases = {
        "siren tiny": ("siren", {}),
        # the 1.6b preset's decoder depth (2) and a group of 3 take the formula's other branches
        "siren tiny, 2 decoder layers, group 3": ("siren", {"decoder_layers": 2, "group": 3}),
        "delay tiny": ("baseline", {}),
    }
    b, t, text = 2, 12, 5
    out.update(batch=b, frames=t, text_tokens=text, cases=[])
    with torch.device("cpu"):
        for name, (kind, overrides) in cases.items():
            model = build(kind, "tiny", False, dropout=0.0, **overrides).train()
            counted = counted_training_flops(model, b, t, text)
            analytic = training_flops(model, b, t, text).total
            out["cases"].append(
                {
                    "model": name,
                    "counted": counted,
                    "analytic": analytic,
                    "equal": counted == analytic,
                }
            )
    bad = [case["model"] for case in out["cases"] if not case["equal"]]
    if bad:
        out.update(status="failed", reason=f"analytic FLOPs differ from the counted ones: {bad}")


def section_agreement(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """First N fp32 training losses of tiny models: `args.device` against the CPU."""
    steps, b, t, text = args.agreement_steps, args.agreement_batch, args.agreement_frames, 8
    settings = {**args.settings, "gradient_checkpointing": False}
    out.update(
        steps=steps, batch=b, frames=t, rtol=args.agreement_rtol, device=args.device, models={}
    )
    if args.device == "cpu":
        out["note"] = "no CUDA device: both runs on the CPU (checks the code path only)"
    failed = []
    for kind in ("siren", "baseline"):
        torch.manual_seed(0)
        with torch.device("cpu"):
            reference = build(kind, "tiny", False, dropout=0.0)
        runs = {}
        for device in dict.fromkeys(("cpu", args.device)):  # once when both are the CPU
            network = copy.deepcopy(reference)
            with fp32_matmuls():
                found = fit(network, settings, steps, b, t, text, device, "32-true")
            runs[device] = found["losses"]
        cpu, other = runs["cpu"], runs[args.device]
        rel = [abs(x - y) / abs(x) for x, y in zip(cpu, other, strict=True)]
        entry = {
            "cpu_losses": cpu,
            "device_losses": other,
            "max_rel_diff": max(rel),
            "first_rel_diff": rel[0],
            "within_rtol": max(rel) <= args.agreement_rtol,
        }
        out["models"][kind] = entry
        if not entry["within_rtol"]:
            failed.append(f"{kind} (max relative difference {max(rel):.2e})")
        if not all(math.isfinite(x) for x in cpu + other):
            failed.append(f"{kind} (non-finite loss)")
    if failed:
        out.update(status="failed", reason=f"losses beyond rtol {args.agreement_rtol}: {failed}")


@contextlib.contextmanager
def fp32_matmuls() -> Iterator[None]:
    """True fp32 matmuls on CUDA (no TF32) for the agreement runs; restored afterwards."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def section_training(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Siren and the delay LM trained side by side at the YAML's settings."""
    s = args.settings
    b, t, text = args.batch or s["batch"], args.frames or s["frames"], args.text_tokens
    steps = args.train_warmup + args.train_steps
    peak = args.peak_tflops
    out.update(
        size=args.size,
        yaml=s["yaml"],
        precision=s["precision"],
        gradient_checkpointing=s["gradient_checkpointing"],
        batch=b,
        frames=t,
        text_tokens=text,
        warmup_steps=args.train_warmup,
        timed_steps=args.train_steps,
        peak_tflops=peak,
        models={},
    )
    if not peak:
        out["mfu_note"] = f"no bf16 peak known for {args.device_name!r}: MFU not computed"
    for kind in ("siren", "baseline"):
        free_memory()
        entry: dict[str, Any] = {}
        out["models"][kind] = entry
        if args.device == "cuda":  # what the previous model left behind
            entry["memory_before_gb"] = torch.cuda.memory_allocated() / 1e9
        torch.manual_seed(0)
        start = time.perf_counter()
        try:
            with torch.device(args.device):
                network = build(kind, args.size, s["gradient_checkpointing"])
            entry["build_s"] = time.perf_counter() - start
            entry["params"] = sum(p.numel() for p in network.parameters())
            flops = training_flops(network, b, t, text).total
            found = fit(
                network, s, steps, b, t, text, args.device, s["precision"], args.train_warmup
            )
        except torch.cuda.OutOfMemoryError as err:  # e.g. a 24 GB GPU: the other model may fit
            entry["error"] = f"CUDA out of memory: {str(err).splitlines()[0]}"
            continue
        finally:
            network = None  # noqa: F841 (frees the model before the next one is built)
        step_s = statistics.median(found["times"][args.train_warmup :])
        entry.update(
            step_s=step_s,
            step_times=found["times"],
            losses=found["losses"],
            tokens_per_s=b * t / step_s,
            codes_per_s=b * t * args.num_codebooks / step_s,
            flops_per_token=flops / (b * t),
            tflops_per_s=flops / step_s / 1e12,
            peak_allocated_gb=found["peak_allocated_gb"],
            peak_reserved_gb=found["peak_reserved_gb"],
            mfu=flops / step_s / 1e12 / peak if peak else None,
        )
        if not all(math.isfinite(x) for x in found["losses"]):
            out.update(status="failed", reason=f"{kind}: non-finite training loss")
    rows = out["models"]
    if all("tokens_per_s" in rows.get(k, {}) for k in ("siren", "baseline")):
        out["siren_over_delay_tokens_per_s"] = (
            rows["siren"]["tokens_per_s"] / rows["baseline"]["tokens_per_s"]
        )


def section_generation(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Cached sampling of both models at each batch size and dtype: frames/s, RTF, the bound."""
    from siren_lightning.models.sampling import generate

    frames, text = round(args.gen_seconds * FRAME_RATE), args.text_tokens
    bandwidth = args.bandwidth_gbs
    sampling = {"temperature": 1.0, "top_k": 250, "cfg_scale": args.cfg_scale}
    out.update(
        size=args.size,
        frames=frames,
        audio_seconds=frames / FRAME_RATE,
        sampling=sampling,
        bandwidth_gbs=bandwidth,
        rows=[],
    )
    if not bandwidth:
        out["bound_note"] = f"no memory bandwidth known for {args.device_name!r}: no bound"
    with torch.device(args.device):
        models = dict(zip(("siren", "baseline"), build_pair(args.size, args.device), strict=True))
    for dtype_name in args.gen_dtypes:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        for model in models.values():
            model.to(dtype)
        for batch in args.gen_batches:
            g = torch.Generator().manual_seed(0)
            dim = models["siren"].config.text_dim
            states = torch.randn(batch, text, dim, generator=g).to(args.device)
            mask = torch.ones(batch, text, dtype=torch.bool, device=args.device)
            empty = torch.randn(1, 2, dim, generator=g).to(args.device)
            kwargs = {**sampling, "uncond_states": empty, "uncond_mask": mask[:1, :2]}
            rows = 2 * batch if args.cfg_scale != 1.0 else batch
            found = {}
            for kind, model in models.items():
                generator = torch.Generator(args.device).manual_seed(0)
                generate(model, states, mask, 2, generator=generator, **kwargs)  # warm-up
                best = math.inf
                for _ in range(args.gen_repeats):
                    sync(args.device)
                    start = time.perf_counter()
                    generate(model, states, mask, frames, generator=generator, **kwargs)
                    sync(args.device)
                    best = min(best, time.perf_counter() - start)
                element = torch.finfo(dtype).bits // 8
                weights = streamed_parameters(model) * element
                cache = kv_cache_bytes(model, rows, frames, element)
                bound_ms = 1e3 * (weights + cache) / (bandwidth * 1e9) if bandwidth else None
                row = {
                    "model": kind,
                    "dtype": dtype_name,
                    "batch": batch,
                    "seconds_wall": best,
                    "frames_per_s": batch * frames / best,
                    "rtf": best / (frames / FRAME_RATE),
                    "ms_per_frame": 1e3 * best / frames,
                    "weight_bytes_per_frame": weights,
                    "kv_bytes_per_frame": cache,
                    "bound_ms_per_frame": bound_ms,
                    "over_bound": 1e3 * best / frames / bound_ms if bound_ms else None,
                }
                found[kind] = row
                out["rows"].append(row)
            found["siren"]["siren_over_delay"] = (
                found["siren"]["frames_per_s"] / found["baseline"]["frames_per_s"]
            )


def section_smoke(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """`ddp` and `SirenFSDPStrategy`, each a few steps in its own process tree."""
    devices = args.smoke_devices
    if devices is None:
        devices = min(torch.cuda.device_count(), 2) if args.device == "cuda" else 1
    out.update(size=args.size, devices=devices, steps=args.smoke_steps, batch=args.smoke_batch)
    if devices < 2:
        out["note"] = (
            "one device: one process per strategy (two need two GPUs, or --smoke-devices 2); "
            "torch runs FSDP on one process as NO_SHARD, so sharding itself is not exercised"
        )
    failed = []
    for strategy in ("ddp", "fsdp"):
        if strategy == "fsdp" and args.device != "cuda":
            reason = "torch's FullyShardedDataParallel needs a CUDA device"
            out[strategy] = {"status": "skipped", "reason": reason}
            continue
        entry = run_smoke_child(args, strategy, devices)
        out[strategy] = entry
        if entry.get("status") != "ok":
            failed.append(f"{strategy}: {entry.get('reason')}")
    if failed:
        out.update(status="failed", reason="; ".join(failed))


def run_smoke_child(args: argparse.Namespace, strategy: str, devices: int) -> dict[str, Any]:
    """Run `--smoke-child` in a new session (killed as a group at the deadline) and read the
    JSON each rank wrote."""
    path = Path(args.out).with_suffix(f".smoke-{strategy}.json")
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--smoke-child", strategy]
    cmd += ["--smoke-out", str(path), "--smoke-devices", str(devices), "--size", args.size]
    cmd += ["--smoke-steps", str(args.smoke_steps), "--smoke-batch", str(args.smoke_batch)]
    cmd += ["--frames", str(args.smoke_frames), "--yaml", str(args.yaml), "--device", args.device]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        left = BUDGET.left()
        log, _ = proc.communicate(timeout=None if math.isinf(left) else max(1.0, left))
    except (subprocess.TimeoutExpired, BudgetExhausted):
        os.killpg(proc.pid, signal.SIGKILL)  # the child and the ranks it launched
        proc.communicate()
        raise BudgetExhausted(f"smoke {strategy}: stopped by the time budget") from None
    entry: dict[str, Any] = {"returncode": proc.returncode, "seconds": time.perf_counter() - start}
    ranks = [json.loads(p.read_text()) for p in sorted(path.parent.glob(path.name + "*"))]
    entry["ranks"] = ranks
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    losses = [x for r in ranks for x in r["losses"]]
    decayed = [sum(n for wd, n in r["adamw_groups"] if wd > 0) for r in ranks]
    if proc.returncode != 0 or len(ranks) != devices:
        entry.update(status="failed", reason=f"exit {proc.returncode}", log_tail=log[-3000:])
    elif not losses or not all(math.isfinite(x) for x in losses):
        entry.update(status="failed", reason="non-finite or no losses", log_tail=log[-3000:])
    elif sum(decayed) == 0:
        # Sharded FSDP shows PretrainModule.configure_optimizers flattened 1-D parameter
        # shards (use_orig_params), so splitting by p.dim() >= 2 decays nothing.
        entry.update(status="failed", reason="AdamW's weight-decay group is empty on every rank")
    else:
        entry["status"] = "ok"
    return entry


def smoke_child(args: argparse.Namespace) -> None:
    """One strategy's run (and, re-launched by Lightning, each further rank's)."""
    rank = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    strategy: Any = "ddp"
    if args.smoke_child == "fsdp":
        from siren_lightning.strategies import SirenFSDPStrategy

        strategy = SirenFSDPStrategy()
    s = args.settings
    torch.manual_seed(0)
    with torch.device(device):
        network = build("siren", args.size, s["gradient_checkpointing"])
    found = fit(
        network,
        s,
        args.smoke_steps,
        args.smoke_batch,
        args.frames,
        args.text_tokens,
        args.device,
        s["precision"],
        warmup=1,
        devices=args.smoke_devices,
        strategy=strategy,
    )
    suffix = "" if found["rank"] == 0 else f".rank{found['rank']}"
    Path(args.smoke_out + suffix).write_text(json.dumps(found))


# ---------------------------------------------------------------------------------------------
# Budget, runner, tables.
# ---------------------------------------------------------------------------------------------


class BudgetExhausted(Exception):
    """Raised in the main thread when the global time budget runs out."""


class Budget:
    """Seconds left of the run's budget; `deadline()` raises `BudgetExhausted` at the end."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        if math.isinf(self.left()):  # no budget (a dry run): nothing to arm
            yield
            return

        def expire(signum, frame):
            raise BudgetExhausted("stopped by the time budget")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 1e-3))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


BUDGET = Budget(math.inf)

RUNNERS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], None]] = {
    "flops": section_flops,
    "agreement": section_agreement,
    "training": section_training,
    "generation": section_generation,
    "smoke": section_smoke,
}


def run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One section inside the budget: ok / failed (a check did not hold) / error / stopped /
    skipped, with its seconds and whatever it measured."""
    out: dict[str, Any] = {}
    left = BUDGET.left()
    need = 0 if args.dry_run else ESTIMATES_S[name]
    if left <= need:
        return {
            "status": "skipped",
            "reason": f"time budget: {max(left, 0):.0f} s left, needs ~{need} s",
        }
    start = time.perf_counter()
    try:
        with BUDGET.deadline():
            RUNNERS[name](args, out)
        out.setdefault("status", "ok")
    except BudgetExhausted as err:
        out.update(status="stopped", reason=str(err))
    except Exception as err:  # recorded; the next section still runs
        out.update(
            status="error",
            reason=f"{type(err).__name__}: {err}".splitlines()[0][:500],
            traceback=traceback.format_exc()[-4000:],
        )
    finally:
        free_memory()
    out["seconds"] = time.perf_counter() - start
    return {"status": out.pop("status"), **out}


def measure_device() -> dict[str, float]:
    """What the data-sheet numbers look like here: a bf16 8192^3 matmul's TFLOP/s and a 1 GiB
    device-to-device copy's GB/s (bytes read + written), each the mean of 10 after 3 warm-ups."""

    def seconds(fn: Callable[[], Any]) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / 10

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    matmul = 2 * n**3 / seconds(lambda: a @ b) / 1e12
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy = 2 * src.numel() / seconds(lambda: dst.copy_(src)) / 1e9
    return {"measured_matmul_bf16_tflops": matmul, "measured_copy_gbs": copy}


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on, and where the peak and bandwidth came from."""
    info: dict[str, Any] = {
        "name": args.device_name,
        "cuda": args.device == "cuda",
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "bf16_peak_tflops": args.peak_tflops,
        "bandwidth_gbs": args.bandwidth_gbs,
    }
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            count=torch.cuda.device_count(),
            memory_gb=props.total_memory / 1e9,
            capability=f"{props.major}.{props.minor}",
            nccl=torch.distributed.is_nccl_available(),
        )
        try:
            info.update(measure_device())
        except Exception as err:  # a reading, not a section: note it and go on
            info["measure_error"] = f"{type(err).__name__}: {err}"[:300]
        free_memory()
    else:
        info["note"] = "no CUDA device: memory stats, MFU and the bandwidth bound are not measured"
    return info


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def met(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "n/a"
    return "met" if (value >= target if higher else value <= target) else "NOT met"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def print_tables(report: dict[str, Any]) -> None:
    """Markdown tables of every section that ran, the targets last."""
    d, sections = report["device"], report["sections"]
    print(
        f"\ngpu_check on {d['name']} (torch {d['torch']}, CUDA {d['cuda_version']}); budget "
        f"{fmt(report['budget_s'], '.0f', 'none')} s, took {report['seconds']:.0f} s; bf16 peak "
        f"{fmt(d['bf16_peak_tflops'], '.0f')} TFLOP/s, bandwidth {fmt(d['bandwidth_gbs'], '.0f')} "
        f"GB/s (data sheets); measured: bf16 matmul "
        f"{fmt(d.get('measured_matmul_bf16_tflops'), '.0f')} TFLOP/s, copy "
        f"{fmt(d.get('measured_copy_gbs'), '.0f')} GB/s\n"
    )
    rows = [
        [
            name,
            sec["status"],
            fmt(sec.get("seconds"), ".0f"),
            sec.get("reason") or sec.get("note") or "",
        ]
        for name, sec in sections.items()
    ]
    print(markdown_table(["section", "status", "s", "note"], rows))
    for case in sections.get("flops", {}).get("cases", []):
        print(f"flops {case['model']}: counted {case['counted']:,} analytic {case['analytic']:,}")
    agree = sections.get("agreement", {})
    for kind, m in agree.get("models", {}).items():
        print(
            f"agreement {kind}: {len(m['cpu_losses'])} fp32 losses {agree['device']} vs cpu, max "
            f"relative difference {m['max_rel_diff']:.2e} (first {m['first_rel_diff']:.2e}; "
            f"rtol {agree['rtol']:.0e})"
        )
    train = sections.get("training", {})
    if train.get("models"):
        print(
            f"\ntraining {train['size']}, {train['precision']}, checkpointing "
            f"{train['gradient_checkpointing']}, batch {train['batch']} x {train['frames']} frames"
            f", median of {train['timed_steps']} steps after {train['warmup_steps']}"
        )
        header = ["model", "params", "step s", "tokens/s", "GFLOP/token", "TFLOP/s"]
        rows = [
            [kind, r.get("error", "not measured")]
            if "step_s" not in r
            else [
                kind,
                f"{r['params'] / 1e9:.3f}B",
                f"{r['step_s']:.3f}",
                f"{r['tokens_per_s']:.0f}",
                f"{r['flops_per_token'] / 1e9:.2f}",
                f"{r['tflops_per_s']:.1f}",
                fmt(r["peak_allocated_gb"], ".1f"),
                "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            ]
            for kind, r in train["models"].items()
        ]
        print(markdown_table([*header, "peak alloc GB", "MFU"], rows))
    gen = sections.get("generation", {})
    if gen.get("rows"):
        print(
            f"\ngeneration {gen['size']}, {gen['audio_seconds']:g} s ({gen['frames']} frames), "
            f"KV cache, cfg {gen['sampling']['cfg_scale']:g}, top-k 250; bound = (weights + mean "
            f"KV cache) / {fmt(gen['bandwidth_gbs'], '.0f')} GB/s"
        )
        header = ["model", "dtype", "batch", "frames/s", "RTF", "ms/frame", "bound ms", "x bound"]
        rows = [
            [
                r["model"],
                r["dtype"],
                r["batch"],
                f"{r['frames_per_s']:.1f}",
                f"{r['rtf']:.3f}",
                f"{r['ms_per_frame']:.2f}",
                fmt(r["bound_ms_per_frame"]),
                fmt(r["over_bound"], ".1f"),
                fmt(r.get("siren_over_delay")),
            ]
            for r in gen["rows"]
        ]
        print(markdown_table([*header, "siren/delay"], rows))
    smoke = sections.get("smoke", {})
    for strategy in ("ddp", "fsdp"):
        e = smoke.get(strategy)
        if e is None or e["status"] == "skipped":
            print(f"smoke {strategy}: {e and e['reason']}")
            continue
        ranks = e.get("ranks", [])
        print(
            f"smoke {strategy}: {e['status']}, {len(ranks)} process(es), {e['seconds']:.0f} s, "
            f"rank-0 losses {[round(x, 3) for x in (ranks[0]['losses'] if ranks else [])]}, "
            f"peak GB per rank {[fmt(r['peak_allocated_gb'], '.1f') for r in ranks]}, "
            f"parameters per rank {[r['local_parameters'] for r in ranks]}, weight-decayed "
            f"elements per rank {[sum(n for wd, n in r['adamw_groups'] if wd) for r in ranks]}"
        )
    rows = [[name, fmt(t["value"], ".3f"), t["verdict"]] for name, t in report["targets"].items()]
    print("\n" + markdown_table(["target", "value", ""], rows))


def targets(sections: dict[str, Any]) -> dict[str, Any]:
    """Issue 20's targets against what was measured (None where a section did not measure)."""
    found: dict[str, Any] = {}
    models = sections.get("training", {}).get("models", {})
    for kind in ("siren", "baseline"):
        mfu = models.get(kind, {}).get("mfu")
        found[f"training MFU {kind} >= {TARGET_MFU:.0%}"] = (mfu, met(mfu, TARGET_MFU))
    rows = sections.get("generation", {}).get("rows", [])
    batch1 = [r for r in rows if r["model"] == "siren" and r["batch"] == 1]
    rtf = min((r["rtf"] for r in batch1), default=None)
    found[f"generation RTF siren batch 1 <= {TARGET_RTF_BATCH1} (best dtype)"] = (
        rtf,
        met(rtf, TARGET_RTF_BATCH1, higher=False),
    )
    ratios = [r["siren_over_delay"] for r in batch1 if "siren_over_delay" in r]  # both measured
    ratio = min(ratios, default=None)
    found[f"siren / delay frames/s batch 1 >= {TARGET_SIREN_OVER_DELAY} (worst dtype)"] = (
        ratio,
        met(ratio, TARGET_SIREN_OVER_DELAY),
    )
    return {name: {"value": v, "verdict": verdict} for name, (v, verdict) in found.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="gpu_check.json", help="the JSON report")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (a test runs it)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="global time budget in s (default 480; none with --dry-run, whose speed is the CPU's)",
    )
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--yaml", type=Path, default=ROOT / "experiments" / "siren_1.6b.yaml")
    p.add_argument("--size", help="preset of both LMs (default: 1.6b, tiny with --dry-run)")
    p.add_argument("--device", help="default: cuda when available (cpu with --dry-run)")
    p.add_argument("--batch", type=int, help="training batch (default: the YAML's)")
    p.add_argument("--frames", type=int, help="training frames per clip (default: the YAML's crop)")
    p.add_argument("--text-tokens", type=int, default=16)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--gen-seconds", type=float, default=5.0)
    p.add_argument("--gen-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--gen-dtypes", nargs="+", choices=("bf16", "fp32"), default=["bf16", "fp32"])
    p.add_argument("--gen-repeats", type=int, default=2, help="timed generations (best counts)")
    p.add_argument("--cfg-scale", type=float, default=3.0, help="as `siren generate` (2B rows)")
    p.add_argument("--agreement-steps", type=int, default=20)
    p.add_argument("--agreement-batch", type=int, default=4)
    p.add_argument("--agreement-frames", type=int, default=64)
    p.add_argument("--agreement-rtol", type=float, default=1e-4)
    p.add_argument("--smoke-steps", type=int, default=3)
    p.add_argument("--smoke-batch", type=int, default=4)
    p.add_argument("--smoke-frames", type=int, help="default: the YAML's crop")
    p.add_argument("--smoke-devices", type=int, help="default: min(GPUs, 2), 1 on the CPU")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak if the device is not in the table")
    p.add_argument("--bandwidth-gbs", type=float, help="memory GB/s if not in the table")
    p.add_argument("--smoke-child", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    p.add_argument("--smoke-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dry_run:
        args.size = args.size or "tiny"
        args.device = args.device or "cpu"
        for name, value in (
            ("batch", 2),
            ("frames", 16),
            ("train_warmup", 1),
            ("train_steps", 2),
            ("agreement_steps", 4),
            ("agreement_batch", 2),
            ("agreement_frames", 16),
            ("smoke_steps", 2),
            ("smoke_batch", 2),
            ("smoke_frames", 16),
            ("gen_repeats", 1),
            ("gen_seconds", 0.08),
        ):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
        if args.gen_batches == p.get_default("gen_batches"):
            args.gen_batches = [1, 2]
    args.size = args.size or "1.6b"
    if args.budget_s is None and not args.dry_run:
        args.budget_s = 480.0
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --dry-run on a CPU)")
    args.settings = read_yaml_settings(args.yaml)
    args.smoke_frames = args.smoke_frames or args.settings["frames"]
    args.device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if args.device == "cuda":
        args.peak_tflops = args.peak_tflops or gpu_peak_tflops(args.device_name)
        args.bandwidth_gbs = args.bandwidth_gbs or match_device(GPU_BANDWIDTH_GBS, args.device_name)
    args.num_codebooks = args.settings["network"]["num_codebooks"]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    global BUDGET
    args = parse_args(argv)
    if args.smoke_child:
        smoke_child(args)
        return None
    BUDGET = Budget(math.inf if args.budget_s is None else args.budget_s)
    started = time.perf_counter()
    out = Path(args.out)
    report: dict[str, Any] = {
        "command": [sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "size": args.size,
        "settings": {k: v for k, v in args.settings.items() if k != "network"},
        "device": device_info(args),
        "sections": {},
    }
    # The models are built from presets; the YAML's network must be the preset of that name.
    from siren_lightning.models.siren import PRESETS, SirenConfig

    yaml_config = SirenConfig.from_dict(args.settings["network"])
    names = [
        n for n in PRESETS if SirenConfig.from_name(n, dropout=yaml_config.dropout) == yaml_config
    ]
    report["yaml_network_preset"] = names[0] if names else None
    if not args.dry_run and report["yaml_network_preset"] != args.size:
        print(f"[gpu_check] note: {args.yaml}'s network is not the {args.size} preset")
    for name in SECTIONS:
        if name not in args.sections:
            continue
        print(f"[gpu_check] {name} ({BUDGET.left():.0f} s of the budget left)", flush=True)
        report["sections"][name] = run_section(name, args)
        report["seconds"] = time.perf_counter() - started
        report["targets"] = targets(report["sections"])
        write_json(out, report)
    print_tables(report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
