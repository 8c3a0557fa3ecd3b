"""Builders shared by the alignment tests: a tiny SirenLM, a stand-in codec and text encoder."""

from __future__ import annotations

import zlib

import pytest
import torch
from siren_testing import TableCodec, make_model
from torch import nn
from torch.utils.data import DataLoader

from siren_lightning.text.encoder import TextStates


class HashTextEncoder(nn.Module):
    """Deterministic stand-in for `TextEncoder`: one fixed random vector per word (CRC32)."""

    def __init__(self, dim: int = 12, vocab: int = 97) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.register_buffer("table", torch.randn(vocab, dim, generator=g))
        self.dim, self.vocab = dim, vocab
        self.backend, self.name_or_path, self.max_length = "hash", None, 16

    def encode(self, captions: list[str]) -> TextStates:
        words = [c.lower().split() or ["<empty>"] for c in captions]
        length = max(len(w) for w in words)
        ids = torch.zeros(len(captions), length, dtype=torch.long)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, ws in enumerate(words):
            ids[i, : len(ws)] = torch.tensor([zlib.crc32(w.encode()) % self.vocab for w in ws])
            mask[i, : len(ws)] = True
        states = self.table[ids] * mask[..., None]  # [B, L, Dt]
        pooled = states.sum(1) / mask.sum(1, keepdim=True)
        return TextStates(states, mask, pooled)


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
