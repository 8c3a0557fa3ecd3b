"""DDP on 2 CPU processes (gloo) trains the same model as one process with the same global batch.

Both runs go through `tests/tiny_training.py` with Lightning's own `ddp` launcher (it re-runs the
script once per rank). All clips are longer than the crop, so each rank's masked mean covers as
many frames as the other's and the mean of the two rank losses is the one-process loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("tiny_training.py")


def _run(root: Path, devices: int, batch: int, *extra: str) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(SCRIPT), "--root", str(root), "--steps", "6"]
    cmd += ["--devices", str(devices), "--batch", str(batch), *extra]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 or extra, result.stderr[-3000:]
    return result


def _log(root: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (root / f"losses.{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, devices=1, batch=8)
    _run(two, devices=2, batch=4)
    single, rank0, rank1 = _log(one, 0), _log(two, 0), _log(two, 1)
    assert len(single) == len(rank0) == len(rank1) == 6
    for s, a, b in zip(single, rank0, rank1, strict=True):
        # the sampler shards each global batch: the ranks' clips are the one-process batch's
        assert sorted(a["ids"] + b["ids"]) == sorted(s["ids"]) and not set(a["ids"]) & set(b["ids"])
        assert (a["loss"] + b["loss"]) / 2 == pytest.approx(s["loss"], rel=1e-6, abs=1e-6)
    p1 = torch.load(one / "final.0.pt", weights_only=True)
    p2, p2b = (
        torch.load(two / "final.0.pt", weights_only=True),
        torch.load(two / "final.1.pt", weights_only=True),
    )
    for name in p1:
        assert torch.equal(p2[name], p2b[name]), name  # DDP keeps the replicas identical
        torch.testing.assert_close(p2[name], p1[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both_ranks_at_that_step(tmp_path):
    result = _run(tmp_path, 2, 4, "--nan-at-step", "3", "--nan-rank", "1")
    assert result.returncode != 0
    assert (
        "[rank1]: siren_lightning.callbacks.guards.NonFiniteLossError: NaNGuard: " in result.stderr
    )
    assert "non-finite training loss (nan) on this process at global step 3 " in result.stderr
    assert "non-finite training loss on another process at global step 3 " in result.stderr
    assert (tmp_path / "checkpoints" / "nonfinite-step=3.ckpt").is_file()
    for rank in (0, 1):  # three good steps on each rank, none after
        assert len(_log(tmp_path, rank)) == 3
