"""Tiny DelayPatternLM builders shared by the baseline model, sampling and pretraining tests."""

import torch

from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM

TINY_DELAY = dict(
    num_codebooks=6,
    codebook_size=16,
    latent_dim=8,
    width=32,
    num_heads=4,
    num_layers=2,
    text_dim=12,
    mlp_hidden=64,
    dropout=0.0,
    max_frames=64,
)


def make_delay_model(seed: int = 0, **overrides) -> DelayPatternLM:
    torch.manual_seed(seed)
    config = DelayLMConfig(**{**TINY_DELAY, **overrides})
    table = torch.randn(config.num_codebooks, config.codebook_size, config.latent_dim)
    return DelayPatternLM(config, table).eval()
