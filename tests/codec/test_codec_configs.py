from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from siren_lightning.stages.codec import CodecModule

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "experiments").glob("codec*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_codec_config_builds_its_module(config, tmp_path):
    args = [
        "--config",
        str(config),
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    codec_args = yaml.safe_load(config.read_text())["model"]["init_args"]["codec"]["init_args"]
    if "checkpoint" in codec_args:
        # A fine-tuning YAML starts from the output of an earlier run (absent in a clean clone):
        # build it from the committed codec of the same architecture instead.
        args.append(f"--model.init_args.codec.init_args.checkpoint={ROOT / 'assets/codec_tiny'}")
    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
    )
    assert isinstance(cli.model, CodecModule)
    codec = cli.model.codec
    assert (codec.sample_rate, codec.hop_length) == (16000, 320)
    assert (codec.n_codebooks, codec.codebook_size) == (12, 1024)
    assert codec.codebook_table().shape[:2] == (12, 1024)
