"""Bad settings fail at construction (or in setup, before the first step) with one clear message
each: model sizes, data crops, optimisation ranges, a codec that is not there, a code cache
written by another codec or for another r/K, an unknown preset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
from siren_testing import TableCodec, make_model

from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec
from siren_lightning.data.datamodule import SirenDataModule
from siren_lightning.metrics.protocol import get_preset
from siren_lightning.models.delay_lm import DelayLMConfig
from siren_lightning.models.siren import SirenConfig
from siren_lightning.stages.codec import CodecModule
from siren_lightning.stages.pretrain import PretrainModule

BAD_CONFIGS = [
    (lambda: SirenConfig(num_codebooks=7, group=1), "num_codebooks must be even, got 7"),
    (lambda: SirenConfig(num_codebooks=6, group=4), "group 4 must divide num_codebooks 6"),
    (lambda: SirenConfig(num_heads=0), "num_heads must be >= 1, got 0"),
    (lambda: SirenConfig(width=100, num_heads=16), "num_heads 16 must divide width 100"),
    (lambda: SirenConfig(decoder_layers=0), "decoder_layers must be >= 1, got 0"),
    (lambda: SirenConfig(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (lambda: SirenConfig.from_name("2b"), "unknown size '2b'"),
    (lambda: DelayLMConfig(num_layers=0), "DelayLMConfig: num_layers must be >= 1, got 0"),
    (
        lambda: SirenDataModule(mode="codes", crop_seconds=0.01),
        r"crop_seconds=0.01 s is not a whole number of codec frames \(hop 320 at 16000 Hz",
    ),
    (lambda: SirenDataModule(batch_size=0), "batch_size must be positive, got 0"),
    (lambda: SirenDataModule(mode="tokens"), "mode must be one of"),
    (
        lambda: PretrainModule(
            make_model(), optimizer={"init_args": {"lr": -1.0}}, caption_dropout=0
        ),
        "PretrainModule: optimizer: Invalid learning rate: -1.0",
    ),
    (
        lambda: PretrainModule(
            make_model(), optimizer={"init_args": {"betas": (0.9, 1.5)}}, caption_dropout=0
        ),
        "PretrainModule: optimizer: Invalid beta parameter at index 1: 1.5",
    ),
    (
        lambda: PretrainModule(make_model(), warmup_steps=20, total_steps=10, caption_dropout=0),
        r"total_steps \(10\) must exceed warmup_steps \(20\)",
    ),
    (lambda: PretrainModule(make_model(), caption_dropout=1.0), "caption_dropout must be in"),
    (
        lambda: PretrainModule(make_model(), train_groups=[5], caption_dropout=0),
        r"train_groups \[5\] must be a non-empty subset of 0..2",
    ),
    (
        lambda: CodecModule(SpectralRVQCodec(SpectralCodecConfig.tiny()), lr_gamma=0.0),
        r"lr_gamma must be in \(0, 1\]",
    ),
    (
        lambda: CodecModule(SpectralRVQCodec(SpectralCodecConfig.tiny()), mel_weight=-1.0),
        "mel_weight must be >= 0",
    ),
    (lambda: get_preset("audioldm"), "unknown evaluation preset 'audioldm'"),
]


@pytest.mark.parametrize("build, message", BAD_CONFIGS)
def test_bad_setting_is_one_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_codec_path_that_does_not_exist_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"codec '.*nowhere' does not exist"):
        PretrainModule(make_model(), codec=str(tmp_path / "nowhere"), caption_dropout=0)


def _tiny_training():
    path = Path(__file__).with_name("tiny_training.py")
    spec = importlib.util.spec_from_file_location("tiny_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _HashedCodec(TableCodec):
    def sha256(self):
        return "a-different-codec"


class _CountSteps(L.Callback):
    steps = 0

    def on_train_batch_start(self, *args):
        _CountSteps.steps += 1


@pytest.mark.parametrize(
    "codec_kind, message",
    [
        ("other", r"code cache .* was written by codec test-codec\.\.\., but this run's codec"),
        ("shape", r"code cache .* holds r=6 codebooks of K=16, the LM was built for r=8, K=16"),
    ],
)
def test_a_cache_of_another_codec_fails_before_the_first_step(tmp_path, codec_kind, message):
    tiny = _tiny_training()
    tiny.make_cache(tmp_path / "cache")
    network = make_model(num_codebooks=8) if codec_kind == "shape" else make_model()
    module = PretrainModule(
        network, codec=_HashedCodec(network.codebook_table.clone()), caption_dropout=0
    )
    data = SirenDataModule(
        mode="codes",
        train_cache=str(tmp_path / "cache"),
        sample_rate=tiny.SAMPLE_RATE,
        hop_length=tiny.HOP,
        crop_seconds=0.12,
        batch_size=4,
    )
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[_CountSteps()],
    )
    _CountSteps.steps = 0
    with pytest.raises(ValueError, match=message):
        trainer.fit(module, datamodule=data)
    assert _CountSteps.steps == 0
