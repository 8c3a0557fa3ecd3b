"""A model's own sampling defaults: `generation.json` in an export folder, and `siren set-sampling`.

Like Hugging Face's `generation_config.json`, an export folder may hold

    {"sampling": {"temperature": 0.7}, "chosen_on": "val split, 100 clips x 2 seeds, ..."}

with any of `temperature`, `top_k`, `top_p`, `cfg_scale`, and `chosen_on`, free text saying how
they were chosen (split, clips, seeds, the command). An LM that follows a per-frame plan
(`control_dim` > 0) also names the planner that draws it, and its control guidance:

    "plan": {"planner": "../planner_tiny_clean/planner.ckpt", "control_scale": 2,
             "control_guidance": "reversed"}

(the planner's path relative to the folder), so that `siren generate --model` and `siren
adherence --model` plan every clip from its caption and length with no flag; flags given win.
The tools that take a model (`siren generate`, `siren adherence`, `siren align-report`, `siren
demo`) sample with them where no flag
is given: given > the model's generation.json > `DEFAULT_SAMPLING`
(`models.sampling.resolve_sampling`). `siren export` writes none, except that the export of an
aligned checkpoint carries over the file of the model the alignment started from, and the
export of a planned run writes its `PretrainModule` plan. New sampling keeps the plan a file names.

    siren set-sampling runs/siren_tiny/model --temperature 0.7 --chosen-on "val, 100 clips x 2 seeds"
    siren set-sampling runs/siren_tiny/model            # prints the sampling in effect
    siren set-sampling runs/siren_tiny/model --clear    # removes the file
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siren_lightning.data.loudness import GUIDANCE_CURVES
from siren_lightning.models.sampling import (
    DEFAULT_SAMPLING,
    ResolvedSampling,
    check_sampling,
    resolve_sampling,
)

GENERATION_FILE = "generation.json"
KEYS = ("sampling", "chosen_on", "plan")
PLAN_KEYS = ("planner", "control_scale", "control_guidance")


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
    if "plan" in config:
        check_plan(config["plan"], path)
    return config


def check_plan(plan: Any, path: str | Path) -> None:
    """A generation.json's `plan`, checked.

    Raises:
        GenerationConfigError: naming `path`, on an unknown key or a bad value.
    """
    shape = '{"planner": "path", "control_scale": S, "control_guidance": "reversed"}'
    if (
        not isinstance(plan, dict)
        or not isinstance(plan.get("planner"), str)
        or not plan["planner"]
    ):
        raise GenerationConfigError(f"{path}: plan must be {shape}")
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise GenerationConfigError(f"{path}: unknown plan key(s) {unknown}; known: {PLAN_KEYS}")
    scale = plan.get("control_scale", 0.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise GenerationConfigError(f"{path}: plan.control_scale must be a number, got {scale!r}")
    if plan.get("control_guidance", "reversed") not in GUIDANCE_CURVES:
        raise GenerationConfigError(
            f"{path}: plan.control_guidance must be one of {list(GUIDANCE_CURVES)}, got "
            f"{plan['control_guidance']!r}"
        )


@dataclass(frozen=True)
class ModelPlan:
    """Where a model's per-frame plan comes from, and how strongly it is followed.

    Attributes:
        planner: the planner checkpoint (a path, resolved against the model folder).
        control_scale: control guidance's weight (0: off).
        control_guidance: the copy of the curve guidance moves away from (`GUIDANCE_CURVES`).
    """

    planner: Path
    control_scale: float = 0.0
    control_guidance: str = "reversed"


def model_plan(spec: str | Path) -> ModelPlan | None:
    """The plan a model's generation.json names, or None (no file, or no `plan` in it)."""
    from siren_lightning.export import lm_location

    folder = lm_location(spec)
    config = read_generation_config(folder) if folder.is_dir() else None
    if not config or "plan" not in config:
        return None
    plan = config["plan"]
    return ModelPlan(
        Path(os.path.normpath(folder / plan["planner"])),
        float(plan.get("control_scale", 0.0)),
        plan.get("control_guidance", "reversed"),
    )


def resolve_control(args: argparse.Namespace, plan: ModelPlan | None) -> tuple[float, str]:
    """Control guidance's weight and copy in effect: the flags given > the model's plan > off
    and "reversed" (`--control-scale`, `--control-guidance` of `add_control_guidance_flags`)."""
    scale = args.control_scale
    if scale is None:
        scale = plan.control_scale if plan is not None else 0.0
    guidance = args.control_guidance
    if guidance is None:
        guidance = plan.control_guidance if plan is not None else "reversed"
    return scale, guidance


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


def write_generation_config(
    folder: str | Path,
    sampling: dict[str, Any],
    chosen_on: str,
    plan: dict[str, Any] | None = None,
) -> Path:
    """Write (replace) `folder/generation.json` atomically (checked first).

    Args:
        plan: the `plan` entry (its planner path relative to `folder`), if any.

    Returns:
        the file.
    """
    path = Path(folder) / GENERATION_FILE
    config: dict[str, Any] = {"sampling": sampling, "chosen_on": chosen_on}
    if plan is not None:
        config["plan"] = plan
    config = check_generation_config(config, path)
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
    p.add_argument(
        "--planner",
        help="the planner checkpoint that draws this LM's per-frame plan (control_dim > 0); "
        "stored relative to the model folder",
    )
    p.add_argument("--control-scale", type=float, help="with --planner: control guidance's weight")
    p.add_argument(
        "--control-guidance",
        choices=GUIDANCE_CURVES,
        help="with --planner: the copy control guidance moves away from",
    )
    p.add_argument("--clear", action="store_true", help=f"remove {GENERATION_FILE}")
    args = p.parse_args(argv)
    folder = Path(args.model)
    if not (folder / SIDECAR).is_file():
        raise ValueError(f"{folder} has no {SIDECAR}: not a folder written by `siren export`")
    sampling = given_sampling(args)
    path = folder / GENERATION_FILE
    plan = None
    if args.planner:
        if not Path(args.planner).is_file():
            raise ValueError(f"--planner {args.planner}: no such file")
        plan = {"planner": os.path.relpath(Path(args.planner).resolve(), folder.resolve())}
        plan |= {"control_scale": args.control_scale} if args.control_scale is not None else {}
        plan |= {"control_guidance": args.control_guidance} if args.control_guidance else {}
    elif args.control_scale is not None or args.control_guidance:
        raise ValueError("--control-scale and --control-guidance go with --planner")
    else:  # new sampling keeps the plan the file already names
        plan = (read_generation_config(folder) or {}).get("plan")
    if args.clear:
        if sampling or args.chosen_on or args.planner:
            raise ValueError("--clear takes no values")
        path.unlink(missing_ok=True)
        print(f"removed {path}; {model_sampling(folder, 'siren set-sampling').describe()}")
        return 0
    if sampling or args.planner:
        if not (args.chosen_on or "").strip():
            raise ValueError("--chosen-on is needed: say how the values were chosen")
        write_generation_config(folder, sampling, args.chosen_on.strip(), plan)
        print(f"wrote {path}")
    elif args.chosen_on:
        raise ValueError("--chosen-on without values: give --temperature, --top-k, ...")
    print(model_sampling(folder, "siren set-sampling").describe())
    found = model_plan(folder)
    if found is not None:
        print(
            f"plan: {found.planner}, control_scale {found.control_scale:g}, control_guidance "
            f"{found.control_guidance}"
        )
    return 0
