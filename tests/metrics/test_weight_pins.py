"""Downloaded backbone weights are checked against the host's published checksum."""

from __future__ import annotations

import hashlib

import pytest

from siren_lightning.metrics import weights
from siren_lightning.metrics.weights import PANNS_CNN14_16K, WeightsError, resolve_weights


def test_a_wrong_file_in_the_weights_cache_is_refused_with_the_published_md5(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIREN_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / PANNS_CNN14_16K.filename).write_bytes(b"half a download")
    with pytest.raises(WeightsError, match="is not the published 362fc5ff18f1d6ad2f6d464b45893f2c"):
        resolve_weights(PANNS_CNN14_16K)
    # a file passed explicitly (e.g. random weights in tests) is the user's: its SHA-256 is kept
    path, sha = resolve_weights(PANNS_CNN14_16K, tmp_path / PANNS_CNN14_16K.filename)
    assert sha == hashlib.sha256(b"half a download").hexdigest()


def test_a_bad_download_is_deleted_and_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SIREN_WEIGHTS_DIR", str(tmp_path))
    import torch.hub

    def fake_download(url, dst, hash_prefix=None):
        with open(dst, "wb") as f:
            f.write(b"<html>rate limited</html>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(WeightsError, match="MD5 .* is not the published"):
        resolve_weights(PANNS_CNN14_16K)
    assert not (weights.weights_dir() / PANNS_CNN14_16K.filename).exists()
