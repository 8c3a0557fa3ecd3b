import json
from pathlib import Path

import numpy as np
import pytest

from siren_lightning.data import prepare
from siren_lightning.data.audio import write_audio
from siren_lightning.data.manifest import (
    Clip,
    ManifestError,
    import_audiocaps,
    import_wavcaps,
    read_manifest,
    write_manifest,
)


def _tone(path, seconds=0.5, sr=16_000):
    t = np.arange(int(sr * seconds)) / sr
    write_audio(path, 0.3 * np.sin(2 * np.pi * 300 * t), sr)


def test_manifest_round_trip_keeps_paths_relative(tmp_path):
    _tone(tmp_path / "audio" / "a.wav")
    clips = [
        Clip("a", tmp_path / "audio" / "a.wav", ["one", "two"], 0.5, "train", {"source": "tone"})
    ]
    write_manifest(tmp_path / "m" / "x.jsonl", clips)
    line = json.loads((tmp_path / "m" / "x.jsonl").read_text())
    assert line["audio"] == "../audio/a.wav"
    back = read_manifest(tmp_path / "m" / "x.jsonl")
    assert back == clips


def test_single_caption_key_is_accepted(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": "x", "audio": "x.wav", "caption": "a dog"}\n\n')
    (clip,) = read_manifest(tmp_path / "m.jsonl")
    assert clip.captions == ["a dog"] and clip.audio == (tmp_path / "x.wav").resolve()


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        ('{"audio": "a.wav", "caption": "c"}', "missing required key 'id'"),
        ('{"id": "b", "caption": "c"}', "missing required key 'audio'"),
        ('{"id": "b", "audio": "b.wav"}', "missing 'caption' or 'captions'"),
        ('{"id": "b", "audio": "b.wav", "captions": []}', "non-empty list"),
        ('{"id": "b", "audio": "b.wav", "caption": "c", "duration": -1}', "duration"),
        ('{"id": "a", "audio": "b.wav", "caption": "c"}', "duplicate id 'a' (first on line 1)"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "audio": "a.wav", "caption": "fine"}\n' + bad_line + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert f"{path}:2:" in str(info.value)
    assert message in str(info.value)


AUDIOCAPS_TEST_CSV = """audiocap_id,youtube_id,start_time,caption
101,yt_a,30,A dog barks
102,yt_a,30,A dog is barking loudly
103,yt_b,0,Rain falls on a roof
104,yt_c,10,A car passes by
"""


def test_audiocaps_groups_captions_and_reports_missing(tmp_path, capsys):
    (tmp_path / "test.csv").write_text(AUDIOCAPS_TEST_CSV)
    audio = tmp_path / "audio"
    _tone(audio / "Yyt_a.wav")
    _tone(audio / "Yyt_b.wav")
    (audio / "Yyt_c.wav").write_bytes(b"not a wav file")  # corrupt header
    clips = import_audiocaps(tmp_path / "test.csv", audio, audio_pattern="Y{youtube_id}.wav")
    assert [c.id for c in clips] == ["yt_a", "yt_b", "yt_c"]
    assert clips[0].captions == ["A dog barks", "A dog is barking loudly"]

    out = tmp_path / "m" / "audiocaps_test.jsonl"
    code = prepare.main(
        ["audiocaps", "--csv", str(tmp_path / "test.csv"), "--audio-dir", str(audio),
         "--audio-pattern", "Y{youtube_id}.wav", "--out", str(out), "--split", "test"]
    )  # fmt: skip
    assert code == 0
    kept = read_manifest(out)
    assert [c.id for c in kept] == ["yt_a", "yt_b"]
    assert kept[0].duration == pytest.approx(0.5) and kept[0].split == "test"
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert (report["found"], report["missing"], report["unreadable"]) == (2, 0, 1)
    assert report["unreadable_ids"] == ["yt_c"]
    assert "2 clips found, 0 missing, 1 unreadable" in capsys.readouterr().out


def test_audiocaps_ids_by_audiocap_id_and_bad_columns(tmp_path):
    (tmp_path / "train.csv").write_text(AUDIOCAPS_TEST_CSV)
    clips = import_audiocaps(
        tmp_path / "train.csv", tmp_path, audio_pattern="{audiocap_id}.wav", id_field="audiocap_id"
    )
    assert [c.id for c in clips] == ["101", "102", "103", "104"]
    (tmp_path / "bad.csv").write_text("youtube_id,caption\nx,y\n")
    with pytest.raises(ManifestError, match=r"bad.csv:1: missing columns"):
        import_audiocaps(tmp_path / "bad.csv", tmp_path)


def test_wavcaps_subsets_with_and_without_paths(tmp_path, capsys):
    audio = tmp_path / "flac"
    _tone(audio / "Y0001.flac")
    _tone(audio / "bbc_7.flac")
    sl = {"data": [
        {"id": "Y0001.wav", "caption": "Thunder rumbles", "audio": "/mnt/x/Y0001.flac", "duration": 10.0},
        {"id": "Y0002.wav", "caption": "Birds chirp", "wav_path": "/mnt/x/Y0002.flac"},
    ]}  # fmt: skip
    bbc = {"data": [{"id": "bbc_7", "caption": "A door slams"}]}
    (tmp_path / "sl.json").write_text(json.dumps(sl))
    (tmp_path / "bbc.json").write_text(json.dumps(bbc))
    clips = import_wavcaps(tmp_path / "bbc.json", audio)
    assert clips[0].audio == audio.resolve() / "bbc_7.flac"

    out = tmp_path / "wavcaps.jsonl"
    args = ["wavcaps", "--json", str(tmp_path / "sl.json"), str(tmp_path / "bbc.json")]
    assert prepare.main(args + ["--audio-dir", str(audio), "--out", str(out)]) == 0
    kept = read_manifest(out)
    assert [(c.id, c.duration) for c in kept] == [
        ("Y0001.wav", 10.0),
        ("bbc_7", pytest.approx(0.5)),
    ]
    assert "2 clips found, 1 missing, 0 unreadable" in capsys.readouterr().out


def test_wavcaps_malformed_json(tmp_path):
    (tmp_path / "x.json").write_text('{"data": [{"caption": "no id"}]}')
    with pytest.raises(ManifestError, match=r"data\[0\]"):
        import_wavcaps(tmp_path / "x.json", tmp_path)
    (tmp_path / "y.json").write_text('{"data": [\n{"id": 1,}]}')
    with pytest.raises(ManifestError, match=r"y.json:2: invalid JSON"):
        import_wavcaps(tmp_path / "y.json", tmp_path)


def test_prepare_jsonl_reports_a_malformed_manifest(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"id": "a"}\n')
    assert (
        prepare.main(
            ["jsonl", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.jsonl")]
        )
        == 2
    )
    assert "m.jsonl:1: missing required key 'audio'" in capsys.readouterr().err


def test_a_manifest_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    good = '{"id": "a", "audio": "a.wav", "caption": "fine"}\n'
    path.write_bytes(
        good.encode() + '{"id": "b", "audio": "b.wav", "caption": "caf\u00e9"}\n'.encode("latin-1")
    )
    with pytest.raises(ManifestError, match=rf"{path}:2: not UTF-8 \(byte 0xe9\)"):
        read_manifest(path)
    csv_path = tmp_path / "test.csv"
    csv_path.write_bytes(AUDIOCAPS_TEST_CSV.replace("barks", "b\u00e4rks").encode("latin-1"))
    with pytest.raises(ManifestError, match=rf"{csv_path}:2: not UTF-8"):
        import_audiocaps(csv_path, tmp_path)
    # A byte-order mark (as some editors write) is not an error.
    path.write_bytes(b"\xef\xbb\xbf" + good.encode())
    assert [c.id for c in read_manifest(path)] == ["a"]


def test_an_empty_manifest_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="m.jsonl: the manifest holds no clips"):
        read_manifest(tmp_path / "m.jsonl")


def test_prepare_jsonl_leaves_out_silent_nan_and_too_short_clips(tmp_path, capsys):
    import soundfile as sf

    _tone(tmp_path / "good.wav")
    write_audio(tmp_path / "silent.wav", np.zeros(8000), 16_000)
    nan = 0.3 * np.sin(np.arange(8000) / 5.0).astype(np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    _tone(tmp_path / "short.wav", seconds=0.01)
    ids = ["good", "silent", "nan", "short"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": i, "audio": f"{i}.wav", "caption": i}) + "\n" for i in ids)
    )
    out = tmp_path / "clean.jsonl"
    assert prepare.main(["jsonl", "--manifest", str(manifest), "--out", str(out)]) == 0
    assert [c.id for c in read_manifest(out)] == ["good"]
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["unusable_ids"] == {
        "silent": "silent",
        "nan": "contains NaN or inf samples",
        "short": "too short (0.01 s < 0.1 s)",
    }
    assert "1 clips found, 0 missing, 0 unreadable, 3 unusable" in capsys.readouterr().out
    # --min-seconds moves the bar: at 0.005 s the 10 ms clip is kept.
    argv = ["jsonl", "--manifest", str(manifest), "--out", str(out), "--min-seconds", "0.005"]
    assert prepare.main(argv) == 0
    assert [c.id for c in read_manifest(out)] == ["good", "short"]


def test_prepare_where_keeps_the_clips_whose_attributes_match():
    from siren_lightning.data.prepare import select_clips

    def clip(i, **attributes):
        return Clip(id=f"c{i}", audio=Path(f"/x/{i}.wav"), captions=["a"], attributes=attributes)

    clips = [
        clip(0, source="tone", pitch="high"),
        clip(1, source="noise", pitch="high"),
        clip(2, source="tone", pitch="low"),
        clip(3),
    ]
    assert [c.id for c in select_clips(clips, ["source=tone"])] == ["c0", "c2"]
    assert [c.id for c in select_clips(clips, ["source=tone", "pitch=low"])] == ["c2"]
    assert select_clips(clips, []) == clips
    with pytest.raises(ManifestError, match="KEY=VALUE"):
        select_clips(clips, ["source"])


def test_prepare_synthcaps_background_flag_sets_the_noise_floor(tmp_path):
    """`--background 0` writes digital silence before the first event; the default floor does
    not, and the two sets differ only there (same clips, same seed)."""
    import soundfile as sf

    def first_clip(background: list[str]) -> np.ndarray:
        out = tmp_path / ("clean" if background else "noisy")
        argv = ["synthcaps", "--out", str(out), "--train", "1", "--val", "0", "--test", "0"]
        assert prepare.main(argv + ["--workers", "1", *background]) == 0
        row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
        assert json.loads((out / "config.json").read_text())["background"] == (
            0.0 if background else 0.003
        )
        return sf.read(out / row["audio"], dtype="float32")[0]

    clean, noisy = first_clip(["--background", "0"]), first_clip([])
    head = slice(0, 800)  # the first 50 ms: every SynthCaps event starts later (5%+ of >= 1 s)
    assert np.all(clean[head] == 0.0)
    assert np.sqrt(np.mean(noisy[head] ** 2)) > 0.0005  # 0.003 x a peak of 0.3-0.8
