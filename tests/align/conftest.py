"""Builders shared by the alignment tests: a tiny SirenLM, a stand-in codec and text encoder."""

from __future__ import annotations

import pytest
import torch
from siren_testing import HashTextEncoder, TableCodec, make_model
from torch.utils.data import DataLoader

CAPTIONS = ["a loud low hum", "two quiet beeps", "a chirp rising", "noise fading out"]


def _caption_loader(captions=CAPTIONS, batch_size=2) -> DataLoader:
    items = [{"captions": c, "ids": f"clip{i}"} for i, c in enumerate(captions)]

    def collate(batch):
        return {"captions": [b["captions"] for b in batch], "ids": [b["ids"] for b in batch]}

    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate)


@pytest.fixture
def tiny_parts():
    """(network, codec, text encoder) on the CPU, random-init, small enough for many steps."""
    network = make_model(seed=0)
    codec = TableCodec(network.codebook_table.clone())
    torch.manual_seed(1)
    codec.synth.reset_parameters()
    with torch.no_grad():  # keep tanh out of saturation so that loudness can still rise
        codec.synth.weight.mul_(0.3)
    return network, codec, HashTextEncoder(network.config.text_dim)


@pytest.fixture
def caption_loader():
    """Factory of caption-batch loaders (the batches of `SirenDataModule` in captions mode)."""
    return _caption_loader
