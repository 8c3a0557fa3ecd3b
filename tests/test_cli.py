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
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code not in (0, None)
    assert "batch_size" in capsys.readouterr().err
