"""Every process reads the same cache files: items are sliced from the shard on demand (nothing
copied per process), and a cache object pickles for spawned loader workers."""

from __future__ import annotations

import pickle

import torch

from siren_lightning.data.code_cache import (
    FORMAT,
    CodeCache,
    shard_name,
    write_index,
    write_shard,
)


def _cache(root):
    g = torch.Generator().manual_seed(0)
    clips = [
        {
            "id": f"c{i}",
            "captions": ["x", "y"],
            "codes": torch.randint(16, (4, 5 + i), generator=g),
            "samples": 100,
            "text_states": [torch.randn(2 + i, 3, generator=g), torch.randn(4, 3, generator=g)],
        }
        for i in range(6)
    ]
    write_shard(root / shard_name(0), clips[:4], "h")
    write_shard(root / shard_name(1), clips[4:], "h")
    shards = [{"file": shard_name(0), "num_clips": 4}, {"file": shard_name(1), "num_clips": 2}]
    index = {"format": FORMAT, "codec_sha256": "h", "n_codebooks": 4, "codebook_size": 16}
    write_index(root, {**index, "shards": shards})
    return clips


def test_items_are_read_from_the_files_and_survive_pickling(tmp_path):
    clips = _cache(tmp_path)
    cache = CodeCache(tmp_path, expected_codec_sha256="h")
    for i, clip in enumerate(clips):
        item = cache[i]
        assert torch.equal(item["codes"], clip["codes"].to(torch.int16))
        for got, want in zip(item["text_states"], clip["text_states"], strict=True):
            torch.testing.assert_close(got.float(), want.half().float())
    # the shard keeps no codes array in memory, only offsets and a reader
    assert "codes" not in cache._shard(0)
    clone = pickle.loads(pickle.dumps(cache))
    assert torch.equal(clone[5]["codes"], cache[5]["codes"])
