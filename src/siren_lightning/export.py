"""`siren export`: a PretrainModule checkpoint -> a folder that loads without Lightning.

The folder holds what `huggingface_hub.PyTorchModelHubMixin.save_pretrained` writes for the LM
(`SirenLM` or `DelayPatternLM`: `config.json`, `model.safetensors` with the codec table included,
`README.md`) plus the sidecar `siren.json`: the model class, the codec spec and SHA-256, the
codec's sample rate and hop, and the text encoder (backend, name or path, max length,
transformers version) that the model was trained with. `load_lm(folder)` reads both back;
`siren generate` uses it.

A LoRA fine-tuning checkpoint (`PretrainModule(lora=...)`) exports either merged (`--merge`: a
plain model folder as above, the adapters folded into the weights) or as its adapters alone:
`adapter_model.safetensors` (the LoRA matrices only) and `siren.json`, whose `adapter` entry
names the base export folder and its weights' SHA-256.

The folder may also hold `generation.json`, the model's own sampling defaults
(`generation_config`); `siren export` writes none, except for an aligned checkpoint, whose export
carries over the file of the model the alignment started from (`align.init_from`), and for a run
whose `PretrainModule` had a `plan`, which the export names so that the model plans by itself.

`load_lm(spec)` is the one way to load an LM: from an export folder (an adapter-only one loads
its base, adds the adapters and merges them), from a stage's Lightning `.ckpt` (the one place the
`network.` prefix of its weights is stripped), or by the name of a committed reference model
under assets/ (`siren_tiny_reference`, `delay_tiny_reference`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siren_lightning import __version__
from siren_lightning.codec.checkpoint import file_sha256
from siren_lightning.models.base import check_same_architecture
from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
from siren_lightning.models.siren import SirenConfig, SirenLM

SIDECAR = "siren.json"
ADAPTER_FILE = "adapter_model.safetensors"


class ExportError(ValueError):
    """A checkpoint or export folder that cannot be used."""


# The LMs an export folder may hold, by the class name recorded in checkpoints and sidecars
# (older ones without it hold a SirenLM).
MODELS: dict[str, tuple[type, type]] = {
    "SirenLM": (SirenLM, SirenConfig),
    "DelayPatternLM": (DelayPatternLM, DelayLMConfig),
}


def network_state(blob: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The LM's weights in a stage's Lightning checkpoint: its `network.` entries, unprefixed."""
    prefix = "network."
    state = blob.get("state_dict", {})
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def model_class(name: str | None) -> tuple[type, type]:
    """The LM class recorded as `name` (SirenLM when None) and its config class."""
    name = name or "SirenLM"
    if name not in MODELS:
        raise ExportError(f"unknown model class {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def _absolute_codec(spec: str | None) -> str | None:
    """A codec path as an absolute one, so the export works from any folder (`dac:` kept)."""
    if not spec or spec.startswith("dac:") or not Path(spec).exists():
        return spec
    return str(Path(spec).resolve())


def exported_codec(sidecar: dict[str, Any], folder: str | Path) -> str | None:
    """The codec spec an export names, resolved for the current folder.

    Exports store an absolute path; older ones stored the training run's relative path, which
    is tried from the current folder, then from the export folder.

    Raises:
        ExportError: naming the places tried when a relative path is found in neither.
    """
    spec = sidecar.get("codec")
    if not spec or spec.startswith("dac:") or Path(spec).is_absolute() or Path(spec).exists():
        return spec
    beside = Path(folder) / spec
    if beside.exists():
        return str(beside)
    raise ExportError(
        f"{folder}/{SIDECAR} names the codec by the relative path {spec!r}, found neither from "
        f"{Path.cwd()} nor from {folder}; pass --codec, or re-export with `siren export`"
    )


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, half: bool = False, merge: bool = False
) -> Path:
    """Write the LM's weights, config and the `siren.json` sidecar from a Lightning checkpoint.

    Args:
        checkpoint: a `.ckpt` saved while training a `PretrainModule`.
        out: destination folder (created).
        half: store the weights in float16 (half the size; `from_pretrained` loads them into
            the float32 model).
        merge: for a LoRA checkpoint, fold the adapters into the weights and write a plain
            model folder; else only the adapters are written (beside a pointer to the base).

    Returns:
        the folder.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise ExportError(f"siren export: checkpoint not found: {checkpoint}")
    meta, state, blob = _read_checkpoint(checkpoint, "siren export")
    if not meta:
        raise ExportError(
            f"siren export: {checkpoint} is not a PretrainModule checkpoint (no 'siren')"
        )
    model = _build_lm(meta, checkpoint, "siren export")
    model.load_state_dict(state)
    lora = meta.get("lora")
    if lora is None and merge:
        raise ExportError(f"siren export: --merge: {checkpoint} holds no LoRA adapters")
    if lora is not None and merge:
        from siren_lightning.lora import merge_lora

        merge_lora(model)
    if half:
        model.half()
    out.mkdir(parents=True, exist_ok=True)
    if lora is not None and not merge:
        adapter = _write_adapter(model, lora, out)
    else:
        model.save_pretrained(out)
        adapter = None
    import transformers

    text = meta.get("text_encoder")
    if text is not None:
        text = {**text, "transformers_version": transformers.__version__}
    sidecar = {
        "format": "siren-lightning/1",
        "siren_lightning_version": __version__,
        "source_checkpoint": str(checkpoint.resolve()),
        "global_step": blob.get("global_step"),
        "dtype": "float16" if half else "float32",
        "model_class": type(model).__name__,
        "model_config": model.config.to_dict(),
        "codec": _absolute_codec(meta.get("codec")),
        "codec_sha256": meta.get("codec_sha256"),
        "sample_rate": meta.get("sample_rate"),
        "hop_length": meta.get("hop_length"),
        "text_encoder": text,
        "train_groups": meta.get("train_groups"),
    }
    if meta.get("align") is not None:  # stage 2: what trained the policy (not the sampler state)
        sidecar["align"] = {k: v for k, v in meta["align"].items() if k != "rollout_rng"}
    if lora is not None:
        sidecar["lora"] = {**lora, "merged": merge}
    if adapter is not None:
        sidecar["adapter"] = adapter
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    if meta.get("align") is not None:
        _carry_generation_config(meta["align"].get("init_from"), out, meta["align"].get("planner"))
    elif meta.get("plan") is not None:
        _write_training_plan(meta["plan"], out)
    return out


def _write_training_plan(plan: dict[str, Any], out: Path) -> None:
    """A planned LM's export plans as its training run generated: the `PretrainModule` plan
    goes into generation.json, its planner named relative to `out`. Sampling an existing file
    chose is kept; an existing plan wins (`siren set-sampling` wrote it on purpose)."""
    from siren_lightning.generation_config import read_generation_config, write_generation_config

    config = read_generation_config(out)
    if config is not None and "plan" in config:
        return
    plan = {**plan, "planner": os.path.relpath(Path(plan["planner"]).resolve(), out.resolve())}
    sampling, chosen_on = {}, "sampling not chosen (`siren set-sampling`)"
    if config is not None:
        sampling, chosen_on = config["sampling"], config.get("chosen_on", "not recorded")
    chosen_on += "; plan: the training run's (PretrainModule plan)"
    write_generation_config(out, sampling, chosen_on, plan)


def _carry_generation_config(init_from: str | None, out: Path, planner: str | None = None) -> None:
    """An aligned export samples as the model its alignment started from: copy that model's
    generation.json (if it is an export folder that has one), its provenance kept. Its plan's
    planner (the one the alignment used, when recorded) is named relative to `out`."""
    from siren_lightning.generation_config import read_generation_config, write_generation_config

    source = lm_location(init_from) if init_from else None
    config = read_generation_config(source) if source is not None and source.is_dir() else None
    if config is None:
        return
    chosen_on = config.get("chosen_on") or "not recorded"
    plan = config.get("plan")
    if plan is not None:
        used = Path(planner) if planner else source / plan["planner"]
        plan = {**plan, "planner": os.path.relpath(used.resolve(), out.resolve())}
    write_generation_config(
        out,
        config["sampling"],
        f"for {source}, the model this alignment started from: {chosen_on}",
        plan,
    )


def _read_checkpoint(
    checkpoint: Path, who: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """A stage checkpoint's `siren` record ({} when it has none), its LM weights and the whole
    checkpoint.

    Raises:
        ExportError: when it holds no `network.` weights.
    """
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = network_state(blob)
    if not state:
        raise ExportError(
            f"{who}: {checkpoint} holds no 'network.' weights (not a stage checkpoint)"
        )
    return dict(blob.get("siren") or {}), state, blob


def _build_lm(record: dict[str, Any], source: Path, who: str) -> SirenLM | DelayPatternLM:
    """An untrained LM of the class and config a record names, with its LoRA adapters if any."""
    if not record.get("model_config"):
        raise ExportError(f"{who}: {source} records no model config (no 'siren' record)")
    cls, config_cls = model_class(record.get("model_class"))
    model = cls(config_cls.from_dict(record["model_config"]))
    if record.get("lora") is not None:
        from siren_lightning.lora import LoraSettings, add_lora

        add_lora(model, LoraSettings(**{k: v for k, v in record["lora"].items() if k != "base"}))
    return model


def _write_adapter(model: Any, lora: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the adapters alone; return the sidecar's `adapter` entry (base folder and hash)."""
    from safetensors.torch import save_file

    from siren_lightning.lora import adapter_state

    base = Path(lora["base"])
    if not (base / "model.safetensors").is_file():
        raise ExportError(
            f"siren export: the LoRA base {base} is not an export folder (a .ckpt base has no "
            "stable weights file to point to); export with --merge instead"
        )
    state = {k: v.contiguous() for k, v in adapter_state(model).items()}
    save_file(state, str(out / ADAPTER_FILE))
    return {"base": str(base), "base_sha256": file_sha256(base / "model.safetensors")}


