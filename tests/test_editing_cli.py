"""`siren generate --prompt-audio / --infill / --window-seconds` (issue 18, items 1-3) on the
reference tiny Siren and delay LM with their codec, and the checks that come before any model
loads."""

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from siren_testing import TableCodec, make_model

from siren_lightning import generate
from siren_lightning.generate import generate_audio
from siren_lightning.text import TextEncoder

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# The planned one plans from its generation.json (its committed planner, control guidance 2).
MODELS = ["siren_tiny_reference", "delay_tiny_reference", "siren_tiny_planned"]


def _tone(path: Path, seconds: float, sr: int, hz: float = 440.0) -> Path:
    t = torch.arange(round(seconds * sr)) / sr
    sf.write(path, (0.5 * torch.sin(2 * torch.pi * hz * t)).numpy(), sr)
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


def test_a_continuation_is_its_prompt_then_the_generated_frames(tmp_path):
    # A codec that decodes each frame alone: the first P frames of audio are the prompt's.
    model = make_model(text_dim=384)
    codec = TableCodec(model.codebook_table.clone())
    prompt = torch.randint(16, (1, 6, 4), generator=torch.Generator().manual_seed(0))
    records = generate_audio(
        model,
        TextEncoder("minilm"),
        codec,
        ["a high beep", "a low hum"],
        tmp_path,
        seconds=0.1,  # 10 frames of 16 samples
        prompt_codes=prompt,
    )
    expected = codec.decode(prompt)[0, 0].detach().numpy()
    for record in records:
        audio, sr = sf.read(record["path"], dtype="float32")
        assert audio.shape == (160,) and record["prompt_frames"] == 4
        assert abs(audio[:64] - expected).max() <= 1 / 32767  # PCM_16 rounding
    with pytest.raises(ValueError, match="not shorter than the output"):
        generate_audio(
            model, TextEncoder("minilm"), codec, ["a"], tmp_path, seconds=0.04, prompt_codes=prompt
        )


@pytest.mark.parametrize("name", MODELS)
def test_generate_continues_a_prompt_file_at_another_sample_rate(name, tmp_path):
    prompt = _tone(tmp_path / "prompt.wav", 1.0, 22050)  # resampled to the codec's 16 kHz
    out = tmp_path / "out"
    argv = ["--model", str(ASSETS / name), "--captions", "a steady tone", "--out", str(out)]
    argv += ["--prompt-audio", str(prompt), "--prompt-seconds", "0.5", "--seconds", "1.2"]
    assert generate.main(argv) == 0
    (record,) = _records(out)
    assert record["prompt_frames"] == 25 and record["frames"] == 60
    audio, sr = sf.read(record["path"])
    assert sr == 16000 and audio.shape == (19200,)


@pytest.mark.parametrize("name", MODELS)
def test_generate_infills_a_span_and_keeps_the_best_scored_candidate(name, tmp_path):
    clip = _tone(tmp_path / "clip.wav", 1.5, 16000)
    out = tmp_path / "out"
    argv = ["--model", str(ASSETS / name), "--captions", "a steady tone", "--out", str(out)]
    argv += ["--infill", str(clip), "--span", "0.5", "1.0", "--candidates", "3"]
    assert generate.main(argv) == 0
    (record,) = _records(out)
    assert record["span_frames"] == [25, 50] and len(record["scores"]) == 3
    assert record["chosen"] == max(range(3), key=record["scores"].__getitem__)
    assert all(math.isfinite(s) and s < 0 for s in record["scores"])
    audio, _ = sf.read(record["path"])
    assert audio.shape == (24000,)  # as long as the clip
    planned = name.endswith("planned")
    assert (record["control"] or "").endswith("planner_tiny_clean/planner.ckpt") == planned
    assert record["control_scale"] == (2.0 if planned else 0.0)
    bad = argv[:-5] + ["--span", "1.0", "2.0"]  # past the clip's end
    assert generate.main(bad) == 2


def test_an_infill_reads_the_clips_own_loudness_and_the_planned_curve_over_the_span(tmp_path):
    from siren_testing import HashTextEncoder, make_planner_checkpoint

    from siren_lightning.data.loudness import frame_loudness
    from siren_lightning.generate import infill_curve
    from siren_lightning.stages.planner import CaptionPlan, plan_curves

    codec = TableCodec(torch.zeros(6, 16, 8))  # 1,600 Hz, 16 samples a frame
    clip = tmp_path / "clip.wav"
    t = torch.arange(160) / 1600  # 10 frames: a tone for 4, silence, a quieter tone
    wave = torch.cat([0.5 * torch.ones(64), torch.zeros(48), 0.05 * torch.ones(48)])
    sf.write(clip, (wave * torch.sin(2 * torch.pi * 200 * t)).numpy(), 1600)
    text = HashTextEncoder(12)
    planner = make_planner_checkpoint(tmp_path / "p.ckpt", text_dim=12, spread=0.5)
    plan = CaptionPlan.load(tmp_path / "p.ckpt", text)
    curve = infill_curve(plan, "a beep", clip, codec, 10, 1, 3)
    audio, _ = sf.read(clip, dtype="float32")
    by_hand = torch.from_numpy(frame_loudness(audio, 16))  # the clip's own, frames 0-9
    by_hand[1:3] = plan_curves(planner, text, ["a beep"], [10])[0][1:3]  # the plan's, over the span
    assert curve.shape == (10, 1)
    assert torch.equal(curve[:, 0], by_hand)
    assert by_hand[0] > by_hand[8] > by_hand[5] == 0  # loud, quiet, silent: the clip is read
    assert (by_hand[1:3] != torch.from_numpy(frame_loudness(audio, 16))[1:3]).all()  # planned


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--span", "1", "2"], "--infill CLIP and --span A B go together"),
        (["--infill", "x.wav"], "--infill CLIP and --span A B go together"),
        (["--infill", "x.wav", "--span", "2", "1"], "0 <= A < B"),
        (["--prompt-seconds", "1"], "needs --prompt-audio"),
        (["--prompt-audio", "x.wav", "--prompt-seconds", "3", "--seconds", "2"], "shorter"),
        (["--window-seconds", "2", "--context-seconds", "2"], "--context-seconds"),
        (["--infill", "x.wav", "--span", "0", "1", "--prompt-audio", "y.wav"], "exclude"),
    ],
)
def test_editing_flags_that_do_not_fit_fail_before_the_model_loads(extra, message):
    argv = ["--model", "/nonexistent", "--captions", "a", "--out", "/tmp/unused", *extra]
    with pytest.raises(ValueError, match=message):
        generate.main(argv)


def test_a_missing_prompt_file_is_one_message(tmp_path, capsys):
    argv = ["--model", str(ASSETS / MODELS[0]), "--captions", "a", "--out", str(tmp_path)]
    assert generate.main([*argv, "--prompt-audio", str(tmp_path / "none.wav")]) == 2
    assert "missing file" in capsys.readouterr().out
