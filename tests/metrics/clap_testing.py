"""A tiny random-init LAION CLAP behind `metrics.backbones.LaionClap` (tests only: no weights)."""

import torch
from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

from siren_lightning.metrics.backbones import LaionClap
from siren_lightning.text import minilm_path


def tiny_laion_clap(seed: int = 0) -> LaionClap:
    """A 16-d CLAP with MiniLM's tokenizer (offline), named `laion-clap:tiny-random`."""
    torch.manual_seed(seed)
    config = ClapConfig(
        text_config=dict(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        audio_config=dict(
            depths=[1, 1],
            num_attention_heads=[2, 2],
            patch_embeds_hidden_size=16,
            hidden_size=32,
            enable_fusion=False,
        ),
        projection_dim=16,
    )
    return LaionClap(
        checkpoint="tiny-random",
        model=ClapModel(config),
        tokenizer=AutoTokenizer.from_pretrained(minilm_path()),
        feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"),
    )
