"""Exact resume: a run SIGKILLed mid-epoch and resumed from last.ckpt logs the same losses as an
uninterrupted run with the same seed (dropout on, random crops and caption choice on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("tiny_training.py")
ARGS = ["--steps", "24", "--dropout", "0.1", "--batch", "8"]  # 24 clips: 3 batches an epoch


def _cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--root", str(root), *ARGS, *extra]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _losses(root: Path) -> list[dict]:
    path = root / "losses.0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_losses(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cmd(whole), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(
        _cmd(killed, "--ckpt-every", "5"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while len(_losses(killed)) < 13 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    seen = len(_losses(killed))
    assert 13 <= seen < 24
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed_from = last["global_step"]
    assert resumed_from % 3 != 0, "the checkpoint should be mid-epoch"
    assert not list((killed / "checkpoints").glob("*.tmp")), "no temporary file is left"

    result = subprocess.run(
        _cmd(killed, "--ckpt-every", "5", "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataloader is not resumable" not in result.stderr
    reference = {x["step"]: x for x in _losses(whole)}
    after = _losses(killed)[seen:]
    assert [x["step"] for x in after] == list(range(resumed_from + 1, 25))
    for x in after:  # same batches (ids), same dropout: bit-identical losses on one CPU thread
        assert x["ids"] == reference[x["step"]]["ids"], x["step"]
        assert x["loss"] == reference[x["step"]]["loss"], x["step"]
    a, b = (
        torch.load(whole / "final.0.pt", weights_only=True),
        torch.load(killed / "final.0.pt", weights_only=True),
    )
    for name in a:
        assert torch.equal(a[name], b[name]), name
