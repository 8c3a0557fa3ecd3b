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
def test_two_process_ddp_shards_every_epoch_and_keeps_the_replicas_identical(tmp_path):
    """litdata shards the stream over the ranks: each epoch, the two ranks' clips are disjoint
    and together every clip of the cache; DDP keeps the two replicas equal."""
    _run(tmp_path, devices=2, batch=4)
    rank0, rank1 = _log(tmp_path, 0), _log(tmp_path, 1)
    assert len(rank0) == len(rank1) == 6  # 24 clips, 2 x 4 a step: 3 steps an epoch
    every = sorted(f"clip{i:03d}" for i in range(24))
    for epoch in range(2):
        a = [i for x in rank0[3 * epoch : 3 * epoch + 3] for i in x["ids"]]
        b = [i for x in rank1[3 * epoch : 3 * epoch + 3] for i in x["ids"]]
        assert not set(a) & set(b) and sorted(a + b) == every, epoch
    assert [x["ids"] for x in rank0[:3]] != [x["ids"] for x in rank0[3:]]  # reshuffled
    p0 = torch.load(tmp_path / "final.0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "final.1.pt", weights_only=True)
    for name in p0:
        assert torch.equal(p0[name], p1[name]), name


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
