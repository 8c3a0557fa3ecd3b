"""`siren adherence` (score_model) and the in-loop `TextFollowingCallback` agree with the
metrics computed directly on what they generated, and skip data without attributes."""

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from siren_testing import TableCodec, make_model, make_planned_model, make_planner_checkpoint

from siren_lightning import text_following
from siren_lightning.callbacks.text_following import TextFollowingCallback
from siren_lightning.data.manifest import Clip, write_manifest
from siren_lightning.metrics.adherence import adherence, attribute_gaps, text_gap
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text import TextEncoder
from siren_lightning.text_following import format_report, main, score_model

ATTRS = [
    {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"},
    {"source": "chord", "pitch": "high", "count": "twice", "envelope": "fade_in"},
    {"source": "noise", "pitch": "medium", "count": "continuous", "envelope": "fade_out"},
]


def _stack():
    torch.manual_seed(0)
    model = make_model(text_dim=384, duration_conditioning=True).eval()
    return model, TableCodec(model.codebook_table.clone()), TextEncoder("minilm")


def _clips(tmp_path, attributes=True):
    clips = [
        Clip(
            id=f"c{i}",
            audio=tmp_path / f"c{i}.wav",
            captions=[f"caption {i}"],
            duration=0.05 + 0.02 * i,
            attributes=ATTRS[i] if attributes else {},
        )
        for i in range(3)
    ]
    for c in clips:
        sf.write(str(c.audio), np.zeros(int(c.duration * 1600), np.float32), 1600)
    return clips


def test_score_model_reports_what_its_generations_measure(tmp_path):
    model, codec, text = _stack()
    clips = _clips(tmp_path)
    codes = {c.id: torch.randint(16, (6, 4 + i)) for i, c in enumerate(clips)}
    report = score_model(model, text, codec, clips, tmp_path / "out", [0, 1], codes=codes)
    for k, seed in enumerate((0, 1)):
        folder = tmp_path / "out" / f"seed{seed}"
        rows = [json.loads(x) for x in (folder / "adherence.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ["c0", "c1", "c2"]  # shortest first
        records = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines()]
        audios = [sf.read(r["path"], dtype="float32")[0] for r in records]
        assert [len(a) for a in audios] == [round(c.duration * 1600) for c in clips]
        direct = adherence(audios, ATTRS, codec.sample_rate)
        for key in ("pitch", "count", "envelope", "mean", "all"):
            assert report["adherence"][key]["per_seed"][k] == direct[key]
    pitch = report["adherence"]["pitch"]["per_seed"]
    assert report["adherence"]["pitch"]["spread"] == statistics.stdev(pitch)
    gap = text_gap(model, text, [codes[c.id] for c in clips], [c.captions[0] for c in clips], ATTRS)
    assert report["text_gap"] == gap and len(gap["gap"]) == 6
    assert "text gap" in format_report(report) and "(chance 0.25)" in format_report(report)
    per_attribute = attribute_gaps(model, text, [codes[c.id] for c in clips], ATTRS)
    assert report["attribute_gaps"] == per_attribute and per_attribute["seed"] == 0
    assert_gap_table(format_report(report), per_attribute)
    without = score_model(model, text, codec, clips, tmp_path / "out", [0])
    assert without["attribute_gaps"] is None and "attribute gaps" not in format_report(without)


def assert_gap_table(printed, per_attribute):
    """The printed attribute-gap table: a row per swap with codebook 0's gap and the mean."""
    lines = printed.splitlines()
    head = lines.index("attribute gaps (nats, CE with one attribute's words swapped - own wording)")
    assert lines[head + 1].split() == ["swapped", "cb0", "mean"]
    for i, row in enumerate(("pitch", "count", "envelope", "empty")):
        cells = per_attribute[row]
        want = [row, f"{cells['gap'][0]:+.3f}", f"{cells['mean']:+.3f}"]
        assert lines[head + 2 + i].split() == want


def test_tool_prints_and_stores_the_attribute_gaps(tmp_path, monkeypatch, capsys):
    model, codec, text = _stack()
    clips = _clips(tmp_path)
    write_manifest(tmp_path / "m.jsonl", clips)
    codes = {c.id: torch.randint(16, (6, 4 + i)) for i, c in enumerate(clips)}
    monkeypatch.setattr(
        text_following, "load_generation_stack", lambda spec, device: (model, codec, text)
    )

    class Cache:  # the split's code cache, as `CodeCache(root).codes_of(ids)` reads it
        def __init__(self, root):
            assert root == str(tmp_path / "codes")

        def codes_of(self, ids):
            return {i: codes[i] for i in ids}

    monkeypatch.setattr("siren_lightning.data.code_cache.CodeCache", Cache)
    (tmp_path / "model").mkdir()
    argv = ["--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.jsonl")]
    argv += ["--codes", str(tmp_path / "codes"), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    stored = json.loads((tmp_path / "o" / "report.json").read_text())["attribute_gaps"]
    assert stored == attribute_gaps(model, text, [codes[c.id] for c in clips], ATTRS)
    assert_gap_table(printed, stored)


def test_tool_skips_data_without_attributes_and_refuses_bad_limits(tmp_path, capsys):
    write_manifest(tmp_path / "m.jsonl", _clips(tmp_path, attributes=False))
    argv = ["--model", str(tmp_path / "none"), "--manifest", str(tmp_path / "m.jsonl")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "o"), "--limit", "0"]) == 2
    assert main([*argv, "--out", str(tmp_path / "o"), "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().out


def test_callback_logs_the_metrics_of_its_own_generations(tmp_path):
    model, codec, text = _stack()
    module = PretrainModule(model, text_encoder=text, codec=codec, caption_dropout=0.0)
    clips = _clips(tmp_path)
    write_manifest(tmp_path / "val.jsonl", clips)
    codes = [torch.randint(16, (6, 5 + i)) for i in range(3)]
    items = [{"id": c.id, "captions": c.captions, "codes": codes[i]} for i, c in enumerate(clips)]
    logged = {}
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.update(m))
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        global_step=7,
        loggers=[logger],
        callback_metrics={},
        datamodule=SimpleNamespace(
            hparams={"val_manifest": str(tmp_path / "val.jsonl")},
            datasets={"val": SimpleNamespace(items=items)},
        ),
    )
    callback = TextFollowingCallback(num_clips=3, batch_size=2)
    callback.on_validation_epoch_end(trainer, module)
    gap = text_gap(model, text, codes, [c.captions[0] for c in clips], ATTRS)
    assert logged["val/text_gap_cb00"] == pytest.approx(gap["gap"][0], abs=1e-6)
    assert logged["val/text_gap"] == pytest.approx(sum(gap["gap"]) / 6, abs=1e-6)
    per_attribute = attribute_gaps(model, text, codes, ATTRS, rng_seed=0, batch_size=2)
    for row in ("pitch", "count", "envelope", "empty"):
        assert logged[f"val/attribute_gap_{row}_cb00"] == per_attribute[row]["gap"][0]
        assert logged[f"val/attribute_gap_{row}_mean"] == per_attribute[row]["mean"]
    assert len([k for k in logged if k.startswith("val/attribute_gap")]) == 8
    assert set(logged) >= {f"val/adherence_{k}" for k in ("pitch", "count", "envelope", "all")}
    assert 0.0 <= logged["val/adherence_mean"] <= 1.0
    # Without attributes: nothing logged, and it stays off.
    write_manifest(tmp_path / "val.jsonl", _clips(tmp_path, attributes=False))
    logged.clear()
    quiet = TextFollowingCallback(num_clips=3)
    quiet.on_validation_epoch_end(trainer, module)
    assert logged == {} and quiet._disabled
    assert Path(tmp_path / "val.jsonl").is_file()