def _load_adapter(folder: Path, sidecar: dict[str, Any], device: str) -> SirenLM | DelayPatternLM:
    """An adapter-only export: its base export with the adapters added and merged."""
    from safetensors.torch import load_file

    from siren_lightning.lora import LoraSettings, add_lora, merge_lora

    adapter = sidecar["adapter"]
    base = Path(adapter["base"])
    model, _ = _load_folder(base, device=device)
    found = file_sha256(base / "model.safetensors")
    if found != adapter["base_sha256"]:
        raise ExportError(
            f"{folder} adapts {base} whose model.safetensors had SHA-256 "
            f"{adapter['base_sha256'][:16]}..., now {found[:16]}...: not the same base model"
        )
    settings = {k: v for k, v in sidecar["lora"].items() if k not in ("base", "merged")}
    add_lora(model, LoraSettings(**settings))
    state = load_file(str(folder / ADAPTER_FILE), device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    lora_missing = [k for k in missing if ".lora_" in k]
    if unexpected or lora_missing:
        raise ExportError(
            f"{folder}/{ADAPTER_FILE} does not fit {base}: unexpected {unexpected[:3]}, "
            f"missing {lora_missing[:3]}"
        )
    return merge_lora(model).eval()


def _load_folder(
    folder: str | Path, device: str = "cpu"
) -> tuple[SirenLM | DelayPatternLM, dict[str, Any]]:
    """An exported model (eval mode) and its sidecar.

    An adapter-only LoRA export loads its base, adds the adapters and merges them.

    Raises:
        ExportError: naming the folder when a file is missing.
    """
    folder = Path(folder)
    adapter_sidecar = folder / SIDECAR
    if (folder / ADAPTER_FILE).is_file() and adapter_sidecar.is_file():
        sidecar = json.loads(adapter_sidecar.read_text())
        return _load_adapter(folder, sidecar, device), sidecar
    for name in ("config.json", "model.safetensors", SIDECAR):
        if not (folder / name).is_file():
            raise ExportError(f"{folder} has no {name}: not a folder written by `siren export`")
    sidecar = json.loads((folder / SIDECAR).read_text())
    cls, _ = model_class(sidecar.get("model_class"))
    model = cls.from_pretrained(str(folder), strict=True, map_location=device)
    return model.eval(), sidecar


def lm_location(spec: str | Path) -> Path:
    """Where `spec` lives: the path as given, or the committed reference model it names."""
    path = Path(spec)
    if not path.exists():
        from siren_lightning.metrics.tiny_clap import assets_dir

        named = assets_dir() / str(spec)
        if (named / SIDECAR).is_file():
            return named
    return path


def load_lm(
    spec: str | Path,
    device: str = "cpu",
    who: str = "load_lm",
    into: nn.Module | None = None,
) -> tuple[SirenLM | DelayPatternLM, dict[str, Any]]:
    """An LM (eval mode) and its record, from wherever one is kept.

    Args:
        spec: an export folder (`siren export`), a stage's Lightning `.ckpt` (its LoRA adapters,
            if any, merged), or the name of a committed reference model under assets/
            (`siren_tiny_reference`, `delay_tiny_reference`).
        device: where the weights go.
        who: names the caller in error messages.
        into: load the weights (strictly) into this LM instead of building one (its mode is left
            as it is); the source's record, where it has one, must describe this architecture
            (`models.base.check_same_architecture`).

    Returns:
        the model and its record (the export's sidecar or the checkpoint's `siren` record:
        `model_class`, `model_config`, `codec`, `codec_sha256`, `text_encoder`, ...); the
        `codec` path is resolved from the current folder, else from beside the model, when
        found there.

    Raises:
        FileNotFoundError: naming `spec` when it is none of these.
        ExportError: a folder or checkpoint that holds no LM.
    """
    path = lm_location(spec)
    model: Any = None
    if path.is_dir():
        base = path
        if into is None:
            model, record = _load_folder(path, device=device)
        else:
            from safetensors.torch import load_file

            if not (path / "model.safetensors").is_file():
                raise ExportError(
                    f"{who}: {path} has no model.safetensors (written by siren export)"
                )
            sidecar = path / SIDECAR
            record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            state = load_file(str(path / "model.safetensors"))
    elif path.is_file():
        base = path.parent
        record, state, _ = _read_checkpoint(path, who)
        if into is None:
            model = _build_lm(record, path, who)
            model.load_state_dict(state)
            if record.get("lora") is not None:
                from siren_lightning.lora import merge_lora

                merge_lora(model)
            model = model.to(device).eval()
    else:
        raise FileNotFoundError(
            f"{who}: {spec!s} is neither a folder written by siren export, a stage .ckpt, nor "
            "the name of a committed reference model under assets/"
        )
    if into is not None:
        check_same_architecture(
            record.get("model_config"), record.get("model_class"), into, f"{who} {spec}"
        )
        load_grown(into, state, (record.get("model_config") or {}).get("control_dim", 0))
        model = into
    # Left as recorded when not found: a caller that needs it says so (`siren generate --codec`).
    with contextlib.suppress(ExportError):
        record = {**record, "codec": exported_codec(record, base)}
    return model, record


def load_grown(
    network: nn.Module, state: dict[str, torch.Tensor], recorded_control_dim: int
) -> None:
    """Load `state` strictly into `network`, except that an LM grown to take per-frame control
    (`control_dim` > 0) from weights without it keeps its control projections as built (zero:
    the grown LM computes what the recorded one did)."""
    grown = getattr(network.config, "control_dim", 0) > 0 and not recorded_control_dim
    if not grown:
        network.load_state_dict(state)
        return
    missing, unexpected = network.load_state_dict(state, strict=False)
    others = [k for k in missing if "control" not in k.split(".")]
    if others or unexpected:
        raise RuntimeError(
            f"load_grown: missing {others}, unexpected {list(unexpected)} (beyond the control "
            "projections an LM grown to take control starts without)"
        )


def main(argv: list[str]) -> int:
    """Export a PretrainModule checkpoint for `siren generate`."""
    parser = argparse.ArgumentParser(prog="siren export", description=main.__doc__)
    parser.add_argument("checkpoint", help="Lightning .ckpt of a PretrainModule run")
    parser.add_argument("--out", required=True, help="destination folder")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="LoRA checkpoints: write the model with the adapters merged into its weights "
        f"(default: the adapters alone, {ADAPTER_FILE}, beside a pointer to the base export)",
    )
    args = parser.parse_args(argv)
    try:
        folder = export_checkpoint(args.checkpoint, args.out, half=args.half, merge=args.merge)
    except ExportError as err:
        print(err)
        return 1
    written = sorted(p.name for p in folder.iterdir())
    print(f"exported {args.checkpoint} -> {folder} ({', '.join(written)})")
    return 0
