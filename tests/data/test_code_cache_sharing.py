"""The litdata code cache: items come back exactly (codes, captions, text states), from a local
folder or through a `local:` URI (litdata's stand-in for object storage, which copies chunks into
a cache folder), a cache object pickles for spawned loader workers, a replaced (stale) chunk or
an unfinished cache is refused, and an old-format cache gets one clear message or converts."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from siren_lightning.data.code_cache import (
    INDEX_FILE,
    CodeCache,
    CodeCacheError,
    chunk_name,
    finish_cache,
    read_part,
    write_part,
)


def _clips(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "id": f"c{i}",
            "captions": ["x", f"y {i}"],
            "codes": torch.randint(16, (4, 5 + i), generator=g),
            "samples": 100 + i,
            "text_states": [torch.randn(2 + i, 3, generator=g), torch.randn(4, 3, generator=g)],
        }
        for i in range(n)
    ]


def _cache(root, clips):
    write_part(root, 0, clips[:4], {"codec_sha256": "h"})
    write_part(root, 1, clips[4:], {"codec_sha256": "h"})
    parts = [read_part(root, 0), read_part(root, 1)]
    return finish_cache(root, parts, {"codec_sha256": "h", "n_codebooks": 4, "codebook_size": 16})


def _assert_items(cache, clips):
    assert len(cache) == len(clips)
    for i, clip in enumerate(clips):
        item = cache[i]
        assert (item["id"], item["captions"], item["samples"]) == (
            clip["id"],
            clip["captions"],
            clip["samples"],
        )
        assert item["codes"].dtype == torch.int16
        assert torch.equal(item["codes"], clip["codes"].to(torch.int16))
        for got, want in zip(item["text_states"], clip["text_states"], strict=True):
            assert torch.equal(got, want.half())


def test_items_round_trip_locally_remotely_and_after_pickling(tmp_path):
    clips = _clips()
    index = _cache(tmp_path / "c", clips)
    assert index["ids"] == [c["id"] for c in clips]
    assert index["frames"] == [5 + i for i in range(6)]
    cache = CodeCache(tmp_path / "c", expected_codec_sha256="h")
    _assert_items(cache, clips)
    _assert_items(pickle.loads(pickle.dumps(cache)), clips)
    remote = CodeCache(f"local:{tmp_path / 'c'}", stream_cache_dir=str(tmp_path / "copy"))
    _assert_items(remote, clips)
    assert any(p.name == INDEX_FILE for p in (tmp_path / "copy").rglob("*"))  # copied, as from S3


def test_another_codec_an_unfinished_cache_and_a_stale_chunk_are_refused(tmp_path):
    clips = _clips()
    _cache(tmp_path / "c", clips)
    with pytest.raises(CodeCacheError, match="was written by codec h"):
        CodeCache(tmp_path / "c", expected_codec_sha256="other")
    # A chunk replaced after index.json was written (another run's part 1, same size) is never
    # served.
    other = tmp_path / "other"
    write_part(other, 1, [clips[5], clips[4]], {"codec_sha256": "h"})
    shutil.copy(other / chunk_name(1), tmp_path / "c" / chunk_name(1))
    cache = CodeCache(tmp_path / "c")
    assert cache[3]["id"] == "c3"
    with pytest.raises(CodeCacheError, match="item 4 is clip 'c5', but index.json lists 'c4'"):
        cache[4]
    (tmp_path / "c" / INDEX_FILE).unlink()  # as an interrupted run leaves it
    with pytest.raises(CodeCacheError, match="index.json missing"):
        CodeCache(tmp_path / "c")


def test_a_code_outside_the_codebook_names_the_clip(tmp_path):
    clips = _clips()
    clips[2]["codes"][1, 3] = 16  # K = 16: one past the last code
    _cache(tmp_path / "c", clips)
    cache = CodeCache(tmp_path / "c")
    assert cache[1]["id"] == "c1"
    with pytest.raises(CodeCacheError, match=r"clip 'c2' holds code 16 \(codebook 1, frame 3\)"):
        cache[2]


def _old_cache(root, clips):
    """A cache in the old safetensors format, written the way the old `write_shard` did."""
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    shards = []
    for s, part in enumerate((clips[:4], clips[4:])):
        states = [st for c in part for st in c["text_states"]]
        tensors = {
            "codes": torch.cat([c["codes"] for c in part], 1).to(torch.int16),
            "frames": torch.tensor([c["codes"].shape[1] for c in part]),
            "samples": torch.tensor([c["samples"] for c in part]),
            "text_states": torch.cat(states).half(),
            "text_lengths": torch.tensor([st.shape[0] for st in states]),
        }
        meta = {
            "clips": json.dumps([{"id": c["id"], "captions": c["captions"]} for c in part]),
            "codec_sha256": "h",
            "manifest_sha256": f"m{s}",
            "settings": "{}",
            "skipped": "{}",
        }
        save_file(tensors, str(root / f"shard-{s:05d}.safetensors"), metadata=meta)
        shards.append({"file": f"shard-{s:05d}.safetensors", "num_clips": len(part)})
    index = {"format": "siren-code-cache/1", "codec_sha256": "h", "n_codebooks": 4}
    (root / INDEX_FILE).write_text(json.dumps({**index, "codebook_size": 16, "shards": shards}))


def test_an_old_format_cache_is_refused_clearly_and_converts_exactly(tmp_path):
    from siren_lightning.codec import tokenize as tok
    from siren_lightning.data.datamodule import SirenDataModule

    clips = _clips()
    _old_cache(tmp_path / "old", clips)
    with pytest.raises(CodeCacheError, match="old safetensors format.*siren tokenize --convert"):
        CodeCache(tmp_path / "old")
    with pytest.raises(CodeCacheError, match="old safetensors format"):
        SirenDataModule(mode="codes", train_cache=str(tmp_path / "old")).setup("fit")
    assert tok.main(["--convert", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 0
    new = CodeCache(tmp_path / "new", expected_codec_sha256="h")
    _assert_items(new, clips)
    assert [p["manifest_sha256"] for p in new.index["parts"]] == ["m0", "m1"]
