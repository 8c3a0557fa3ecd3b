"""The `siren` command.

`siren fit|validate|test|predict --config experiments/X.yaml` is a plain LightningCLI: the YAML
chooses the LightningModule, the network inside it and the DataModule by `class_path`.
Every other sub-command is a small tool with its own argparse parser, listed in `TOOLS`.
"""

from __future__ import annotations

import importlib
import os
import sys

# "name": "module:function"; each function takes argv (without the tool name) and returns an
# exit code. Modules are imported only when their tool runs, so `siren --help` stays fast.
TOOLS: dict[str, str] = {
    "prepare": "siren_lightning.data.prepare:main",
    "export": "siren_lightning.export:main",
    "generate": "siren_lightning.generate:main",
    "evaluate": "siren_lightning.metrics.protocol:main",
    "tokenize": "siren_lightning.codec.tokenize:main",
    "export-codec": "siren_lightning.codec.checkpoint:main",
    "codec-eval": "siren_lightning.codec.evaluate:main",
    "align-report": "siren_lightning.align.report:main",
    "adherence": "siren_lightning.text_following:main",
    "download-weights": "siren_lightning.metrics.weights:main",
}

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _offline_defaults() -> None:
    # Libraries that look weights up on a hub can hang for minutes on a machine without network
    # (DESIGN.md section 9). Users who want downloads set HF_HUB_OFFLINE=0 themselves.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])


def run_tool(name: str, argv: list[str]) -> int:
    module_name, func_name = TOOLS[name].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(argv) or 0)


def lightning_cli(args: list[str] | None = None) -> None:
    """LightningCLI over any LightningModule / LightningDataModule chosen by the YAML."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def _usage() -> str:
    tools = ", ".join(sorted(TOOLS))
    return (
        "usage: siren {fit,validate,test,predict} --config experiments/X.yaml [...]\n"
        f"       siren {{{tools}}} [...]\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _offline_defaults()
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    if argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    if argv[0] in LIGHTNING_COMMANDS:
        lightning_cli(argv)
        return 0
    sys.stderr.write(f"siren: unknown command {argv[0]!r}\n" + _usage())
    return 2


if __name__ == "__main__":
    sys.exit(main())
