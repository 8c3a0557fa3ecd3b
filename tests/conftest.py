"""Shared fixtures: small generated data, never downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from siren_lightning.data.synthcaps import SynthCapsConfig, generate

# Tiny models are dominated by per-op overhead; on a 2-core machine a second intra-op thread
# makes them several times slower.
torch.set_num_threads(1)

SMALL = SynthCapsConfig(train=48, val=12, test=16, min_seconds=1.0, max_seconds=2.0, seed=3)


@pytest.fixture(scope="session")
def synthcaps_small(tmp_path_factory) -> dict[str, Path]:
    """A small SynthCaps set (1-2 s clips) shared by the whole session: {split: manifest}."""
    return generate(tmp_path_factory.mktemp("synthcaps"), SMALL, workers=1)
