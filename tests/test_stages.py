"""The stages sit in `siren_lightning.stages`; the old import paths still name the same classes,
because run configs and the `_class_path` LightningCLI saves in checkpoints name them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from siren_testing import make_model

from siren_lightning import cli
from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec
from siren_lightning.metrics.tiny_clap import TinyCLAP
from siren_lightning.stages.chassis import decay_groups, optimizer_factory
from siren_lightning.stages.codec import CodecModule
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.stages.tiny_clap import TinyCLAPModule

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


# The optimizer comes from YAML in every stage; its defaults are the recipes each stage had
# hard-coded (DESIGN.md 1: the paper's AdamW; 4: DAC's; the tiny CLAP's AdamW 1e-3, wd 0.01).


def _pretrain():
    return PretrainModule(make_model(), caption_dropout=0.0), "network"


def _codec():
    return CodecModule(SpectralRVQCodec(SpectralCodecConfig.tiny())), "codec"


def _tiny_clap():
    return TinyCLAPModule(TinyCLAP(width=16, layers=1, heads=2, embed_dim=8, n_mels=16)), "clap"


@pytest.mark.parametrize(
    "build, lr, betas, decay, groups",
    [
        (_pretrain, 3e-4, (0.9, 0.95), 0.05, 2),
        (_codec, 1e-4, (0.8, 0.99), 0.01, 1),
        (_tiny_clap, 1e-3, (0.9, 0.999), 0.01, 2),
    ],
    ids=["pretrain", "codec", "tiny_clap"],
)
def test_a_stage_without_an_optimizer_builds_its_old_recipe(build, lr, betas, decay, groups):
    module, attr = build()
    module._trainer = _Fake()  # the schedules read the trainer's estimate of the steps
    out = module.configure_optimizers()
    opt = out["optimizer"] if isinstance(out, dict) else out[0][0]
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == lr and opt.defaults["betas"] == betas
    assert len(opt.param_groups) == groups
    assert opt.param_groups[0]["weight_decay"] == decay
    if groups == 2:  # weight decay on the 2+-dimensional weights only
        assert opt.param_groups[1]["weight_decay"] == 0.0
        assert all(p.dim() >= 2 for p in opt.param_groups[0]["params"])
        assert all(p.dim() < 2 for p in opt.param_groups[1]["params"])
    trained = [p for p in getattr(module, attr).parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trained)


class _Fake:
    estimated_stepping_batches = 100


def test_a_yaml_optimizer_reaches_the_stage(capsys):
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    yaml = Path(__file__).resolve().parents[1] / "experiments" / "siren_tiny.yaml"
    base = ["--config", str(yaml), "--trainer.logger", "false", "--trainer.callbacks", "[]"]
    base += ["--model.init_args.text_encoder", "null", "--model.init_args.codec", "null"]
    base += ["--model.init_args.caption_dropout", "0"]

    def built(*args: str) -> torch.optim.Optimizer:
        made = LightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            args=[*base, *args],
        ).model
        return made.make_optimizer(decay_groups(made.network.parameters()))

    # siren_tiny.yaml states lr 2e-3 alone: betas and weight decay stay the stage's.
    opt = built()
    assert type(opt) is torch.optim.AdamW
    assert (opt.defaults["lr"], opt.defaults["betas"]) == (2e-3, (0.9, 0.95))
    assert opt.param_groups[0]["weight_decay"] == 0.05
    opt = built("--model.init_args.optimizer.init_args.weight_decay", "0.1")
    assert opt.defaults["lr"] == 2e-3 and opt.param_groups[0]["weight_decay"] == 0.1
    opt = built(
        "--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.5"
    )
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.5


def test_a_python_optimizer_dict_updates_the_default_or_names_another_class():
    default = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 0.5}}
    param = [torch.nn.Parameter(torch.zeros(2))]
    opt = optimizer_factory({"init_args": {"lr": 0.25}}, default)(param)
    assert type(opt) is torch.optim.AdamW
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.25, 0.5)
    opt = optimizer_factory({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}, default)(
        param
    )
    assert type(opt) is torch.optim.SGD and opt.defaults["weight_decay"] == 0  # not AdamW's
    made = optimizer_factory(lambda ps: torch.optim.Adam(ps, lr=2.0), default)(param)
    assert type(made) is torch.optim.Adam and made.defaults["lr"] == 2.0


@pytest.mark.parametrize(
    "yaml, old, new, hint",
    [
        (
            "align_tiny.yaml",
            "    rollout: {group_size: 8, seconds: 2.0}\n",
            "    group_size: 8\n    seconds: 2.0\n",
            "group_size is now rollout.group_size (AlignModule)",
        ),
        (
            "siren_tiny.yaml",
            "    optimizer: {init_args: {lr: 2.0e-3}}",
            "    lr: 2.0e-3",
            "lr is now optimizer.init_args.lr",
        ),
    ],
)
def test_an_old_yaml_argument_is_one_message_saying_where_it_went(
    tmp_path, capsys, yaml, old, new, hint
):
    text = (Path(__file__).resolve().parents[1] / "experiments" / yaml).read_text()
    assert old in text
    config = tmp_path / yaml
    config.write_text(text.replace(old, new))
    assert cli.main(["fit", "--config", str(config), "--print_config"]) == 1
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the message and the --debug hint
