import json
import math

import pytest
import soundfile as sf
import torch

from siren_lightning.codec import tokenize as tok
from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec
from siren_lightning.data.code_cache import CodeCache, CodeCacheError

SR = 16000


def make_manifest(root, lengths, bad=()):
    lines = []
    for i, n in enumerate(lengths):
        path = root / f"clip{i}.wav"
        if i not in bad:
            t = torch.arange(n) / SR
            sf.write(path, (0.3 * torch.sin(2 * math.pi * (200 + 50 * i) * t)).numpy(), SR)
        lines.append({"id": f"c{i}", "audio": path.name, "captions": [f"tone {i}", f"clip {i}"]})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def codec(seed=0):
    torch.manual_seed(seed)
    return SpectralRVQCodec(SpectralCodecConfig.tiny()).eval()


LENGTHS = [1600, 3301, 1800, 4000, 2222, 1999, 3200]  # all >= 0.1 s (MIN_SECONDS)


def test_cache_round_trip_is_exact(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    index = tok.tokenize_manifest(
        manifest, c, tmp_path / "cache", shard_size=3, batch_size=2, progress=False
    )
    assert index["num_clips"] == len(LENGTHS) and len(index["shards"]) == 3
    assert (index["sample_rate"], index["hop_length"], index["n_codebooks"]) == (SR, 320, 12)
    cache = CodeCache(tmp_path / "cache", expected_codec_sha256=c.sha256())
    assert len(cache) == len(LENGTHS)
    audios = [
        torch.from_numpy(sf.read(tmp_path / f"clip{i}.wav", dtype="float32")[0]) for i in range(7)
    ]
    expected = [code for s in range(0, 7, 3) for code in tok.encode_clips(c, audios[s : s + 3], 2)]
    for i, n in enumerate(LENGTHS):
        item = cache[i]
        assert item["id"] == f"c{i}" and item["captions"] == [f"tone {i}", f"clip {i}"]
        assert item["codes"].dtype == torch.int16 and item["samples"] == n
        assert item["codes"].shape == (12, math.ceil(n / 320))
        assert torch.equal(item["codes"].long(), expected[i])
        # The coarse codebooks match encoding the clip alone (padding only touches the last frame).
        alone = c.encode(audios[i][None, None])[0]
        assert torch.equal(item["codes"][:2, :-1].long(), alone[:2, :-1])


def _same_cache(a, b):
    """Same index and same items (safetensors' metadata order is not byte-stable)."""
    assert (a / "index.json").read_text() == (b / "index.json").read_text()
    ca, cb = CodeCache(a), CodeCache(b)
    assert len(ca) == len(cb)
    for i in range(len(ca)):
        x, y = ca[i], cb[i]
        assert (x["id"], x["captions"], x["samples"]) == (y["id"], y["captions"], y["samples"])
        assert torch.equal(x["codes"], y["codes"])


def test_interrupt_and_resume_equals_one_run(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    tok.tokenize_manifest(manifest, c, tmp_path / "once", shard_size=2, progress=False)

    real_write = tok.write_shard
    calls = {"n": 0}

    def dying_write(path, clips, sha, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # killed half-way through the third shard
            path.with_name(path.name + ".tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        real_write(path, clips, sha, **kwargs)

    monkeypatch.setattr(tok, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        tok.tokenize_manifest(manifest, c, tmp_path / "resumed", shard_size=2, progress=False)
    with pytest.raises(CodeCacheError, match="index.json missing"):
        CodeCache(tmp_path / "resumed")  # an interrupted cache is never read
    monkeypatch.setattr(tok, "write_shard", real_write)
    written = []
    monkeypatch.setattr(
        tok, "write_shard", lambda p, *a, **k: (written.append(p.name), real_write(p, *a, **k))
    )
    tok.tokenize_manifest(manifest, c, tmp_path / "resumed", shard_size=2, progress=False)
    assert written == [
        "shard-00002.safetensors",
        "shard-00003.safetensors",
    ]  # finished ones skipped
    _same_cache(tmp_path / "resumed", tmp_path / "once")


def test_mismatched_codec_is_refused(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS[:3])
    tok.tokenize_manifest(manifest, codec(0), tmp_path / "cache", progress=False)
    other = codec(1)
    with pytest.raises(CodeCacheError, match="was written by codec"):
        CodeCache(tmp_path / "cache", expected_codec_sha256=other.sha256())
    with pytest.raises(CodeCacheError, match="--overwrite"):
        tok.tokenize_manifest(manifest, other, tmp_path / "cache", progress=False)


def test_bad_clips_are_skipped_and_counted(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS, bad=(2,))
    with pytest.raises(CodeCacheError, match="1 of 7 clips"):
        tok.tokenize_manifest(manifest, codec(), tmp_path / "strict", progress=False)
    index = tok.tokenize_manifest(
        manifest, codec(), tmp_path / "cache", max_skip_fraction=0.2, progress=False
    )
    assert index["skipped"] == ["c2"] and index["num_clips"] == 6
    assert [CodeCache(tmp_path / "cache")[i]["id"] for i in range(6)] == [
        "c0",
        "c1",
        "c3",
        "c4",
        "c5",
        "c6",
    ]


class FixedTextEncoder:
    """A deterministic stand-in text encoder: one 4-d state per word."""

    def encode(self, captions):
        words = [c.split() for c in captions]
        n = max(len(w) for w in words)
        states = torch.zeros(len(captions), n, 4)
        mask = torch.zeros(len(captions), n, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                states[i, j] = float(len(w) + i)
                mask[i, j] = True
        return type("S", (), {"states": states, "mask": mask})()


def test_text_states_are_stored_per_caption(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS[:3])
    tok.tokenize_manifest(
        manifest, codec(), tmp_path / "cache", text_encoder=FixedTextEncoder(), progress=False
    )
    item = CodeCache(tmp_path / "cache")[1]
    assert len(item["text_states"]) == 2
    expected = FixedTextEncoder().encode(["tone 0", "clip 0", "tone 1", "clip 1"])
    torch.testing.assert_close(item["text_states"][0].float(), expected.states[2, :2])
    torch.testing.assert_close(item["text_states"][1].float(), expected.states[3, :2])


def test_cli_main(tmp_path, capsys):
    from siren_lightning.codec.checkpoint import save_codec

    manifest = make_manifest(tmp_path, LENGTHS[:2])
    c = codec()
    save_codec(c, tmp_path / "codec")
    argv = [
        "--manifest",
        str(manifest),
        "--codec",
        str(tmp_path / "codec"),
        "--out",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert tok.main(argv) == 0
    assert c.sha256() in capsys.readouterr().out
    assert len(CodeCache(tmp_path / "cache", expected_codec_sha256=c.sha256())) == 2


def test_cli_stores_minilm_caption_states(tmp_path):
    from siren_lightning.codec.checkpoint import save_codec
    from siren_lightning.text import TextEncoder

    manifest = make_manifest(tmp_path, LENGTHS[:2])
    save_codec(codec(), tmp_path / "codec")
    argv = ["--manifest", str(manifest), "--codec", str(tmp_path / "codec")]
    argv += ["--out", str(tmp_path / "cache"), "--no-progress", "--text-encoder", "minilm"]
    assert tok.main(argv) == 0
    item = CodeCache(tmp_path / "cache")[0]
    encoded = TextEncoder("minilm").encode(item["captions"][:1])
    n = int(encoded.mask[0].sum())
    assert item["text_states"][0].shape == (n, 384)
    torch.testing.assert_close(
        item["text_states"][0].float(), encoded.states[0, :n], atol=1e-3, rtol=1e-3
    )
