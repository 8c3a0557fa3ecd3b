"""The committed reference LMs load from any folder, with the codec they were trained with,
and their README states the SHA-256 of the committed weights."""

import hashlib
import re
from pathlib import Path

import pytest

from siren_lightning.export import load_lm
from siren_lightning.generate import load_generation_stack

ASSETS = Path(__file__).resolve().parents[1] / "assets"
REFERENCES = sorted(p for p in ASSETS.glob("*_tiny_reference") if p.is_dir())


def test_both_references_are_committed():
    assert [p.name for p in REFERENCES] == ["delay_tiny_reference", "siren_tiny_reference"]


@pytest.mark.parametrize("folder", REFERENCES, ids=lambda p: p.name)
def test_reference_loads_from_another_folder_and_its_readme_is_true(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sidecar's codec path is relative to the export folder
    model, codec, _ = load_generation_stack(folder)
    assert model.config.duration_conditioning and not model.config.bias
    sidecar = (folder / "siren.json").read_text()
    assert codec.sha256() in sidecar  # the codec the model was trained with
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    stated = re.findall(r"SHA-256 `([0-9a-f]{64})`", (folder / "README.md").read_text())
    assert stated == [digest]


def test_alignment_starts_from_the_reference_siren(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, meta = load_lm("siren_tiny_reference")  # by name, from another folder
    assert Path(meta["codec"]).resolve() == (ASSETS / "codec_tiny").resolve()
    assert model.config.num_groups == 6
