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
    assert index["num_clips"] == len(LENGTHS) and len(index["parts"]) == 3
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


def test_codes_of_reads_the_named_clips_and_names_the_missing(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    tok.tokenize_manifest(
        manifest, c, tmp_path / "cache", shard_size=3, batch_size=2, progress=False
    )
    cache = CodeCache(tmp_path / "cache")
    got = cache.codes_of(["c5", "c1", "c5"])
    assert list(got) == ["c5", "c1"]  # asked order, each once
    for clip, i in (("c5", 5), ("c1", 1)):
        assert got[clip].dtype == torch.long and torch.equal(got[clip], cache[i]["codes"].long())
    with pytest.raises(CodeCacheError, match=r"lacks 2 of the clips, e.g. \['c9', 'x'\]"):
        cache.codes_of(["c0", "x", "c9"])


def _same_cache(a, b):
    """Same index and same items."""
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

    real_write = tok.write_part
    calls = {"n": 0}

    def dying_write(root, k, clips, record):
        calls["n"] += 1
        if calls["n"] == 3:  # killed half-way through the third part
            (root / f".part-{k:05d}.tmp").mkdir()
            (root / f".part-{k:05d}.tmp" / "chunk-0-2.bin").write_bytes(b"half a chunk")
            (root / "chunk-0-2.bin").write_bytes(b"half a chunk")
            raise KeyboardInterrupt
        real_write(root, k, clips, record)

    monkeypatch.setattr(tok, "write_part", dying_write)
    with pytest.raises(KeyboardInterrupt):
        tok.tokenize_manifest(manifest, c, tmp_path / "resumed", shard_size=2, progress=False)
    with pytest.raises(CodeCacheError, match="index.json missing"):
        CodeCache(tmp_path / "resumed")  # an interrupted cache is never read
    written = []
    monkeypatch.setattr(
        tok, "write_part", lambda r, k, *a: (written.append(k), real_write(r, k, *a))
    )
    tok.tokenize_manifest(manifest, c, tmp_path / "resumed", shard_size=2, progress=False)
    assert written == [2, 3]  # finished parts kept
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


# ---------------------------------------------------------------------------------------------
# Resuming into an existing cache, bad and empty input (issue 22). These tests read the cache
# back through the DataModule, the way training does, so they hold whatever the cache format.


def _tone(path, n, freq=300.0):
    t = torch.arange(n) / SR
    sf.write(path, (0.3 * torch.sin(2 * math.pi * freq * t)).numpy(), SR)


def _write_manifest(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def read_back(cache):
    """Every clip the DataModule serves from `cache`: [(id, first caption, codes [r, T])]."""
    from siren_lightning.data.datamodule import SirenDataModule

    dm = SirenDataModule(
        mode="codes", val_cache=str(cache), eval_crop_seconds=2.0, eval_batch_size=1
    )
    dm.setup("validate")
    return [
        (b["ids"][0], b["captions"][0], b["codes"][0][:, b["mask"][0]]) for b in dm.val_dataloader()
    ]


def assert_same_clips(got, want):
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g[2], w[2]), g[0]


def test_retokenizing_after_a_manifest_edit_serves_no_stale_clip(tmp_path):
    """Remove a clip, recaption one, add one, then tokenize into the same folder: the cache
    serves exactly what a fresh run over the edited manifest serves."""
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    tok.tokenize_manifest(manifest, c, tmp_path / "cache", shard_size=3, progress=False)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    del entries[1]  # c1 removed: every later clip moves one place up
    entries[3]["captions"] = ["a new caption for c4"]
    _tone(tmp_path / "clip7.wav", 2500, 900.0)
    entries.append({"id": "c7", "audio": "clip7.wav", "caption": "tone 7"})
    _write_manifest(manifest, entries)

    tok.tokenize_manifest(manifest, c, tmp_path / "cache", shard_size=3, progress=False)
    got = read_back(tmp_path / "cache")
    assert [(i, cap) for i, cap, _ in got] == [
        ("c0", "tone 0"),
        ("c2", "tone 2"),
        ("c3", "tone 3"),
        ("c4", "a new caption for c4"),
        ("c5", "tone 5"),
        ("c6", "tone 6"),
        ("c7", "tone 7"),
    ]
    tok.tokenize_manifest(manifest, c, tmp_path / "fresh", shard_size=3, progress=False)
    assert_same_clips(got, read_back(tmp_path / "fresh"))


def test_retokenizing_with_another_batch_size_re_encodes(tmp_path):
    """Codes depend on the batch (padding reaches the last frames), so a cache finished at one
    batch size and resumed at another must hold the second run's codes."""
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    for name, batch in (("cache", 1), ("fresh1", 1), ("cache", 4), ("fresh4", 4)):
        tok.tokenize_manifest(manifest, c, tmp_path / name, batch_size=batch, progress=False)
    at_4, at_1 = read_back(tmp_path / "fresh4"), read_back(tmp_path / "fresh1")
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(at_4, at_1))  # else this proves nothing
    assert_same_clips(read_back(tmp_path / "cache"), at_4)


