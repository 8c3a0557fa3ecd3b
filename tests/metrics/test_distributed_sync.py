"""Metric states sync across 2 processes (gloo): each rank sees half the data, both compute the
value of the whole."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siren_lightning.metrics.clap_score import CLAPScore
from siren_lightning.metrics.frechet import FrechetDistance
from siren_lightning.metrics.inception import InceptionScore
from siren_lightning.metrics.kad import KernelAudioDistance
from siren_lightning.metrics.kl import KLDivergence


def _data():
    g = torch.Generator().manual_seed(0)
    return {
        "real": torch.randn(60, 4, generator=g, dtype=torch.float64),
        "fake": torch.randn(40, 4, generator=g, dtype=torch.float64) * 1.5 + 0.2,
        "gen_logits": torch.randn(20, 6, generator=g),
        "ref_logits": torch.randn(20, 6, generator=g),
    }


def _compute(parts: list[int]) -> dict[str, float]:
    d = _data()
    fd, kl, inception, clap = FrechetDistance(4), KLDivergence(), InceptionScore(), CLAPScore()
    kad = KernelAudioDistance(4)
    for part in parts:  # rank r takes rows r, r + 2, ...
        fd.update(d["real"][part::2], real=True)
        fd.update(d["fake"][part::2], real=False)
        kad.update(d["real"][part::2], real=True)
        kad.update(d["fake"][part::2], real=False)
        kl.update(d["gen_logits"][part::2], d["ref_logits"][part::2])
        inception.update(d["gen_logits"][part::2])
        clap.update(d["real"][part::2][:10], d["fake"][part::2][:10])
    return {
        "fd": float(fd.compute()),
        "kad": float(kad.compute()),
        "kl": float(kl.compute()),
        "clap": float(clap.compute()),
        "is_ok": float(inception.compute()[0]) > 1.0,
    }


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        queue.put((rank, _compute([rank])))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_sync_equals_single_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: pytest imports test files by path, so a spawned child could not re-import this one.
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    whole = _compute([0, 1])  # one process, both halves
    for rank in (0, 1):
        for key in ("fd", "kad", "kl", "clap"):
            assert results[rank][key] == pytest.approx(whole[key], rel=1e-10), (rank, key)
        assert results[rank]["is_ok"]
