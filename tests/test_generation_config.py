"""A model's own sampling defaults (`generation.json`): the tools sample with them where no flag
is given, a flag overrides them, a bad file fails with one message naming it, `siren
set-sampling` writes and removes the file, and an aligned export carries it over."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from siren_testing import TableCodec, make_model

from siren_lightning import cli, export, generate, text_following
from siren_lightning.data.manifest import Clip, write_manifest
from siren_lightning.generation_config import (
    GENERATION_FILE,
    model_plan,
    model_sampling,
    read_generation_config,
)
from siren_lightning.models.sampling import DEFAULT_SAMPLING
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text import TextEncoder


class RecordingCodec(TableCodec):
    """The stand-in codec, keeping every batch of codes it decodes."""

    def __init__(self, table):
        super().__init__(table)
        self.decoded = []

    def decode(self, codes):
        self.decoded.append(codes.clone())
        return super().decode(codes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export folder, its stage checkpoint, codec): a tiny random Siren, exported untrained."""
    tmp = tmp_path_factory.mktemp("gencfg")
    network = make_model(text_dim=384)
    codec = RecordingCodec(network.codebook_table.clone())
    module = PretrainModule(network, text_encoder=TextEncoder("minilm"), codec=codec)
    blob = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(blob)
    torch.save(blob, tmp / "run.ckpt")
    return export.export_checkpoint(tmp / "run.ckpt", tmp / "model"), tmp / "run.ckpt", codec


