"""`benchmarks/gpu_check.py`: its dry run (the same code at the tiny size on the CPU), the FLOPs
formula MFU uses against a counter, the weight-streaming bound's parts by hand, the budget.

Nothing here depends on timing: speeds are only checked to be positive numbers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_check import (  # noqa: E402
    counted_training_flops,
    kv_cache_bytes,
    streamed_parameters,
    training_flops,
)
from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM  # noqa: E402
from siren_lightning.models.siren import SirenConfig, SirenLM  # noqa: E402
from training import GPU_PEAK_TFLOPS, match_device  # noqa: E402

SMALL = dict(
    num_codebooks=6, codebook_size=16, latent_dim=8, width=32, num_heads=4, text_dim=12, dropout=0.0
)


def siren(**overrides) -> SirenLM:
    torch.manual_seed(0)
    config = {**SMALL, "temporal_layers": 2, "decoder_layers": 1, "mlp_hidden": 64, **overrides}
    model = SirenLM(SirenConfig(**config))
    model.codebook_table.normal_()
    return model.train()


def delay(**overrides) -> DelayPatternLM:
    torch.manual_seed(0)
    model = DelayPatternLM(
        DelayLMConfig(**{**SMALL, "num_layers": 2, "mlp_hidden": 64, **overrides})
    )
    model.codebook_table.normal_()
    return model.train()


@pytest.mark.parametrize(
    "build",
    [
        lambda: siren(),
        lambda: siren(decoder_layers=2),  # the 1.6b preset's decoder depth
        lambda: siren(decoder_layers=3, group=3, bias=False),
        lambda: delay(),
        lambda: delay(num_layers=3, bias=False),
    ],
    ids=["siren", "siren-2-decoder-layers", "siren-group-3", "delay", "delay-3-layers"],
)
@pytest.mark.parametrize("shape", [(2, 7, 5), (3, 4, 1)], ids=["b2t7l5", "b3t4l1"])
def test_analytic_training_flops_equal_the_counted_ones(build, shape):
    model = build()
    b, t, text = shape
    assert training_flops(model, b, t, text).total == counted_training_flops(model, b, t, text)


def test_training_flops_split_forward_and_backward_as_expected():
    # A linear layer whose input needs no gradient (the codec vectors) costs 2x its forward in
    # total, any other 3x: the step is between 2x and 3x the forward, close to 3x.
    f = training_flops(siren(), 2, 8, 3)
    assert 2 * f.forward < f.total < 3 * f.forward
    assert f.total > 2.9 * f.forward


def _linear(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def _mlp_and_attention(d: int, h: int, bias: bool) -> int:
    """Self-attention (qkv, out: never a bias), SwiGLU and their two norms."""
    attn = _linear(d, 3 * d, False) + _linear(d, d, False)
    return attn + 2 * _linear(d, h, bias) + _linear(h, d, bias) + 2 * d


@pytest.mark.parametrize("bias", [True, False])
def test_streamed_parameters_count_what_a_sampling_step_reads(bias):
    d, h, k = SMALL["width"], 64, SMALL["codebook_size"]
    # Siren, per expert: temporal blocks without the text keys/values (cross norm, query, out),
    # its final norm, the decoder blocks, their norm, g heads; 3 experts of g = 2.
    temporal = d + 2 * _linear(d, d, False) + _mlp_and_attention(d, h, bias)
    expert = 2 * temporal + d + 1 * _mlp_and_attention(d, h, bias) + d + 2 * _linear(d, k, bias)
    assert streamed_parameters(siren(bias=bias)) == 3 * expert
    # Delay LM: its blocks the same way, the final norm and r heads.
    assert streamed_parameters(delay(bias=bias)) == 2 * temporal + d + 6 * _linear(d, k, bias)


def test_kv_cache_bytes_are_the_mean_read_over_a_generation():
    rows, frames, element = 3, 10, 2
    # frame t (1-based) reads t cached keys and values per layer
    read = sum(range(1, frames + 1)) / frames  # positions per frame, on average
    s = siren()  # 3 experts x 2 temporal layers
    per_position = 2 * rows * SMALL["width"] * element
    assert kv_cache_bytes(s, rows, frames, element) == pytest.approx(3 * 2 * per_position * read)
    d = delay()  # 2 layers, S = T + r - 1 steps for T frames
    steps = frames + 6 - 1
    per_frame = 2 * per_position * sum(range(1, steps + 1)) / frames
    assert kv_cache_bytes(d, rows, frames, element) == pytest.approx(per_frame)


def test_device_tables_match_the_longest_name():
    assert match_device(GPU_PEAK_TFLOPS, "NVIDIA H100 80GB HBM3") == 989.4
    assert match_device(GPU_PEAK_TFLOPS, "NVIDIA H200 NVL") == 835.0  # not the SXM H200
    bandwidth = gpu_check.GPU_BANDWIDTH_GBS
    assert match_device(bandwidth, "NVIDIA L40S") == 864.0  # not the L4
    assert match_device(bandwidth, "NVIDIA A100-SXM4-80GB") == 2039.0
    assert match_device(bandwidth, "NVIDIA H200") == 4800.0
    assert match_device(bandwidth, "Some Future GPU") is None


@pytest.mark.slow
def test_dry_run_measures_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_check.py"),
        "--dry-run",
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok")
    assert report["device"]["cuda"] is False and report["yaml_network_preset"] == "1.6b"
    assert report["budget_s"] is None  # a dry run is never cut short: its speed is the CPU's

    assert all(case["counted"] == case["analytic"] for case in sections["flops"]["cases"])

    agreement = sections["agreement"]
    for kind in ("siren", "baseline"):
        m = agreement["models"][kind]
        assert len(m["cpu_losses"]) == len(m["device_losses"]) == agreement["steps"]
        assert m["max_rel_diff"] <= agreement["rtol"] and m["within_rtol"]

    train = sections["training"]
    # the 1.6b YAML's training settings, at the dry run's tiny size and small batch
    assert (train["precision"], train["gradient_checkpointing"]) == ("bf16-mixed", True)
    assert (train["batch"], train["frames"]) == (2, 16)
    tiny = {
        "siren": SirenLM(SirenConfig.from_name("tiny")),
        "baseline": DelayPatternLM(DelayLMConfig.from_name("tiny")),
    }
    for kind, model in tiny.items():
        row = train["models"][kind]
        steps = train["warmup_steps"] + train["timed_steps"]
        assert len(row["losses"]) == steps and all(math.isfinite(x) for x in row["losses"])
        assert row["tokens_per_s"] > 0 and row["mfu"] is None  # no bf16 peak for a CPU
        expected = training_flops(model, 2, 16, train["text_tokens"]).total / (2 * 16)
        assert row["flops_per_token"] == expected

    gen = sections["generation"]
    combos = {(r["model"], r["dtype"], r["batch"]) for r in gen["rows"]}
    assert combos == {
        (m, dt, b) for m in ("siren", "baseline") for dt in ("bf16", "fp32") for b in (1, 2)
    }
    for row in gen["rows"]:
        assert row["frames_per_s"] > 0 and row["bound_ms_per_frame"] is None  # no bandwidth
        assert row["weight_bytes_per_frame"] > 0

    smoke = sections["smoke"]
    assert smoke["ddp"]["status"] == "ok" and len(smoke["ddp"]["ranks"]) == 1
    assert all(math.isfinite(x) for x in smoke["ddp"]["ranks"][0]["losses"])
    assert smoke["fsdp"]["status"] == "skipped" and "CUDA" in smoke["fsdp"]["reason"]
    assert "| training MFU siren >= 45% |" in result.stdout  # the printed targets


def test_an_exhausted_budget_skips_every_section_and_says_so(tmp_path):
    out = tmp_path / "report.json"
    gpu_check.main(["--dry-run", "--budget-s", "0", "--out", str(out)])
    sections = json.loads(out.read_text())["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    for section in sections.values():
        assert section["status"] == "skipped" and "time budget" in section["reason"]


def test_a_section_past_the_deadline_is_stopped_and_keeps_what_it_measured(tmp_path, monkeypatch):
    def endless(args, out):
        out["started"] = True
        while True:  # never returns: only the deadline ends it
            time.sleep(0.05)

    monkeypatch.setitem(gpu_check.RUNNERS, "flops", endless)
    args = gpu_check.parse_args(["--dry-run", "--out", str(tmp_path / "report.json")])
    monkeypatch.setattr(gpu_check, "BUDGET", gpu_check.Budget(1.0))
    section = gpu_check.run_section("flops", args)
    assert section["status"] == "stopped" and "time budget" in section["reason"]
    assert section["started"] is True  # what the section recorded before it was stopped
    # the alarm is off again: nothing interrupts what runs after the section
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_error_is_recorded_and_the_next_section_still_runs(tmp_path, monkeypatch):
    def broken(args, out):
        out["partial"] = 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(args, out):
        out["value"] = 42

    monkeypatch.setitem(gpu_check.RUNNERS, "flops", broken)
    monkeypatch.setitem(gpu_check.RUNNERS, "agreement", fine)
    out = tmp_path / "report.json"
    gpu_check.main(["--dry-run", "--sections", "flops", "agreement", "--out", str(out)])
    sections = json.loads(out.read_text())["sections"]
    assert sections["flops"]["status"] == "error" and sections["flops"]["partial"] == 1
    assert sections["flops"]["reason"].startswith("RuntimeError: CUDA error: an illegal")
    assert sections["agreement"]["status"] == "ok" and sections["agreement"]["value"] == 42