def test_resume_re_encodes_only_the_shards_whose_clips_changed(tmp_path, caplog):
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    tok.tokenize_manifest(manifest, c, tmp_path / "cache", shard_size=3, progress=False)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    entries[4]["captions"] = ["recaptioned"]  # the second shard holds clips 3, 4, 5
    _write_manifest(manifest, entries)
    encoded = []
    real_encode = c.encode
    c.encode = lambda audio: (encoded.append(audio.shape[0]), real_encode(audio))[1]
    tok.tokenize_manifest(manifest, c, tmp_path / "cache", shard_size=3, progress=False)
    assert sum(encoded) == 3
    assert "its clips in the manifest changed" in caplog.text


def test_a_shard_of_only_bad_clips_within_the_allowed_fraction(tmp_path):
    """All clips of the second shard are missing: tokenize skips them and keeps the rest."""
    manifest = make_manifest(tmp_path, LENGTHS, bad=(2, 3))
    c = codec()
    for _ in range(2):  # the second run resumes over the finished shards
        index = tok.tokenize_manifest(
            manifest, c, tmp_path / "cache", shard_size=2, max_skip_fraction=0.3, progress=False
        )
    assert index["skipped"] == ["c2", "c3"]
    assert [i for i, _, _ in read_back(tmp_path / "cache")] == ["c0", "c1", "c4", "c5", "c6"]


def test_a_manifest_of_only_bad_clips_is_an_error_at_every_step(tmp_path, capsys):
    """prepare jsonl writes no empty manifest, tokenize refuses an empty one, and the
    DataModule refuses an empty cache: each with one message, each with a non-zero exit."""
    from siren_lightning.codec.checkpoint import save_codec
    from siren_lightning.data import prepare
    from siren_lightning.data.datamodule import SirenDataModule

    manifest = make_manifest(tmp_path, LENGTHS[:3], bad=(0, 1, 2))
    out = tmp_path / "clean.jsonl"
    assert prepare.main(["jsonl", "--manifest", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "0 clips found, 3 missing" in err and "no usable clip" in err
    assert not out.exists()

    (tmp_path / "empty.jsonl").write_text("\n")
    save_codec(codec(), tmp_path / "codec")
    argv = ["--manifest", str(tmp_path / "empty.jsonl"), "--codec", str(tmp_path / "codec")]
    assert tok.main(argv + ["--out", str(tmp_path / "cache"), "--no-progress"]) == 2
    assert "empty.jsonl: the manifest holds no clips" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "index.json").exists()

    # All bad while max_skip_fraction allows it all is impossible: the fraction must be < 1.
    with pytest.raises(ValueError, match="max_skip_fraction"):
        tok.tokenize_manifest(manifest, codec(), tmp_path / "c", max_skip_fraction=1.0)

    # A cache without clips (no tokenize writes one) is refused before training.
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    siren = {"format": "siren-code-cache/2", "codec_sha256": "x", "n_codebooks": 12}
    siren |= {"codebook_size": 8, "ids": [], "frames": []}
    (empty / "index.json").write_text(json.dumps({"chunks": [], "config": {}, "siren": siren}))
    dm = SirenDataModule(mode="codes", train_cache=str(empty))
    with pytest.raises(CodeCacheError, match=f"{empty} \\(train_cache\\) holds no clips"):
        dm.setup("fit")


def test_corrupt_codes_name_the_clip_and_resume_repairs_them(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS)
    c = codec()
    tok.tokenize_manifest(manifest, c, tmp_path / "cache", shard_size=3, progress=False)
    chunk = tmp_path / "cache" / "chunk-0-1.bin"  # clips c3, c4, c5
    c4 = CodeCache(tmp_path / "cache")[4]["codes"]  # int16 [r, T], stored as is in the chunk
    data = chunk.read_bytes()
    at = data.index(c4.numpy().tobytes())
    poked = c4.clone()
    poked[5, 2] = 32639
    chunk.write_bytes(
        data[:at] + poked.numpy().tobytes() + data[at + len(poked.numpy().tobytes()) :]
    )
    with pytest.raises(CodeCacheError) as info:
        read_back(tmp_path / "cache")
    message = str(info.value)
    assert "'c4'" in message and "32639 (codebook 5, frame 2)" in message
    assert f"outside [0, {c.codebook_size})" in message

    tok.tokenize_manifest(manifest, c, tmp_path / "cache", shard_size=3, progress=False)
    tok.tokenize_manifest(manifest, c, tmp_path / "fresh", shard_size=3, progress=False)
    assert_same_clips(read_back(tmp_path / "cache"), read_back(tmp_path / "fresh"))


def test_a_truncated_chunk_names_its_file(tmp_path):
    manifest = make_manifest(tmp_path, LENGTHS)
    tok.tokenize_manifest(manifest, codec(), tmp_path / "cache", shard_size=3, progress=False)
    chunk = tmp_path / "cache" / "chunk-0-2.bin"
    chunk.write_bytes(chunk.read_bytes()[:-40])
    with pytest.raises(CodeCacheError, match=f"chunk {chunk} is missing or truncated"):
        read_back(tmp_path / "cache")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: must be a positive integer, got '0'"),
        ("--shard-size", "0", "argument --shard-size: must be a positive integer, got '0'"),
        ("--max-seconds", "0", "argument --max-seconds: must be a positive number"),
        ("--max-skip-fraction", "1", "argument --max-skip-fraction: must be in [0, 1)"),
    ],
)
def test_cli_refuses_settings_out_of_range_before_any_work(tmp_path, capsys, flag, value, message):
    manifest = make_manifest(tmp_path, LENGTHS[:2])
    argv = ["--manifest", str(manifest), "--codec", "unused", "--out", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as info:
        tok.main(argv + [flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"shard_size": 0}, {"max_seconds": 0.0}, {"min_seconds": -1.0}]
)
def test_tokenize_refuses_settings_out_of_range(tmp_path, kwargs):
    manifest = make_manifest(tmp_path, LENGTHS[:2])
    with pytest.raises(ValueError, match=f"tokenize: {next(iter(kwargs))} must be"):
        tok.tokenize_manifest(manifest, codec(), tmp_path / "cache", **kwargs)


