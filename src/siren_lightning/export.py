"""`siren export`: a PretrainModule checkpoint -> a folder that loads without Lightning.

The folder holds what `huggingface_hub.PyTorchModelHubMixin.save_pretrained` writes for the LM
(`SirenLM` or `DelayPatternLM`: `config.json`, `model.safetensors` with the codec table included,
`README.md`) plus the sidecar `siren.json`: the model class, the codec spec and SHA-256, the
codec's sample rate and hop, and the text encoder (backend, name or path, max length,
transformers version) that the model was trained with. `load_exported(folder)` reads both back;
`siren generate` uses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from siren_lightning import __version__
from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
from siren_lightning.models.siren import SirenConfig, SirenLM

SIDECAR = "siren.json"


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


def export_checkpoint(checkpoint: str | Path, out: str | Path, half: bool = False) -> Path:
    """Write the LM's weights, config and the `siren.json` sidecar from a Lightning checkpoint.

    Args:
        checkpoint: a `.ckpt` saved while training a `PretrainModule`.
        out: destination folder (created).
        half: store the weights in float16 (half the size; `from_pretrained` loads them into
            the float32 model).

    Returns:
        the folder.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise ExportError(f"siren export: checkpoint not found: {checkpoint}")
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = blob.get("siren")
    if meta is None:
        raise ExportError(
            f"siren export: {checkpoint} is not a PretrainModule checkpoint (no 'siren')"
        )
    cls, config_cls = model_class(meta.get("model_class"))
    model = cls(config_cls.from_dict(meta["model_config"]))
    model.load_state_dict(network_state(blob))
    if half:
        model.half()
    model.save_pretrained(out)
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
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def load_exported(
    folder: str | Path, device: str = "cpu"
) -> tuple[SirenLM | DelayPatternLM, dict[str, Any]]:
    """Load an exported model (eval mode) and its sidecar.

    Raises:
        ExportError: naming the folder when a file is missing.
    """
    folder = Path(folder)
    for name in ("config.json", "model.safetensors", SIDECAR):
        if not (folder / name).is_file():
            raise ExportError(f"{folder} has no {name}: not a folder written by `siren export`")
    sidecar = json.loads((folder / SIDECAR).read_text())
    cls, _ = model_class(sidecar.get("model_class"))
    model = cls.from_pretrained(str(folder), strict=True, map_location=device)
    return model.eval(), sidecar


def main(argv: list[str]) -> int:
    """Export a PretrainModule checkpoint for `siren generate`."""
    parser = argparse.ArgumentParser(prog="siren export", description=main.__doc__)
    parser.add_argument("checkpoint", help="Lightning .ckpt of a PretrainModule run")
    parser.add_argument("--out", required=True, help="destination folder")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    args = parser.parse_args(argv)
    try:
        folder = export_checkpoint(args.checkpoint, args.out, half=args.half)
    except ExportError as err:
        print(err)
        return 1
    print(f"exported {args.checkpoint} -> {folder} (config.json, model.safetensors, {SIDECAR})")
    return 0
