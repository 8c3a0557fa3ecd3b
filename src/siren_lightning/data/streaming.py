"""The training stream of code batches: litdata's `StreamingDataset` / `StreamingDataLoader`.

- Order: litdata's `FullShuffle`, a seeded permutation of the chunks and of the items inside each
  chunk, per epoch; it shards the chunks over nodes, ranks and loader workers (each clip once an
  epoch; under DDP the ranks get equal counts, a remainder is dropped). The same order whether
  the cache is a local folder or a remote URI (local folders would otherwise get litdata's
  POSIX window shuffle).
- Length bucketing (`bucket_batch`): inside each chunk, items are sorted by window length in
  pools of `pool_batches` batches, cut into batches and the batches shuffled (`bucket_order`).
  Batch boundaries are kept aligned across chunks: a chunk first completes the batch the
  previous chunk of this worker left short, so only that one batch a chunk mixes lengths.
  Batches are bucketed per rank (under DDP each rank's batch is homogeneous, the ranks' differ).
- Random crops and caption choice: drawn from a generator seeded by (seed, epoch, clip index),
  so they do not depend on the process, the worker or what ran before.
- Exact resume: litdata's loader state (epoch, samples yielded) is saved in checkpoints, with the
  samples yielded counted from the batches the training loop *consumed* (Lightning fetches one
  batch ahead, so the loader's own count runs ahead); the resumed stream replays the same order
  and skips exactly those, and the epoch after it starts afresh even though Lightning never runs
  an epoch's generator to its end.

Letters: B batch, r codebooks, T frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.shuffle import FullShuffle, NoShuffle, Shuffle

from siren_lightning.data.code_cache import check_item, decode_item, streamed_index
from siren_lightning.data.datasets import crop_codes
from siren_lightning.data.resumable import mix_seed


def bucket_order(
    order: Sequence[int],
    lengths: Sequence[int],
    batch: int,
    head: int,
    pool_batches: int,
    rng: np.random.RandomState,
) -> list[int]:
    """Reorder one chunk's items so that each batch of `batch` holds similar lengths.

    The first `head` items stay first (they complete the batch the previous chunk began); the
    rest are cut into pools of `pool_batches` batches, each pool sorted by length and cut into
    batches, its full batches shuffled and a short one left last.

    Args:
        order: the chunk's items (global indices) in shuffled order.
        lengths: window length of every item of the cache, by global index.
        batch: items a batch (per process).
        head: items that complete the previous chunk's last batch (0..batch-1).
        rng: draws the order of the batches.
    """
    order = [int(i) for i in order]
    out = order[:head]
    rest = order[head:]
    pool = batch * pool_batches
    for start in range(0, len(rest), pool):
        chunk = sorted(rest[start : start + pool], key=lambda i: lengths[i])
        batches = [chunk[j : j + batch] for j in range(0, len(chunk), batch)]
        full = [b for b in batches if len(b) == batch]
        out += [i for k in rng.permutation(len(full)) for i in full[k]]
        out += [i for b in batches if len(b) < batch for i in b]
    return out


class _BucketShuffle(Shuffle):
    """litdata's shuffle with each chunk's items reordered by `bucket_order`."""

    def __init__(self, base: Shuffle, stream: CodeStream) -> None:
        super().__init__(base.cache, base.seed, base.drop_last)
        self.base = base
        self.stream = stream

    def get_chunks_and_intervals_per_workers(self, *args: Any) -> Any:
        return self.base.get_chunks_and_intervals_per_workers(*args)

    def get_len(self, *args: Any) -> int:
        return self.base.get_len(*args)

    def __call__(
        self, array: np.ndarray, num_chunks: int, current_epoch: int, chunk_index: int
    ) -> list[int]:
        order = self.base(array, num_chunks, current_epoch, chunk_index)
        s = self.stream
        # litdata calls this when it starts the worker's chunk number `worker_next_chunk_index`
        # (fresh or resumed): the items before it in this worker's stream fix the offset.
        before = sum(iv[2] - iv[1] for iv in s.worker_intervals[: s.worker_next_chunk_index])
        batch = s.bucket_batch
        head = (batch - before % batch) % batch
        rng = np.random.RandomState([self.seed, num_chunks, current_epoch, chunk_index, 7])
        return bucket_order(order, s.window_lengths, batch, head, s.pool_batches, rng)


class CodeStream(StreamingDataset):
    """Training items of a code cache, streamed, cropped and (optionally) length-bucketed.

    Args:
        input_dir: the cache folder or URI (s3://, gs://, azure://, `local:/path`).
        cache_dir: where litdata keeps the chunks of a remote cache.
        crop_frames: the longest window returned.
        seed: seeds litdata's order and each item's crop and caption draw.
        bucket_batch: per-process batch size to bucket by window length (None: no bucketing).
        pool_batches: batches a length-sorted pool holds.

    Items: as `datasets.crop_codes` returns them ("codes" long [r, <=crop_frames], "caption",
    "frame_offset", "total_frames", "id", and "text_states" [L, Dt] when cached).
    """

    def __init__(
        self,
        input_dir: str,
        cache_dir: str | None = None,
        *,
        crop_frames: int,
        seed: int = 0,
        bucket_batch: int | None = None,
        pool_batches: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            input_dir,
            cache_dir=cache_dir,
            shuffle=True,
            seed=seed,
            item_shuffle_window=0,
            batch_decode=0,  # items come in shuffled order: decode each alone, not its window
            **kwargs,
        )
        self.uri = str(input_dir)
        self.siren = streamed_index(self, self.uri)
        self.crop_frames = crop_frames
        self.item_seed = seed
        self.bucket_batch = bucket_batch
        self.pool_batches = pool_batches
        self.window_lengths = [min(int(f), crop_frames) for f in self.siren["frames"]]

    def _create_shuffler(self, cache: Any) -> Shuffle:
        base = super()._create_shuffler(cache)
        if not isinstance(base, (FullShuffle, NoShuffle)):  # litdata's POSIX window shuffle
            base = FullShuffle(cache, base.seed, base.drop_last, item_window=0)
        if self.bucket_batch and self.bucket_batch > 1:
            return _BucketShuffle(base, self)
        return base

    def __getitem__(self, index: Any) -> Any:
        raw = super().__getitem__(index)
        if not isinstance(raw, dict):  # slices and keys: litdata's own items
            return raw
        i = int(getattr(index, "index", index))
        check_item(raw, i, self.siren, self.uri)
        gen = torch.Generator().manual_seed(mix_seed(self.item_seed, self.current_epoch, i))
        return crop_codes(decode_item(raw), self.crop_frames, True, gen)


class ResumableStreamingLoader(StreamingDataLoader):
    """litdata's loader whose saved position counts the batches the training loop consumed.

    Args:
        consumed_batches: returns how many batches of the current epoch the loop has taken
            (the datamodule passes Lightning's batch progress); None: litdata's own count.
        everything else: as `StreamingDataLoader`.
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        *args: Any,
        consumed_batches: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.consumed_batches = consumed_batches
        self._replay_pending = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._replay_pending = self.restore

    def __iter__(self) -> Any:
        # litdata clears `restore` only when an epoch's generator runs to its end, but Lightning
        # takes len(loader) batches and drops the generator: without this, the epoch after a
        # restored one would replay the restored position instead of starting the next epoch.
        if self.restore and not self._replay_pending:
            self.restore = False
        self._replay_pending = False
        yield from super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        if self.consumed_batches is None:
            return super().state_dict()
        consumed = int(self.consumed_batches())
        samples = consumed * int(self.batch_size)
        workers = max(self.num_workers, 1)
        dataset = self.dataset.state_dict(samples, self.num_workers, self.batch_size)
        # The loader's epoch is the one it iterates (`set_epoch` at `iter`); a dataset iterated in
        # this process has already counted the next one if its loader ran to the end.
        dataset["current_epoch"] = self.current_epoch
        return {
            "dataset": dataset,
            "current_epoch": self.current_epoch,
            "num_samples_yielded": samples,
            "latest_worker_idx": (consumed - 1) % workers if consumed else 0,
        }
