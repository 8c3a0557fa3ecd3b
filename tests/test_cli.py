import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from siren_lightning import cli


def test_help_lists_tools(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fit" in out
    for tool in cli.TOOLS:
        assert tool in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.TOOLS))
def test_every_tool_resolves_to_a_callable(name):
    import importlib

    module_name, func_name = cli.TOOLS[name].split(":")
    assert callable(getattr(importlib.import_module(module_name), func_name))


@pytest.mark.parametrize("name", sorted(cli.TOOLS))
def test_every_tool_prints_its_help(name, capsys):
    # argparse %-formats help strings, so a stray "%" in one crashes `--help` (it did for
    # `siren evaluate`); cli.main turns that crash into exit code 1.
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def test_experiments_folder_is_not_empty():
    assert EXPERIMENTS, "experiments/*.yaml not found"


def _layers(config: Path) -> list[str]:
    """The YAML with the ones it is layered on first (its `# base: A.yaml B.yaml` line)."""
    first = config.read_text().splitlines()[0]
    bases = first.removeprefix("# base:").split() if first.startswith("# base:") else []
    args = []
    for name in [*bases, config.name]:
        args += ["--config", str(config.parent / name)]
    return args


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.name)
def test_every_training_yaml_lists_the_guards_docs_reliability_promises(config):
    import yaml

    # A layered YAML's lists replace its bases' (as LightningCLI merges them): the last wins.
    trainer = {}
    for path in _layers(config)[1::2]:
        trainer.update(yaml.safe_load(Path(path).read_text()).get("trainer") or {})
    listed = {c["class_path"] for c in trainer.get("callbacks") or []}
    listed |= {p["class_path"] for p in trainer.get("plugins") or []}
    promised = {
        "siren_lightning.callbacks.guards.NaNGuard",
        "siren_lightning.callbacks.seeding.StepSeed",
        "siren_lightning.callbacks.checkpoint_io.AtomicCheckpointIO",
    }
    assert promised <= listed, sorted(promised - listed)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.name)
def test_every_step_checkpointing_yaml_saves_its_last_step(config):
    """ModelCheckpoint(every_n_train_steps=n) saves nothing after the last multiple of n, so a
    max_steps that n does not divide loses the last steps (make align exported step 20 of 30)."""
    import yaml

    trainer = {}
    for path in _layers(config)[1::2]:
        trainer.update(yaml.safe_load(Path(path).read_text()).get("trainer") or {})
    for callback in trainer.get("callbacks") or []:
        every = (callback.get("init_args") or {}).get("every_n_train_steps")
        if callback["class_path"].endswith("ModelCheckpoint") and every and "max_steps" in trainer:
            assert trainer["max_steps"] % every == 0, (trainer["max_steps"], every)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_yaml_parses_through_the_cli(config, capsys):
    # --print_config validates every init argument against the classes' signatures.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", *_layers(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_a_bad_config_value_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    good = Path(__file__).resolve().parents[1] / "experiments" / "tiny-clap-eval.yaml"
    bad.write_text(good.read_text().replace("batch_size: 48", "batch_size: forty-eight"))
    assert cli.main(["fit", "--config", str(bad), "--print_config"]) == 1
    err = capsys.readouterr().err
    assert (
        "siren fit: error: data.batch_size: Expected a <class 'int'>. Got value: forty-eight" in err
    )
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err  # message + hint


