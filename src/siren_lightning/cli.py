"""The `siren` command.

`siren fit|validate|test|predict --config experiments/X.yaml` is a plain LightningCLI: the YAML
chooses the LightningModule, the network inside it and the DataModule by `class_path`.
Every other sub-command is a small tool with its own argparse parser, listed in `TOOLS`.

An error prints its message alone (`siren <command>: error: ...`) and exits 1; `--debug` (anywhere
on the line) or `SIREN_DEBUG=1` shows the whole traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

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
    "demo": "siren_lightning.demo:main",
    "set-sampling": "siren_lightning.generation_config:main",
    "silence-codes": "siren_lightning.codec.silence:main",
    "loudness": "siren_lightning.data.loudness:main",
    "plan": "siren_lightning.stages.planner:main",
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


def used_checkpoint_folders(trainer: Any) -> dict[Path, list[str]]:
    """{checkpoint folder: its checkpoint files} for each `ModelCheckpoint` folder that already
    holds checkpoints (hidden temporary files ignored).

    A checkpoint callback without a `dirpath` saves under the first logger's versioned folder,
    which is new for every run, or under `default_root_dir`/checkpoints when there is no logger.
    """
    used: dict[Path, list[str]] = {}
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if folder is None and not trainer.loggers:
            folder = os.path.join(trainer.default_root_dir, "checkpoints")
        if folder is None or not Path(folder).is_dir():
            continue
        files = sorted(p.name for p in Path(folder).glob("*.ckpt") if not p.name.startswith("."))
        if files:
            used[Path(folder)] = files
    return used


def check_fresh_run_folder(trainer: Any, ckpt_path: str | None) -> None:
    """Refuse to start a fit in a checkpoint folder that another run has used.

    Lightning would write `last-v1.ckpt` beside the old `last.ckpt`, so that the documented
    `--ckpt_path .../last.ckpt` resumes the old run. A fit that resumes from a checkpoint of that
    folder continues the run and overwrites its `last.ckpt`, so it is allowed.
    """
    for folder, files in used_checkpoint_folders(trainer).items():
        if ckpt_path is not None and Path(ckpt_path).resolve().parent == folder.resolve():
            continue
        last = folder / "last.ckpt"
        found = f"{last} and {len(files) - 1} more" if last.name in files else ", ".join(files)
        raise FileExistsError(
            f"{folder} already holds the checkpoints of an earlier run ({found}); a new run "
            f"there would leave last.ckpt at the old run's step. Resume that run with "
            f"--ckpt_path {last}, or start afresh in another folder (--trainer.default_root_dir "
            "and the checkpoint dirpath) or after moving the old one away"
        )


def add_prediction_writer(trainer: Any) -> None:
    """`siren predict` writes WAVs: an `AudioPredictionWriter` (into
    `<default_root_dir>/predictions`) joins the callbacks when the config names no writer."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    from siren_lightning.callbacks.predictions import AudioPredictionWriter

    if not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
        trainer.callbacks.append(AudioPredictionWriter())


