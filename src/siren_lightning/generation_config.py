"""A model's own sampling defaults: `generation.json` in an export folder, and `siren set-sampling`.

Like Hugging Face's `generation_config.json`, an export folder may hold

    {"sampling": {"temperature": 0.7}, "chosen_on": "val split, 100 clips x 2 seeds, ..."}

with any of `temperature`, `top_k`, `top_p`, `cfg_scale`, and `chosen_on`, free text saying how
they were chosen (split, clips, seeds, the command). The tools that take a model (`siren
generate`, `siren adherence`, `siren align-report`, `siren demo`) sample with them where no flag
is given: given > the model's generation.json > `DEFAULT_SAMPLING`
(`models.sampling.resolve_sampling`). `siren export` writes none, except that the export of an
aligned checkpoint carries over the file of the model the alignment started from.

    siren set-sampling runs/siren_tiny/model --temperature 0.7 --chosen-on "val, 100 clips x 2 seeds"
    siren set-sampling runs/siren_tiny/model            # prints the sampling in effect
    siren set-sampling runs/siren_tiny/model --clear    # removes the file
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from siren_lightning.models.sampling import (
    DEFAULT_SAMPLING,
    ResolvedSampling,
    check_sampling,
    resolve_sampling,
)

GENERATION_FILE = "generation.json"
KEYS = ("sampling", "chosen_on")


class GenerationConfigError(ValueError):
    """A generation.json that cannot be used (the message names the file)."""


def check_generation_config(config: Any, path: str | Path) -> dict[str, Any]:
    """A generation.json's content, checked; returns it.

    Raises:
        GenerationConfigError: naming `path`, on an unknown key or a bad value.
    """
    if not isinstance(config, dict) or not isinstance(config.get("sampling"), dict):
        raise GenerationConfigError(f'{path}: must be {{"sampling": {{...}}, "chosen_on": "..."}}')
    sampling = config["sampling"]
    unknown = sorted(set(config) - set(KEYS)) + [
        f"sampling.{k}" for k in sorted(set(sampling) - set(DEFAULT_SAMPLING))
    ]
    if unknown:
        raise GenerationConfigError(
            f"{path}: unknown key(s) {unknown}; known: {list(KEYS)}, "
            f"sampling.{list(DEFAULT_SAMPLING)}"
        )
    if not isinstance(config.get("chosen_on", ""), str):
        raise GenerationConfigError(f"{path}: chosen_on must be text, got {config['chosen_on']!r}")
    if any(v is None for v in sampling.values()):
        raise GenerationConfigError(f"{path}: a sampling value is null; leave the key out instead")
    try:
        check_sampling(str(path), **sampling)
    except ValueError as err:
        raise GenerationConfigError(str(err)) from None
    return config


def read_generation_config(folder: str | Path) -> dict[str, Any] | None:
    """The checked `generation.json` of an export folder, or None when it has none.

    Raises:
        GenerationConfigError: naming the file, on bad JSON, an unknown key or a bad value.
    """
    path = Path(folder) / GENERATION_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise GenerationConfigError(f"{path}: not valid JSON ({err})") from None
    return check_generation_config(config, path)


def write_generation_config(folder: str | Path, sampling: dict[str, Any], chosen_on: str) -> Path:
    """Write (replace) `folder/generation.json` atomically (checked first).

    Returns:
        the file.
    """
    path = Path(folder) / GENERATION_FILE
    config = check_generation_config({"sampling": sampling, "chosen_on": chosen_on}, path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{GENERATION_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def model_sampling(
    spec: str | Path, owner: str, given: dict[str, Any] | None = None
) -> ResolvedSampling:
    """The sampling in effect for a model: given > its generation.json > the defaults.

    Args:
        spec: what `export.load_lm` takes (an export folder, a `.ckpt`, a committed model's
            name); only a folder can hold a generation.json.
        owner: who asks, for messages.
        given: explicit settings (None values: not given).
    """
    from siren_lightning.export import lm_location

    folder = lm_location(spec)
    config = read_generation_config(folder) if folder.is_dir() else None
    return resolve_sampling(owner, given, config and config["sampling"])


def add_sampling_flags(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--temperature`, `--top-k`, `--top-p`, `--cfg-scale`, not given by default (None), so that
    the model's generation.json, then `DEFAULT_SAMPLING`, fill in what is not given.

    Args:
        help: every flag's help text (default: where a value not given comes from).
    """
    for name, value in DEFAULT_SAMPLING.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(value),
            default=None,
            help=help or f"default: the model's {GENERATION_FILE}, else {value:g}",
        )


def given_sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags the user gave (`add_sampling_flags`)."""
    return {k: getattr(args, k) for k in DEFAULT_SAMPLING if getattr(args, k) is not None}


def main(argv: list[str]) -> int:
    """Write, show or remove the sampling defaults of an exported model (its generation.json)."""
    from siren_lightning.export import SIDECAR

    p = argparse.ArgumentParser(prog="siren set-sampling", description=main.__doc__)
    p.add_argument("model", help="folder written by `siren export`")
    add_sampling_flags(p, help=f"the value to write into {GENERATION_FILE}")
    p.add_argument(
        "--chosen-on",
        help="how the values were chosen (split, clips, seeds, the command); needed to write",
    )
    p.add_argument("--clear", action="store_true", help=f"remove {GENERATION_FILE}")
    args = p.parse_args(argv)
    folder = Path(args.model)
    if not (folder / SIDECAR).is_file():
        raise ValueError(f"{folder} has no {SIDECAR}: not a folder written by `siren export`")
    sampling = given_sampling(args)
    path = folder / GENERATION_FILE
    if args.clear:
        if sampling or args.chosen_on:
            raise ValueError("--clear takes no values")
        path.unlink(missing_ok=True)
        print(f"removed {path}; {model_sampling(folder, 'siren set-sampling').describe()}")
        return 0
    if sampling:
        if not (args.chosen_on or "").strip():
            raise ValueError("--chosen-on is needed: say how the values were chosen")
        write_generation_config(folder, sampling, args.chosen_on.strip())
        print(f"wrote {path}")
    elif args.chosen_on:
        raise ValueError("--chosen-on without values: give --temperature, --top-k, ...")
    print(model_sampling(folder, "siren set-sampling").describe())
    return 0
