"""Backbone wrappers (random-initialised, no downloads) and weight resolution."""

from __future__ import annotations

import hashlib

import pytest
import torch
from clap_testing import tiny_laion_clap

from siren_lightning.metrics.backbones import PannsCnn14
from siren_lightning.metrics.weights import (
    PANNS_CNN14_16K,
    WeightsError,
    WeightSpec,
    download_weights,
    resolve_weights,
)


@pytest.mark.slow
def test_panns_outputs_and_weight_loading(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = PannsCnn14(pretrained=False)
    audio = torch.randn(2, 32000) * 0.1
    out = model(audio)
    assert out.embedding.shape == (2, 2048) and out.logits.shape == (2, 527)
    assert (out.embedding >= 0).all()  # ReLU(fc1)
    # The package's sigmoid output is sigmoid(our logits).
    torch.testing.assert_close(model.model(audio)["clipwise_output"], out.logits.sigmoid())
    assert not model.training and not model.train().training
    # A checkpoint in the official layout ({"model": state_dict}) loads from a local folder.
    path = tmp_path / PANNS_CNN14_16K.filename
    torch.save({"model": model.model.state_dict()}, path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Not the official file: its MD5 (all Zenodo publishes) differs, so it is refused ...
    with pytest.raises(WeightsError, match="MD5 .* differs from 362fc5ff18f1d6ad2f6d464b45893f2c"):
        PannsCnn14(weights=tmp_path)
    # ... unless the user pins its SHA-256, which is then what the results record.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = PannsCnn14(weights=tmp_path, expected_sha256=digest)
    assert loaded.weights_sha256 == digest
    torch.testing.assert_close(loaded(audio).logits, out.logits)
    # 32 kHz input is resampled to 16 kHz by embed().
    assert model.embed(torch.randn(1, 64000) * 0.1, 32000).shape == (1, 2048)


def test_resolve_weights_checks_hashes_and_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIREN_WEIGHTS_DIR", str(tmp_path / "cache"))
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    spec = WeightSpec("toy", "w.pth", "https://example.invalid/w.pth", sha256=digest)
    assert resolve_weights(spec, f) == (f, digest)
    assert resolve_weights(spec, tmp_path)[0] == f  # a folder holding the file
    bad = WeightSpec("toy", "w.pth", "https://example.invalid/w.pth", sha256_prefix="ffffffff")
    with pytest.raises(WeightsError, match="does not start with ffffffff"):
        resolve_weights(bad, f)
    with pytest.raises(WeightsError, match="does not match the pinned"):
        resolve_weights(spec, f, expected_sha256="0" * 64)
    with pytest.raises(WeightsError, match=r"Cnn14_16k_mAP=0.438.pth not found.*HF_HUB_OFFLINE=0"):
        resolve_weights(PANNS_CNN14_16K)
    with pytest.raises(ValueError, match="unknown weights"):
        download_weights(["nope"])


def test_laion_clap_wrapper_on_a_tiny_random_model():
    clap = tiny_laion_clap()
    audio = clap.embed(torch.randn(2, 16000) * 0.1, 16000)  # resampled to 48 kHz
    text = clap.embed_text(["a dog barks", "rain on a roof"])
    assert audio.shape == text.shape == (2, 16)
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(2))
    assert clap.name == "laion-clap:tiny-random" and clap.sample_rate == 48000