def lightning_cli(args: list[str] | None = None) -> None:
    """LightningCLI over any LightningModule / LightningDataModule chosen by the YAML."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class SirenCLI(LightningCLI):
        def before_fit(self) -> None:
            check_fresh_run_folder(self.trainer, self.config["fit"].get("ckpt_path"))

        def before_predict(self) -> None:
            add_prediction_writer(self.trainer)

        def predict(self, **kwargs: Any) -> Any:
            # The writer saves every batch as it goes; keeping every waveform in memory as well
            # would grow with the manifest. `--return_predictions true` still asks for them.
            if kwargs.get("return_predictions") is None:
                kwargs["return_predictions"] = False
            return self.trainer.predict(**kwargs)

    trainer_defaults: dict[str, Any] = {}
    if not sys.stdout.isatty():  # the rich bar draws nothing into a file or a pipe
        from siren_lightning.callbacks.progress import LogProgress

        trainer_defaults["callbacks"] = [LogProgress()]
    SirenCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args == sys.argv[1:] else args,  # LightningCLI warns when given both
        # Parse errors raise, so that `main` prints their point instead of usage and a
        # page of nested alternatives.
        parser_kwargs={"exit_on_error": False},
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults,
    )


def _usage() -> str:
    tools = ", ".join(sorted(TOOLS))
    return (
        "usage: siren {fit,validate,test,predict} --config experiments/X.yaml [...]\n"
        f"       siren {{{tools}}} [...]\n"
    )


def _no_space_message(exc: BaseException) -> str | None:
    """A full disk, wherever in the exception chain it surfaced, as one sentence (else None)."""
    path, seen = None, exc
    full = False
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            full = True
            path = path or seen.filename
        elif "No space left on device" in str(seen) or "os error 28" in str(seen):
            full = True
        seen = seen.__cause__ or seen.__context__
    if not full:
        return None
    where = f" while writing {path}" if path else ""
    return (
        f"no space left on device{where}. Free some space or write elsewhere, then run again "
        "(a fit resumes from its last.ckpt with --ckpt_path)"
    )


def _raised_in(exc: BaseException, package: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def _config_error_text(exc: BaseException) -> str | None:
    """The point of a jsonargparse error (parsing the YAML or building a class from it), else None.

    jsonargparse wraps the real problem (`Expected a <class 'int'>. Got value: sixteen`, or a
    config's own range check) in one "Does not validate against any of the Union subtypes" per
    nesting level, each repeating the whole config. The innermost message is the point; the
    `Parser key "..."` lines on the way down say where it is.
    """
    import argparse

    if not (isinstance(exc, argparse.ArgumentError) or _raised_in(exc, "jsonargparse")):
        return None
    keys: list[str] = []
    seen: BaseException | None = exc
    innermost = exc
    while seen is not None:
        first = str(seen).strip().splitlines()[0] if str(seen).strip() else ""
        if first.startswith('Parser key "') and first.endswith('":'):
            key = first[len('Parser key "') : -2]
            if not keys or keys[-1] != key:
                keys.append(key)
        innermost = seen
        seen = seen.__cause__ or seen.__context__
    text = str(innermost).strip()
    if text.startswith('Parser key "'):  # the key is already in `keys`
        text = text.split("\n", 1)[-1].strip()
    return f"{'.'.join(keys)}: {text}" if keys else text


def error_message(command: str, exc: BaseException) -> str:
    """The one line `siren` prints for an error: the message, not the traceback."""
    text = _no_space_message(exc) or _config_error_text(exc)
    if text is None:
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, (ValueError, OSError)):  # say what kind of failure it was
            text = f"{type(exc).__name__}: {text}"
    text = text.removeprefix(f"siren {command}: ")  # a tool's own messages may name it
    moved = re.match(r"model(\.init_args)?: Option '(\w+)' is not accepted", text)
    if moved:
        from siren_lightning.stages.chassis import moved_arg_hint

        hint = moved_arg_hint(moved.group(2))
        text = f"{text}: {hint}" if hint else text
    return f"siren {command}: error: {text}\n(--debug or SIREN_DEBUG=1 shows the traceback)\n"


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SIREN_DEBUG", "0") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if from_command_line:  # DDP re-runs sys.argv once per rank: same line, same debug setting
        sys.argv[1:] = argv
        if debug:
            os.environ["SIREN_DEBUG"] = "1"
    _offline_defaults()
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    if argv[0] not in TOOLS and argv[0] not in LIGHTNING_COMMANDS:
        sys.stderr.write(f"siren: unknown command {argv[0]!r}\n" + _usage())
        return 2
    try:
        if argv[0] in TOOLS:
            return run_tool(argv[0], argv[1:])
        lightning_cli(argv)
        return 0
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(error_message(argv[0], exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