def test_a_config_check_is_printed_alone_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    good = Path(__file__).resolve().parents[1] / "experiments" / "siren_tiny.yaml"
    text = good.read_text()
    assert "          bias: false\n" in text  # the network's overrides of its size
    bad.write_text(
        text.replace("          bias: false\n", "          bias: false\n          num_heads: 5\n")
    )
    args = ["fit", "--config", str(bad), "--trainer.max_steps", "1"]
    # as a user runs it: its own process, so that nothing but its own output is on stderr
    src = str(Path(cli.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "SIREN_DEBUG": "0"}
    command = [sys.executable, "-m", "siren_lightning.cli", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-2:] == [
        "siren fit: error: SirenConfig: num_heads 5 must divide width 128",
        "(--debug or SIREN_DEBUG=1 shows the traceback)",
    ]
    assert "Traceback" not in result.stderr and "Union" not in result.stderr
    capsys.readouterr()
    with pytest.raises(ValueError, match="Does not validate"):  # jsonargparse's wrapper
        cli.main([*args, "--debug"])


def test_a_full_disk_is_one_message_naming_the_file(tmp_path, monkeypatch, capsys):
    import torch

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")

    def fill(argv):
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()

    module = type(sys)("siren_fill_disk")
    module.main = fill
    monkeypatch.setitem(sys.modules, "siren_fill_disk", module)
    monkeypatch.setitem(cli.TOOLS, "fill", "siren_fill_disk:main")
    assert cli.main(["fill"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("siren fill: error: no space left on device. Free some space")
    assert len(err.strip().splitlines()) == 2
    monkeypatch.setenv("SIREN_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        cli.main(["fill"])
    monkeypatch.setenv("SIREN_DEBUG", "0")

    # a checkpoint write names its file: the temporary sibling is opened on a full disk
    from siren_lightning.callbacks import checkpoint_io

    real_fdopen = os.fdopen
    monkeypatch.setattr(
        checkpoint_io.os,
        "fdopen",
        lambda fd, mode: (os.close(fd), real_fdopen(os.open("/dev/full", os.O_WRONLY), mode))[1],
    )
    target = tmp_path / "last.ckpt"
    module.main = lambda argv: checkpoint_io.atomic_torch_save({"w": torch.zeros(100_000)}, target)
    assert cli.main(["fill"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"siren fill: error: no space left on device while writing {target}.")
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def _boring_yaml(tmp_path: Path, steps: int) -> Path:
    config = tmp_path / f"boring{steps}.yaml"
    config.write_text(
        "trainer:\n"
        f"  max_steps: {steps}\n"
        "  accelerator: cpu\n"
        "  logger: false\n"
        "  enable_progress_bar: false\n"
        "  enable_model_summary: false\n"
        "  limit_val_batches: 0\n"
        f"  default_root_dir: {tmp_path / 'run'}\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {tmp_path / 'run' / 'checkpoints'}, save_last: true}}\n"
        "model: {class_path: lightning.pytorch.demos.boring_classes.BoringModel}\n"
        "data: {class_path: lightning.pytorch.demos.boring_classes.BoringDataModule}\n"
    )
    return config


def _step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_a_fresh_fit_in_a_used_run_folder_is_refused_and_last_stays_the_latest(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    assert cli.main(["fit", "--config", str(_boring_yaml(tmp_path, 2))]) == 0
    assert _step(checkpoints / "last.ckpt") == 2
    capsys.readouterr()
    # a second fresh run into the same folder would write last-v1.ckpt beside the old last.ckpt
    assert cli.main(["fit", "--config", str(_boring_yaml(tmp_path, 3))]) == 1
    err = capsys.readouterr().err
    assert f"{checkpoints} already holds the checkpoints of an earlier run" in err
    assert f"--ckpt_path {checkpoints / 'last.ckpt'}" in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    # resuming that run is allowed and moves last.ckpt on
    last = str(checkpoints / "last.ckpt")
    assert cli.main(["fit", "--config", str(_boring_yaml(tmp_path, 4)), "--ckpt_path", last]) == 0
    assert _step(checkpoints / "last.ckpt") == 4
    assert not list(checkpoints.glob("last-v*.ckpt"))


def test_a_fit_whose_output_is_piped_prints_progress_lines(tmp_path):
    # the rich bar draws nothing without a terminal: `make pretrain | tee log` was silent
    src = str(Path(cli.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, "-m", "siren_lightning.cli", "fit"]
    command += ["--config", str(_boring_yaml(tmp_path, 4))]
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, timeout=600)
    assert result.returncode == 0
    lines = [x for x in result.stdout.splitlines() if x.startswith("step ")]
    # the first and the last step always get a line; in between, one every 30 s
    assert re.fullmatch(r"step 1/4 \(25%\) \| loss \d+\.\d{4} \| [\d.]+ it/s \| ETA \w+", lines[0])
    assert re.fullmatch(r"step 4/4 \(100%\) \| loss \d+\.\d{4} \| [\d.]+ it/s \| ETA 0s", lines[-1])
    assert re.search(r"^training stopped at step 4 after \w+$", result.stdout, re.MULTILINE)
