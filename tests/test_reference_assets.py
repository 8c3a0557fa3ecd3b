"""The committed reference LMs load from any folder, with the codec they were trained with,
and their README states the SHA-256 of the committed weights."""

import hashlib
import re
from pathlib import Path

import pytest
import torch

from siren_lightning.codec.checkpoint import load_codec
from siren_lightning.export import load_lm
from siren_lightning.generate import load_generation_stack

ASSETS = Path(__file__).resolve().parents[1] / "assets"
REFERENCES = sorted(p for p in ASSETS.glob("*_tiny_reference") if p.is_dir())


def assert_readme_states_the_weights_sha256(folder: Path) -> None:
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    stated = re.findall(r"SHA-256 `([0-9a-f]{64})`", (folder / "README.md").read_text())
    assert stated == [digest]


def test_both_references_are_committed():
    assert [p.name for p in REFERENCES] == ["delay_tiny_reference", "siren_tiny_reference"]


@pytest.mark.parametrize("folder", REFERENCES, ids=lambda p: p.name)
def test_reference_loads_from_another_folder_and_its_readme_is_true(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sidecar's codec path is relative to the export folder
    model, codec, _ = load_generation_stack(folder)
    assert model.config.duration_conditioning and not model.config.bias
    sidecar = (folder / "siren.json").read_text()
    assert codec.sha256() in sidecar  # the codec the model was trained with
    assert_readme_states_the_weights_sha256(folder)


def test_alignment_starts_from_the_reference_siren(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, meta = load_lm("siren_tiny_reference")  # by name, from another folder
    assert Path(meta["codec"]).resolve() == (ASSETS / "codec_tiny").resolve()
    assert model.config.num_groups == 6


@pytest.mark.parametrize(
    "yaml_name, asset",
    [("siren_tiny.yaml", "siren_tiny_reference"), ("baseline_tiny.yaml", "delay_tiny_reference")],
)
def test_a_tiny_yaml_naming_its_size_builds_the_reference_models_architecture(
    yaml_name, asset, monkeypatch
):
    """The YAMLs name a size on the codec (`from_codec`) and state only what differs; they build
    exactly the config the committed reference models were trained with (their sidecars)."""
    import json

    import yaml

    from siren_lightning.stages.chassis import network_from_spec

    root = ASSETS.parent
    monkeypatch.chdir(root)
    spec = yaml.safe_load((root / "experiments" / yaml_name).read_text())["model"]["init_args"]
    assert spec["network"]["class_path"].endswith(".from_codec")
    network = network_from_spec(spec["network"])
    recorded = json.loads((ASSETS / asset / "siren.json").read_text())
    assert type(network).__name__ == recorded["model_class"]
    # A field added since (e.g. control_dim) reads as its default in the recorded config.
    as_recorded = type(network.config).from_dict(recorded["model_config"])
    assert network.config.to_dict() == as_recorded.to_dict()
    assert set(recorded["model_config"]) <= set(network.config.to_dict())
    codec_table = load_codec(str(ASSETS / "codec_tiny")).codebook_table().float()
    assert torch.equal(network.codebook_table, codec_table)


def test_the_aligned_reference_changed_expert_0_alone_and_records_its_reward(tmp_path, monkeypatch):
    """Stage 2 aligns expert 0 only (anti-causal: experts 1-5 complete the frame unchanged), and
    the committed aligned model says which reward trained it (issue 17, reward provenance)."""
    monkeypatch.chdir(tmp_path)
    folder = ASSETS / "siren_tiny_aligned"
    aligned, meta = load_lm(folder)
    reference, _ = load_lm("siren_tiny_reference")
    before = reference.state_dict()
    changed = {
        ".".join(name.split(".")[:2])
        for name, value in aligned.state_dict().items()
        if not torch.equal(value, before[name])
    }
    assert changed == {"experts.0"}
    reward = meta["align"]["reward"]
    weights = ASSETS / "tiny-clap-reward" / "model.safetensors"
    assert reward["family"] == "tiny-clap" and reward["checkpoint"] == "tiny-clap-reward"
    assert reward["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["align"]["grader"]["clap"] == "tiny-clap-eval"
    assert_readme_states_the_weights_sha256(folder)


@pytest.mark.parametrize(
    "name",
    [
        "siren_tiny_clean",
        "siren_tiny_clean_hn",
        "delay_tiny_clean",
        "siren_tiny_planned",
        "delay_tiny_planned",
    ],
)
def test_the_clean_references_load_with_the_clean_codec_and_their_own_sampling(
    name, tmp_path, monkeypatch
):
    """The models trained on SynthCaps clean (issue 23, session 9) load from another folder with
    the codec that spells silence with one code, and carry the temperature chosen on val that
    their README states."""
    from siren_lightning.generation_config import read_generation_config

    monkeypatch.chdir(tmp_path)
    folder = ASSETS / name
    model, codec, _ = load_generation_stack(folder)
    assert codec.sha256() == load_codec(str(ASSETS / "codec_tiny_clean")).sha256()
    assert codec.sha256() in (folder / "siren.json").read_text()
    assert model.config.duration_conditioning
    assert_readme_states_the_weights_sha256(folder)
    config = read_generation_config(folder)
    assert config is not None and "val" in config["chosen_on"]
    temperature = config["sampling"]["temperature"]
    assert f"temperature {temperature:g}" in (folder / "README.md").read_text()


@pytest.mark.parametrize("name", ["siren_tiny_planned", "delay_tiny_planned"])
def test_the_planned_lms_generate_under_the_committed_planners_curves(name, tmp_path, monkeypatch):
    """The planned Siren and its delay-LM control read one loudness value a frame, and the
    committed planner (README-stated SHA-256) draws it from the LM's own text encoder at the
    clip's length."""
    from siren_lightning.data.loudness import pad_curves
    from siren_lightning.generate import planned_controls
    from siren_lightning.generation_config import model_plan
    from siren_lightning.models.sampling import encode_captions, generate

    monkeypatch.chdir(tmp_path)
    model, codec, text = load_generation_stack(ASSETS / name)
    assert model.config.control_dim == 1
    planner = ASSETS / "planner_tiny_clean" / "planner.ckpt"
    # Its generation.json names this planner and the control guidance chosen on val (README).
    plan = model_plan(ASSETS / name)
    assert plan is not None and plan.planner.resolve() == planner.resolve()
    assert (plan.control_scale, plan.control_guidance) == (2.0, "reversed")
    digest = hashlib.sha256(planner.read_bytes()).hexdigest()
    assert f"SHA-256 `{digest}`" in (planner.parent / "README.md").read_text()
    captions = ["A low tone sounds three times, fading out", "A high whistle, steady"]
    curves = planned_controls(planner, text, captions, [0.1, 0.06], codec)
    assert [tuple(c.shape) for c in curves] == [(5, 1), (3, 1)]  # 50 frames a second
    assert all(((c >= 0) & (c <= 1)).all() for c in curves)
    control = pad_curves(curves, 5)  # [2, 5, 1], the shorter clip zero-padded
    codes = generate(
        model, num_frames=5, control=control, temperature=0.0, **encode_captions(text, captions)
    )
    assert codes.shape == (2, 12, 5)
