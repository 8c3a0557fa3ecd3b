from pathlib import Path

import pytest
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from siren_lightning.codec.module import CodecModule

CONFIGS = sorted((Path(__file__).parents[2] / "experiments").glob("codec*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_codec_config_builds_its_module(config, tmp_path):
    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=[
            "--config",
            str(config),
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
    )
    assert isinstance(cli.model, CodecModule)
    codec = cli.model.codec
    assert (codec.sample_rate, codec.hop_length) == (16000, 320)
    assert (codec.n_codebooks, codec.codebook_size) == (12, 1024)
    assert codec.codebook_table().shape[:2] == (12, 1024)
