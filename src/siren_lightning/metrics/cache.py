"""Per-file feature cache keyed by what determines the features, never by folder or file name.

Key = (backbone name, weights SHA-256, backbone sample rate, input rule, file content SHA-256).
Entries are ``torch.save``d dicts of tensors, read back with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from siren_lightning.metrics.weights import sha256_file


def feature_key(
    backbone: str, weights_sha256: str | None, sample_rate: int, input_rule: str, file_sha256: str
) -> str:
    """Hex digest naming one cache entry."""
    fields = {
        "backbone": backbone,
        "weights_sha256": weights_sha256 or "random-init",
        "sample_rate": sample_rate,
        "input_rule": input_rule,
        "file_sha256": file_sha256,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class FeatureCache:
    """Features of audio files on disk; ``folder=None`` disables caching.

    Random-initialised backbones (no weights hash) are never cached: two random inits share
    the key "random-init" but not their features.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    def get_or_compute(
        self,
        path: str | Path,
        backbone: str,
        weights_sha256: str | None,
        sample_rate: int,
        input_rule: str,
        compute: Callable[[], dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        if self.folder is None or weights_sha256 is None:
            self.misses += 1
            return compute()
        key = feature_key(backbone, weights_sha256, sample_rate, input_rule, sha256_file(path))
        entry = self.folder / key[:2] / f"{key}.pt"
        if entry.is_file():
            self.hits += 1
            return torch.load(entry, map_location="cpu", weights_only=True)
        self.misses += 1
        features = compute()
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in features.items()}, tmp)
        tmp.replace(entry)
        return features