def test_generate_samples_with_the_models_file_and_a_flag_overrides_it(
    exported, tmp_path, monkeypatch, capsys
):
    folder, _, codec = exported
    gen = folder / GENERATION_FILE

    def run(name, *flags):
        codec.decoded.clear()
        monkeypatch.setattr(generate, "_load_codec", lambda spec: codec)
        argv = ["--model", str(folder), "--captions", "a high beep", "a low hum"]
        argv += ["--out", str(tmp_path / name), "--codec", "stand-in", "--seconds", "0.1"]
        assert generate.main([*argv, "--seed", "5", *flags]) == 0
        (codes,) = codec.decoded
        lines = (tmp_path / name / "generations.jsonl").read_text().splitlines()
        return codes, json.loads(lines[0]), capsys.readouterr().out

    default, default_record, printed = run("default")
    assert "sampling: temperature 1 (default), top_k 250 (default)" in printed
    greedy, _, _ = run("greedy", "--temperature", "0")
    assert not torch.equal(greedy, default)  # sampling at temperature 1 is not greedy
    gen.write_text(json.dumps({"sampling": {"temperature": 0}, "chosen_on": "a test"}))
    try:
        from_file, record, printed = run("from_file")
        assert torch.equal(from_file, greedy)  # the file's temperature 0: exactly greedy
        assert record["temperature"] == 0 and record["top_k"] == 250
        assert "temperature 0 (model generation.json), top_k 250 (default)" in printed
        overridden, record, printed = run("flag", "--temperature", "1")
        assert torch.equal(overridden, default) and record == {
            **default_record,
            "path": record["path"],
        }
        assert "temperature 1 (given)" in printed
    finally:
        gen.unlink()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"sampling": {"temperature": -1}},
            "temperature must be >= 0 (0 samples greedily), got -1",
        ),
        ({"sampling": {"top_k": 2.5}}, "top_k must be an integer >= 0 (0: off), got 2.5"),
        ({"sampling": {"temp": 0.7}}, "unknown key(s) ['sampling.temp']"),
        ({"sampling": {}, "note": "x"}, "unknown key(s) ['note']"),
        ({"temperature": 0.7}, 'must be {"sampling": {...}, "chosen_on": "..."}'),
        ({"sampling": {"top_p": None}}, "a sampling value is null"),
        ({"sampling": {}, "chosen_on": ["val"]}, "chosen_on must be text, got ['val']"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_file_fails_with_one_message_naming_it(tmp_path, capsys, content, message):
    (tmp_path / GENERATION_FILE).write_text(
        content if isinstance(content, str) else json.dumps(content)
    )
    # the folder holds no model: an error about the file proves it is read before any loading
    argv = ["generate", "--model", str(tmp_path), "--captions", "a", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"siren generate: error: {tmp_path / GENERATION_FILE}: ")
    assert message in first
    assert not (tmp_path / "o").exists()


def test_set_sampling_round_trips_and_clears(exported, tmp_path, capsys):
    folder, _, _ = exported
    path = folder / GENERATION_FILE
    chosen = "val split, 100 clips x 2 seeds: siren adherence ... --temperature 0.7"
    argv = ["set-sampling", str(folder), "--temperature", "0.7", "--top-k", "50"]
    try:
        assert cli.main([*argv, "--chosen-on", chosen]) == 0
        written = {"sampling": {"temperature": 0.7, "top_k": 50}, "chosen_on": chosen}
        assert json.loads(path.read_text()) == written == read_generation_config(folder)
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
        resolved = model_sampling(folder, "test", {"top_k": 8})
        assert resolved.values == {**DEFAULT_SAMPLING, "temperature": 0.7, "top_k": 8}
        assert resolved.sources == {
            "temperature": "model generation.json",
            "top_k": "given",
            "top_p": "default",
            "cfg_scale": "default",
        }
        assert capsys.readouterr().out.splitlines()[-1] == (
            "sampling: temperature 0.7 (model generation.json), top_k 50 (model generation.json)"
            ", top_p 1 (default), cfg_scale 3 (default)"
        )
        # a second write replaces the file: it holds what was chosen together, nothing else
        assert cli.main(["set-sampling", str(folder), "--cfg-scale", "2", "--chosen-on", "b"]) == 0
        assert read_generation_config(folder) == {"sampling": {"cfg_scale": 2.0}, "chosen_on": "b"}
        # refused: no provenance, a bad value (the file is left as it was), not an export folder
        assert cli.main([*argv]) == 1
        assert "--chosen-on is needed" in capsys.readouterr().err
        assert cli.main(["set-sampling", str(folder), "--top-p", "0", "--chosen-on", "c"]) == 1
        assert f"{path}: top_p must be in (0, 1]" in capsys.readouterr().err
        assert read_generation_config(folder)["chosen_on"] == "b"
        assert cli.main(["set-sampling", str(tmp_path), "--temperature", "1", "--chosen-on", "d"])
        assert "not a folder written by `siren export`" in capsys.readouterr().err
        assert not (tmp_path / GENERATION_FILE).exists()
        assert cli.main(["set-sampling", str(folder), "--clear"]) == 0
        assert not path.exists() and read_generation_config(folder) is None
        assert "temperature 1 (default)" in capsys.readouterr().out
    finally:
        path.unlink(missing_ok=True)


def test_only_an_aligned_export_carries_over_its_starting_models_file(exported, tmp_path):
    folder, ckpt, _ = exported
    assert not (folder / GENERATION_FILE).exists()  # a plain export writes none
    blob = torch.load(ckpt, weights_only=True)
    blob["siren"]["align"] = {"init_from": str(folder), "strategy": "grpo"}
    torch.save(blob, tmp_path / "aligned.ckpt")
    (folder / GENERATION_FILE).write_text(
        json.dumps({"sampling": {"temperature": 0.7}, "chosen_on": "val, 100 clips"})
    )
    try:
        plain = export.export_checkpoint(ckpt, tmp_path / "plain")
        aligned = export.export_checkpoint(tmp_path / "aligned.ckpt", tmp_path / "aligned")
    finally:
        (folder / GENERATION_FILE).unlink()
    assert not (plain / GENERATION_FILE).exists()
    assert read_generation_config(aligned) == {
        "sampling": {"temperature": 0.7},
        "chosen_on": f"for {folder}, the model this alignment started from: val, 100 clips",
    }
    # started from a model without one (or from a checkpoint): none
    blob["siren"]["align"]["init_from"] = str(ckpt)
    torch.save(blob, tmp_path / "aligned2.ckpt")
    again = export.export_checkpoint(tmp_path / "aligned2.ckpt", tmp_path / "aligned2")
    assert not (again / GENERATION_FILE).exists()


def test_adherence_samples_with_the_models_file_and_records_where_from(
    tmp_path, monkeypatch, capsys
):
    model = make_model(text_dim=384, duration_conditioning=True).eval()
    stack = (model, TableCodec(model.codebook_table.clone()), TextEncoder("minilm"))
    monkeypatch.setattr(text_following, "load_generation_stack", lambda spec, device: stack)
    stated = {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"}
    clips = [Clip("c0", tmp_path / "c0.wav", ["a low tone"], duration=0.05, attributes=stated)]
    sf.write(str(clips[0].audio), np.zeros(80, np.float32), 1600)
    write_manifest(tmp_path / "m.jsonl", clips)
    (tmp_path / "model").mkdir()  # the stack is stubbed: the folder only holds generation.json
    (tmp_path / "model" / GENERATION_FILE).write_text(json.dumps({"sampling": {"top_p": 0.9}}))
    argv = ["--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.jsonl")]
    assert text_following.main([*argv, "--out", str(tmp_path / "o"), "--top-k", "8"]) == 0
    assert (
        "sampling: temperature 1 (default), top_k 8 (given), top_p 0.9 (model generation.json)"
        in (capsys.readouterr().out)
    )
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["sampling"] == {**DEFAULT_SAMPLING, "top_k": 8, "top_p": 0.9}
    assert report["sampling_from"]["top_p"] == "model generation.json"
    record = json.loads((tmp_path / "o" / "seed0" / "generations.jsonl").read_text())
    assert (record["top_k"], record["top_p"]) == (8, 0.9)


def test_align_report_grades_both_models_at_one_setting(tmp_path, capsys):
    for name, temperature in (("before", 0.7), ("after", None)):
        (tmp_path / name).mkdir()
        if temperature is not None:
            sampling = {"sampling": {"temperature": temperature}}
            (tmp_path / name / GENERATION_FILE).write_text(json.dumps(sampling))
    argv = ["align-report", "--before", str(tmp_path / "before"), "--after"]
    argv += [str(tmp_path / "after"), "--manifest", "m", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 1
    assert "sample differently (temperature 0.7 vs 1, from their generation.json)" in (
        capsys.readouterr().err
    )
    # a flag settles it: the tool goes on to load the models (none here)
    assert cli.main([*argv, "--temperature", "0.7"]) == 1
    assert "before has no config.json: not a folder written by" in capsys.readouterr().out


def test_an_aligned_export_names_its_plans_planner_from_its_own_folder(exported, tmp_path):
    import os

    folder, ckpt, _ = exported
    plan = {"planner": "../plans/p.ckpt", "control_scale": 2.0, "control_guidance": "steady"}
    (folder / GENERATION_FILE).write_text(
        json.dumps({"sampling": {"temperature": 0.2}, "chosen_on": "val", "plan": plan})
    )
    blob = torch.load(ckpt, weights_only=True)
    blob["siren"]["align"] = {"init_from": str(folder), "strategy": "grpo"}
    torch.save(blob, tmp_path / "aligned.ckpt")
    blob["siren"]["align"]["planner"] = str(tmp_path / "other.ckpt")  # what the run used
    torch.save(blob, tmp_path / "aligned_other.ckpt")
    try:
        out = export.export_checkpoint(tmp_path / "aligned.ckpt", tmp_path / "a" / "b")
        other = export.export_checkpoint(tmp_path / "aligned_other.ckpt", tmp_path / "c")
    finally:
        (folder / GENERATION_FILE).unlink()
    carried = read_generation_config(out)["plan"]
    assert {k: v for k, v in carried.items() if k != "planner"} == {
        "control_scale": 2.0,
        "control_guidance": "steady",
    }
    here = os.path.normpath((out / carried["planner"]).resolve())
    assert here == os.path.normpath((folder / plan["planner"]).resolve())
    assert model_plan(out).planner.resolve() == (folder.parent / "plans" / "p.ckpt").resolve()
    assert model_plan(other).planner.resolve() == (tmp_path / "other.ckpt").resolve()
