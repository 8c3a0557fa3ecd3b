"""The stages sit in `siren_lightning.stages`; the old import paths still name the same classes,
because run configs and the `_class_path` LightningCLI saves in checkpoints name them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from siren_lightning import cli

OLD_PATHS = {
    "siren_lightning.pretrain.PretrainModule": "siren_lightning.stages.pretrain.PretrainModule",
    "siren_lightning.align.module.AlignModule": "siren_lightning.stages.align.AlignModule",
    "siren_lightning.codec.module.CodecModule": "siren_lightning.stages.codec.CodecModule",
    "siren_lightning.metrics.tiny_clap_module.TinyCLAPModule": (
        "siren_lightning.stages.tiny_clap.TinyCLAPModule"
    ),
}


def _resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_stage_path_names_the_stage(old):
    assert _resolve(old) is _resolve(OLD_PATHS[old])


def test_an_old_run_config_with_the_old_class_path_still_parses(tmp_path, capsys):
    yaml = Path(__file__).resolve().parents[1] / "experiments" / "siren_tiny.yaml"
    old = tmp_path / "config.yaml"
    old.write_text(
        yaml.read_text().replace(
            "siren_lightning.stages.pretrain.PretrainModule",
            "siren_lightning.pretrain.PretrainModule",
        )
    )
    assert "siren_lightning.pretrain.PretrainModule" in old.read_text()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(old), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: siren_lightning.pretrain.PretrainModule" in capsys.readouterr().out