def test_tool_generates_under_the_given_control_curves(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = make_planned_model(text_dim=384)
    codec, text = TableCodec(model.codebook_table.clone()), TextEncoder("minilm")
    clips = _clips(tmp_path)
    write_manifest(tmp_path / "m.jsonl", clips)
    curves = {
        c.id: torch.rand(8, generator=torch.Generator().manual_seed(i)) for i, c in enumerate(clips)
    }
    torch.save(curves, tmp_path / "plan.pt")
    monkeypatch.setattr(
        text_following, "load_generation_stack", lambda spec, device: (model, codec, text)
    )
    argv = ["--model", str(tmp_path), "--manifest", str(tmp_path / "m.jsonl")]
    assert main([*argv, "--control", str(tmp_path / "plan.pt"), "--out", str(tmp_path / "o")]) == 0
    score_model(model, text, codec, clips, tmp_path / "same", [0], controls=curves)
    flipped = {k: 1 - v for k, v in curves.items()}
    score_model(model, text, codec, clips, tmp_path / "other", [0], controls=flipped)

    def wav(folder):
        return [sf.read(str(tmp_path / folder / "seed0" / f"{c.id}.wav"))[0] for c in clips]

    assert all(np.array_equal(a, b) for a, b in zip(wav("o"), wav("same"), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(wav("o"), wav("other"), strict=True))
    torch.save({"c0": curves["c0"]}, tmp_path / "part.pt")
    assert main([*argv, "--control", str(tmp_path / "part.pt"), "--out", str(tmp_path / "p")]) == 1
    assert "has no curve for 2 clips" in capsys.readouterr().out
    # Control guidance against each curve's steady copy: the tool and score_model draw the same
    # audio, which differs from plain guidance; the report says which copy and weight.
    steady = [*argv, "--control", str(tmp_path / "plan.pt"), "--control-guidance", "steady"]
    assert main([*steady, "--control-scale", "2", "--out", str(tmp_path / "g")]) == 0
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["control_guidance"] == "steady" and report["control_scale"] == 2.0
    score_model(
        model,
        text,
        codec,
        clips,
        tmp_path / "g2",
        [0],
        controls=curves,
        control_guidance="steady",
        control_scale=2.0,
    )
    assert all(np.array_equal(a, b) for a, b in zip(wav("g"), wav("g2"), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(wav("g"), wav("o"), strict=True))
    assert main([*argv, "--control-scale", "2", "--out", str(tmp_path / "n")]) == 2
    assert "--control-scale needs --control" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["own", "callback", "module"])
def test_callback_generates_and_scores_a_planned_lm_under_each_clips_curve(
    tmp_path, monkeypatch, source
):
    # Without a planner: the clips' own curves (the control cache); with one, the callback's or
    # the module's `plan`: the planner's for each caption and length. Generation gets them (and
    # their guidance copies at the scale given), and the text gap reads them under both captions.
    from siren_lightning.data.loudness import guidance_curve, pad_curves
    from siren_lightning.stages.planner import CaptionPlan

    torch.manual_seed(0)
    model = make_planned_model(text_dim=384)
    codec, text = TableCodec(model.codebook_table.clone()), TextEncoder("minilm")
    clips = _clips(tmp_path)
    write_manifest(tmp_path / "val.jsonl", clips)
    codes = [torch.randint(16, (6, 5 + i)) for i in range(3)]
    own = {c.id: torch.rand(8 + i) for i, c in enumerate(clips)}  # longer than the codes
    (tmp_path / "loud").mkdir()
    torch.save(own, tmp_path / "loud" / "val.pt")
    with_planner = source != "own"
    planner = None
    if with_planner:
        planner = make_planner_checkpoint(tmp_path / "planner.ckpt", text_dim=384)
    plan = {"planner": str(tmp_path / "planner.ckpt"), "control_scale": 1.5}
    module = PretrainModule(
        model,
        text_encoder=text,
        codec=codec,
        caption_dropout=0.0,
        control_cache=str(tmp_path / "loud"),
        plan=plan if source == "module" else None,
    )
    module.setup("fit")
    items = [{"id": c.id, "captions": c.captions, "codes": codes[i]} for i, c in enumerate(clips)]
    logged = {}
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        global_step=7,
        loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.update(m))],
        callback_metrics={},
        datamodule=SimpleNamespace(
            hparams={"val_manifest": str(tmp_path / "val.jsonl")},
            datasets={"val": SimpleNamespace(items=items)},
        ),
    )
    seen = []
    sample = module.sample_codes

    def spy(captions, frames, seed=0, **kwargs):
        seen.append(kwargs)
        return sample(captions, frames, seed=seed, **kwargs)

    monkeypatch.setattr(module, "sample_codes", spy)
    given_here = {} if source == "module" else {"control_scale": 1.5}
    if source == "callback":
        given_here["planner"] = plan["planner"]
    callback = TextFollowingCallback(num_clips=3, batch_size=3, **given_here)
    callback.on_validation_epoch_end(trainer, module)
    # The module's plan is read from the module (one planner loaded), not loaded again.
    assert (callback._plan is None) == (source != "callback")
    frames = [5, 6, 7]
    if with_planner:
        plan = CaptionPlan(planner, text)
        curves = plan.curves([c.captions[0] for c in clips], frames)
    else:
        curves = [own[c.id][:n, None] for c, n in zip(clips, frames, strict=True)]
    (given,) = seen
    assert torch.equal(given["control"], pad_curves(curves, 7))
    copies = [guidance_curve(c, "reversed") for c in curves]
    assert torch.equal(given["control_contrast"], pad_curves(copies, 7))
    assert given["control_scale"] == 1.5
    captions = [c.captions[0] for c in clips]
    gap = text_gap(model, text, codes, captions, ATTRS, batch_size=3, controls=curves)
    assert logged["val/text_gap_cb00"] == pytest.approx(gap["gap"][0], abs=1e-6)
    flat = text_gap(
        model, text, codes, captions, ATTRS, batch_size=3, controls=[c * 0 for c in curves]
    )
    assert flat["gap"][0] != pytest.approx(gap["gap"][0], abs=1e-6)  # the curves are read
