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
