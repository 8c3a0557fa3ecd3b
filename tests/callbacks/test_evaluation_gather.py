"""Under DDP each rank generates its own test clips; `_gather` gives every rank all of them."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siren_lightning.callbacks.evaluation import _gather

KEYS = ("generated", "captions", "records")


def _state(rank: int) -> dict:
    # A padded DistributedSampler hands clip "c2" to both ranks.
    ids = {0: ["c0", "c2"], 1: ["c1", "c2"]}[rank]
    return {
        "out": f"rank{rank}",
        "generated": {k: {"embedding": torch.full((2,), float(k[1]))} for k in ids},
        "captions": {k: f"caption {k}" for k in ids},
        "records": [{"id": k, "rank": rank} for k in ids],
    }


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        merged = _gather(_state(rank), KEYS)
        queue.put(
            (
                rank,
                {
                    "out": merged["out"],
                    "generated": {
                        k: v["embedding"].tolist() for k, v in merged["generated"].items()
                    },
                    "captions": merged["captions"],
                    "records": sorted(r["id"] for r in merged["records"]),
                },
            )
        )
    finally:
        dist.destroy_process_group()


def test_gather_merges_every_rank_and_drops_repeats():
    state = _state(0)
    assert _gather(state, KEYS) is state  # one process: nothing to merge
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("fork")  # as in tests/metrics/test_distributed_sync.py
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        merged = results[rank]
        assert merged["out"] == f"rank{rank}"  # per-rank entries are kept
        assert merged["generated"] == {"c0": [0.0, 0.0], "c1": [1.0, 1.0], "c2": [2.0, 2.0]}
        assert set(merged["captions"]) == {"c0", "c1", "c2"}
        assert merged["records"] == ["c0", "c1", "c2"]  # c2 once
