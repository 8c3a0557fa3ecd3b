"""The resumable sampler of the manifest modes: seeded order, DDP shards that tile the global
batch, exact skipping, and per-item draws that do not depend on the process-wide generator.
(The code-cache stream and its length bucketing: tests/data/test_streaming.py.)"""

from __future__ import annotations

import torch

from siren_lightning.data.datasets import CodeClipDataset
from siren_lightning.data.resumable import ItemKey, ResumableDataLoader, ResumableSampler


def _items(n=10, frames=30):
    g = torch.Generator().manual_seed(0)
    return [
        {"id": f"c{i}", "codes": torch.randint(8, (2, frames), generator=g), "captions": ["a", "b"]}
        for i in range(n)
    ]


def test_order_depends_on_seed_and_epoch_only():
    ds = list(range(10))
    a, b = ResumableSampler(ds, seed=1), ResumableSampler(ds, seed=1)
    torch.manual_seed(5)
    first = [k.index for k in a]
    torch.manual_seed(6)
    assert [k.index for k in b] == first and sorted(first) == list(range(10))
    a.set_epoch(1)
    assert [k.index for k in a] != first
    assert [k.index for k in ResumableSampler(ds, seed=2)] != first


def test_two_ranks_tile_each_global_batch():
    ds = list(range(12))
    whole = [k.index for k in ResumableSampler(ds, seed=3)]
    ranks = [[k.index for k in ResumableSampler(ds, 2, r, seed=3)] for r in (0, 1)]
    for step in range(3):  # global batch 4 = 2 per rank
        together = ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]
        assert sorted(together) == sorted(whole[4 * step : 4 * step + 4])


def test_loader_state_skips_the_consumed_batches_of_that_epoch_only():
    ds = CodeClipDataset(_items(), crop_frames=8, train=True)
    consumed = {"n": 0}

    def loader():
        return ResumableDataLoader(
            ds,
            batch_size=3,
            sampler=ResumableSampler(ds, seed=0),
            consumed_batches=lambda: consumed["n"],
            collate_fn=lambda items: items,
        )

    full = loader()
    full.sampler.set_epoch(2)
    reference = list(full)
    consumed["n"] = 2
    state = full.state_dict()
    assert state["epoch"] == 2 and state["consumed_batches"] == 2

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = list(resumed)
    assert len(rest) == len(reference) - 2
    for got, want in zip(rest, reference[2:], strict=True):
        assert [g["id"] for g in got] == [w["id"] for w in want]
        for g, w in zip(got, want, strict=True):  # same crop, same caption
            assert torch.equal(g["codes"], w["codes"]) and g["caption"] == w["caption"]
    resumed.sampler.set_epoch(3)  # a later epoch is whole again
    assert len(list(resumed)) == len(reference)


def test_item_draws_ignore_the_global_generator_but_follow_the_key():
    ds = CodeClipDataset(_items(), crop_frames=8, train=True)
    torch.manual_seed(0)
    a = ds[ItemKey(4, 99)]
    torch.manual_seed(1)
    b = ds[ItemKey(4, 99)]
    assert torch.equal(a["codes"], b["codes"]) and a["caption"] == b["caption"]
    crops = {tuple(ds[ItemKey(4, s)]["codes"][0].tolist()) for s in range(20)}
    assert len(crops) > 3  # other seeds, other windows


def test_audio_crops_and_captions_follow_the_key_too(synthcaps_small):
    from siren_lightning.data.datasets import AudioClipDataset
    from siren_lightning.data.manifest import read_manifest

    clips = read_manifest(synthcaps_small["train"])
    ds = AudioClipDataset(clips, 16_000, 4_000, train=True)  # 0.25 s crops of 1-2 s clips
    torch.manual_seed(0)
    a = ds[ItemKey(3, 7)]
    torch.manual_seed(1)
    b = ds[ItemKey(3, 7)]
    assert torch.equal(a["audio"], b["audio"]) and a["caption"] == b["caption"]
    assert not torch.equal(ds[ItemKey(3, 8)]["audio"], a["audio"])