def test_too_short_clips_are_skipped_and_counted(tmp_path, caplog):
    """A 10 ms clip is below MIN_SECONDS (0.1 s): one skip line, counted, not cached."""
    manifest = make_manifest(tmp_path, [160, *LENGTHS[:3]])
    index = tok.tokenize_manifest(
        manifest, codec(), tmp_path / "cache", max_skip_fraction=0.3, progress=False
    )
    assert index["skipped"] == ["c0"] and index["skip_reasons"]["c0"].startswith("too short")
    assert [i for i, _, _ in read_back(tmp_path / "cache")] == ["c1", "c2", "c3"]
    lines = [r.message for r in caplog.records if "c0" in r.message]
    assert len(lines) == 1 and "too short (0.01 s < 0.1 s)" in lines[0]


def test_long_clips_are_batched_with_fewer_clips_and_warned(tmp_path, caplog, monkeypatch):
    """A batch holds at most batch_size x LONG_CLIP_SECONDS of padded audio; longer clips warn."""
    monkeypatch.setattr(tok, "LONG_CLIP_SECONDS", 0.2)  # 3200 samples: budget 3 x 3200
    manifest = make_manifest(tmp_path, [*LENGTHS[:4], 12000])
    c = codec()
    shapes = []
    real_encode = c.encode
    c.encode = lambda audio: (shapes.append(tuple(audio.shape)), real_encode(audio))[1]
    tok.tokenize_manifest(manifest, c, tmp_path / "cache", batch_size=3, progress=False)
    # 12000 alone (> 9600); 4000 + 3301 (2 x 4000 <= 9600 < 3 x 4000); then 1800 + 1600.
    assert shapes == [(1, 1, 12000), (2, 1, 4000), (2, 1, 1800)]
    warned = [r.message for r in caplog.records if "encoded whole" in r.message]
    assert [w.split()[1] for w in warned] == ["c1", "c3", "c4"]  # the clips > 3200 samples
    assert "(with up to 1 more clips padded to it)" in warned[0] and "--max-seconds" in warned[0]
    assert "(alone)" in warned[2]
    frames = [code.shape[1] for _, _, code in read_back(tmp_path / "cache")]
    assert frames == [math.ceil(n / 320) for n in [*LENGTHS[:4], 12000]]  # all whole


def test_cache_files_get_the_mode_the_umask_gives(tmp_path):
    import os
    import stat

    manifest = make_manifest(tmp_path, LENGTHS[:2])
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            out = tmp_path / f"cache{umask:o}"
            tok.tokenize_manifest(manifest, codec(), out, progress=False)
        finally:
            os.umask(old)
        files = [p for p in out.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"index.json", "chunk-0-0.bin", "part-00000.json"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
