"""Tiny SirenLM builders shared by the model, pretraining and export tests."""

import torch

from siren_lightning.models.siren import SirenConfig, SirenLM

TINY = dict(
    num_codebooks=6,
    codebook_size=16,
    latent_dim=8,
    group=2,
    width=32,
    num_heads=4,
    temporal_layers=2,
    decoder_layers=1,
    text_dim=12,
    mlp_hidden=64,
    dropout=0.0,
    max_frames=64,
)


def make_model(seed: int = 0, **overrides) -> SirenLM:
    torch.manual_seed(seed)
    config = SirenConfig(**{**TINY, **overrides})
    table = torch.randn(config.num_codebooks, config.codebook_size, config.latent_dim)
    return SirenLM(config, table).eval()


def make_text(batch: int, tokens: int = 5, dim: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, tokens, dim, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, tokens - 2 :] = False  # a shorter caption in the batch
    return states, mask
