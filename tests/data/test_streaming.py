"""The litdata training stream: every clip once an epoch in a seeded order, per-item crops that
follow (seed, epoch, clip) only, the same stream from a folder and from a `local:` URI, length
bucketing that keeps batches aligned across chunks, and exact resume from the loader's state."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from siren_lightning.data.code_cache import finish_cache, read_part, write_part
from siren_lightning.data.datasets import collate_codes
from siren_lightning.data.streaming import CodeStream, ResumableStreamingLoader, bucket_order

CROP = 16
PARTS = (10, 9, 11)  # clips a part: chunk sizes that are not multiples of the batch


def _frames(i: int) -> int:
    return 3 + (7 * i) % 29  # 3..31 frames: some shorter than the crop, some longer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    g = torch.Generator().manual_seed(0)
    i = 0
    for k, n in enumerate(PARTS):
        clips = []
        for _ in range(n):
            t = _frames(i)
            codes = torch.randint(8, (2, t), generator=g)
            clips.append({"id": f"c{i:02d}", "captions": ["a", "b"], "codes": codes, "samples": t})
            i += 1
        write_part(root, k, clips, {"codec_sha256": "h"})
    parts = [read_part(root, k) for k in range(len(PARTS))]
    finish_cache(root, parts, {"codec_sha256": "h", "n_codebooks": 2, "codebook_size": 8})
    return root


def _stream(cache, seed=0, bucket=None, uri=None, tmp=None):
    return CodeStream(
        uri or str(cache), tmp, crop_frames=CROP, seed=seed, bucket_batch=bucket, pool_batches=2
    )


def _loader(ds, batch, consumed=None):
    return ResumableStreamingLoader(
        ds, batch_size=batch, collate_fn=collate_codes, consumed_batches=consumed
    )


def test_bucket_order_by_hand():
    lengths = [5, 1, 4, 2, 3, 6, 9, 8]
    rng = np.random.RandomState(0)
    out = bucket_order([0, 1, 2, 3, 4, 5, 6, 7], lengths, batch=2, head=1, pool_batches=2, rng=rng)
    assert out[0] == 0  # the head completes the previous chunk's batch, untouched
    # pools of 4 after the head: {1,2,3,4} -> by length [1,3,4,2] -> batches {1,3}, {4,2};
    # the last 3 items {5,6,7} -> [5,7,6]: one full batch {5,7} then the short one [6] last.
    batches = [out[1:3], out[3:5]]
    assert sorted(map(sorted, batches)) == [[1, 3], [2, 4]]
    assert out[5:] == [5, 7, 6]


def test_every_clip_once_an_epoch_in_an_order_of_seed_and_epoch(cache, tmp_path):
    first = [it["id"] for it in _stream(cache)]
    assert sorted(first) == [f"c{i:02d}" for i in range(sum(PARTS))]
    torch.manual_seed(123)  # the global generator plays no part
    again = _stream(cache)
    assert [it["id"] for it in again] == first
    assert [it["id"] for it in _stream(cache, seed=1)] != first
    remote = _stream(cache, uri=f"local:{cache}", tmp=str(tmp_path / "copy"))
    assert [it["id"] for it in remote] == first  # object storage stand-in: the same stream


def test_crops_follow_seed_epoch_and_clip(cache):
    def windows(seed, epoch):
        ds = _stream(cache, seed)
        ds.set_epoch(epoch)
        return {it["id"]: (it["frame_offset"], it["caption"], it["codes"]) for it in ds}

    a, b = windows(0, 1), windows(0, 1)
    for key, (offset, caption, codes) in a.items():
        assert (offset, caption) == b[key][:2] and torch.equal(codes, b[key][2])
        assert codes.shape[-1] == min(CROP, _frames(int(key[1:])))
    other = windows(0, 2)
    long_clips = [k for k in a if _frames(int(k[1:])) > CROP + 4]
    assert any(a[k][0] != other[k][0] for k in long_clips)  # another epoch, other windows


def _part(clip_id: str) -> int:
    i = int(clip_id[1:])
    return 0 if i < PARTS[0] else 1 if i < PARTS[0] + PARTS[1] else 2


def test_bucketed_batches_hold_similar_lengths_and_stay_aligned(cache):
    """Against the unbucketed stream of the same seed: the same chunks in the same order, each
    chunk's items regrouped so that, after the items completing the previous chunk's last batch,
    every batch of a pool (2 batches here) spans its own range of lengths, and batch boundaries
    fall on multiples of the batch size in the whole stream."""
    batch, pool = 4, 2
    got = [i for b in _loader(_stream(cache, bucket=batch), batch) for i in b["ids"]]
    plain = [it["id"] for it in _stream(cache)]
    assert [_part(i) for i in got] == [_part(i) for i in plain]  # chunk by chunk, same order
    assert sorted(got) == sorted(plain)
    length = {i: min(_frames(int(i[1:])), CROP) for i in got}
    before, grouped = 0, 0
    while before < len(got):
        end = before
        while end < len(got) and _part(got[end]) == _part(got[before]):
            end += 1
        segment = got[before:end]
        head = (batch - before % batch) % batch
        rest = segment[head:]
        for start in range(0, len(rest), batch * pool):
            groups = [rest[j : j + batch] for j in range(start, start + batch * pool, batch)]
            groups = [[length[i] for i in g] for g in groups if len(g) == batch]
            for x in groups:
                for y in groups:
                    if x is not y:
                        assert max(x) <= min(y) or max(y) <= min(x), (x, y)
            grouped += len(groups)
        before = end
    assert grouped >= 5  # the check above is not empty

    def spread(order):
        batches = [order[j : j + batch] for j in range(0, len(order), batch)]
        return sum(max(length[i] for i in g) - min(length[i] for i in g) for g in batches)

    assert spread(got) < spread(plain)


@pytest.mark.parametrize("bucket", [None, 3])
def test_loader_resumes_exactly_from_the_consumed_batches(cache, bucket):
    consumed = {"n": 0}
    full = _loader(_stream(cache, bucket=bucket), 3, lambda: consumed["n"])
    reference = [(b["ids"], b["codes"]) for b in full]
    consumed["n"] = 4  # the loop took 4 batches; the loader itself ran ahead
    state = full.state_dict()
    assert state["num_samples_yielded"] == 12

    resumed = _loader(_stream(cache, bucket=bucket), 3, lambda: consumed["n"])
    resumed.load_state_dict(state)
    rest = [(b["ids"], b["codes"]) for b in resumed]
    assert [r[0] for r in rest] == [r[0] for r in reference[4:]]
    for (_, got), (_, want) in zip(rest, reference[4:], strict=True):  # same crops too
        assert torch.equal(got, want)
    assert len([b for b in resumed]) == len(reference)  # the next epoch is whole again


def test_the_epoch_after_a_resumed_one_is_the_next_epoch_when_epochs_stop_at_len(cache):
    """Lightning takes len(loader) batches an epoch and drops the iterator (it never sees the
    generator end): a resumed run's next epoch must still be the uninterrupted run's."""
    consumed = {"n": 0}

    def epochs(loader, n, skip=0):
        out = []
        for e in range(n):
            take = len(loader) - (skip if e == 0 else 0)
            out.append([b["ids"] for b in islice(iter(loader), take)])
        return out

    full = _loader(_stream(cache, bucket=3), 3, lambda: consumed["n"])
    reference = epochs(full, 3)
    assert reference[1] != reference[0]
    first = _loader(_stream(cache, bucket=3), 3, lambda: consumed["n"])
    it = iter(first)
    assert [next(it)["ids"] for _ in range(3)] == reference[0][:3]  # one fetched ahead
    consumed["n"] = 2
    state = first.state_dict()
    resumed = _loader(_stream(cache, bucket=3), 3, lambda: consumed["n"])
    resumed.load_state_dict(state)
    got = epochs(resumed, 3, skip=2)
    assert got[0] == reference[0][2:]
    assert got[1:] == reference[1:]


def test_two_loader_workers_cover_every_clip_and_resume_exactly(cache):
    """The large YAMLs read with loader workers: litdata splits the chunks between them and
    alternates their batches; a resumed loader continues that interleaving exactly."""
    consumed = {"n": 0}

    def loader():
        ds = _stream(cache, bucket=3)
        return ResumableStreamingLoader(
            ds,
            batch_size=3,
            num_workers=2,
            collate_fn=collate_codes,
            consumed_batches=lambda: consumed["n"],
        )

    full = loader()
    reference = [b["ids"] for b in islice(iter(full), len(full))]
    assert sorted(i for b in reference for i in b) == [f"c{i:02d}" for i in range(sum(PARTS))]
    first = loader()
    it = iter(first)
    [next(it) for _ in range(4)]
    consumed["n"] = 3
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert [b["ids"] for b in islice(iter(resumed), len(reference) - 3)] == reference[3:]
