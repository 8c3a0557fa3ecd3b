"""A training sampler and loader over manifests that resume exactly where a killed run stopped.

Used by the audio (codec training) and caption (alignment) modes, whose datasets read manifests
and audio files; code batches from a code cache stream through litdata instead
(`data.streaming`), which does the same job for chunked datasets. `mix_seed` and `global_seed`
seed both.

Why: Lightning restores its loop counters from a checkpoint but starts a fresh iterator over
the data, so a run resumed mid-epoch would see other batches than the run it continues. Here
- the order of an epoch is a pure function of (seed, epoch): a seeded permutation, sharded over
  the processes as `DistributedSampler` does (so Lightning does not replace it under DDP);
- each item's random draws (crop start, caption choice) come from a generator seeded by
  (seed, epoch, clip index), not from a process-wide generator, so they do not depend on the
  process, the worker or what ran before;
- the loader is *stateful* in Lightning's sense (`state_dict` / `load_state_dict`): the
  checkpoint records the epoch and how many batches of it were consumed, and a resumed loader
  skips exactly those.
The sampler yields `ItemKey`s (index, seed) that the datasets in `data.datasets` accept.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class ItemKey(NamedTuple):
    """What the resumable sampler yields: the clip `index` and the `seed` of its random draws."""

    index: int
    seed: int


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def global_seed() -> int:
    """The seed of `seed_everything` (Lightning exports it as PL_GLOBAL_SEED), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """Seeded, sharded, resumable order of a map-style dataset.

    Epoch e's order is `DistributedSampler`'s (a permutation seeded by seed + e, padded to a
    multiple of `num_replicas`, rank r taking every num_replicas-th index from r), so the union
    of the ranks' k-th batches is the k-th batch of a one-process run with the whole batch.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas, rank: processes and this one's rank (1 and 0 outside DDP).
        seed: seeds the order and the per-item draws.
        shuffle: permute (training) or keep the dataset order.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._resume: tuple[int, int] | None = None  # (epoch, items to skip)

    def resume_at(self, epoch: int, items: int) -> None:
        """Skip the first `items` of this rank's order the next time epoch `epoch` is iterated."""
        self._resume = (epoch, items)

    def __iter__(self) -> Iterator[ItemKey]:
        indices = list(super().__iter__())
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        for i in indices[skip:]:
            yield ItemKey(i, mix_seed(self.seed, self.epoch, i))


class ResumableDataLoader(DataLoader):
    """A `DataLoader` over a `ResumableSampler` whose position is saved in checkpoints.

    Args:
        consumed_batches: returns how many batches of the current epoch the training loop has
            consumed (the loader itself runs ahead by the prefetched batches, so it cannot count
            them); the datamodule passes Lightning's batch progress.
        everything else: as `DataLoader` (`sampler` must be a `ResumableSampler`).
    """

    def __init__(
        self, *args: Any, consumed_batches: Callable[[], int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a ResumableSampler")
        self.consumed_batches = consumed_batches

    def state_dict(self) -> dict[str, int]:
        consumed = self.consumed_batches() if self.consumed_batches is not None else 0
        return {
            "epoch": self.sampler.epoch,
            "consumed_batches": int(consumed),
            "batch_size": int(self.batch_size),
            "seed": int(self.sampler.seed),
            "num_replicas": int(self.sampler.num_replicas),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = {"batch_size": self.batch_size, "num_replicas": self.sampler.num_replicas}
        changed = {k: (state[k], v) for k, v in mine.items() if state.get(k, v) != v}
        if changed:
            # Another batch size or process count cannot continue the same order; the loop
            # still resumes, from the start of the checkpoint's epoch order skipped by items.
            import warnings

            warnings.warn(
                f"resuming with other data settings than the checkpoint's (saved, now): {changed}; "
                "the batches after resume differ from an uninterrupted run",
                stacklevel=2,
            )
        items = int(state["consumed_batches"]) * int(state.get("batch_size", self.batch_size))
        self.sampler.resume_at(int(state["epoch"]), items)


def item_generator(key: Any) -> tuple[int, torch.Generator | None]:
    """Split a dataset key: (index, a generator seeded for this item) or (index, None) for ints."""
    if isinstance(key, ItemKey):
        return key.index, torch.Generator().manual_seed(key.seed)
    return int(key), None
