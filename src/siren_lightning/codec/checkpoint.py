"""Codec checkpoints as a folder: `codec.json` (class, config, SHA-256) + `codec.safetensors`.

`load_codec(spec)` is the one way tools build a codec from a string:
- a folder written by `save_codec` (e.g. `assets/codec_tiny`),
- a Lightning `.ckpt` written while training a `CodecModule` (it carries the codec's spec),
- a DAC weights file (`.pth`), or `dac:16khz` for the official weights (local cache or download).

`python -m siren_lightning.codec.checkpoint CKPT OUT` exports a training checkpoint to a folder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from siren_lightning.codec.base import RVQCodec
from siren_lightning.codec.dac_codec import CodecLoadError

CONFIG_FILE = "codec.json"
WEIGHTS_FILE = "codec.safetensors"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_codec(spec: dict) -> RVQCodec:
    """A random-init codec from {"class_path", "config"} (see `RVQCodec.spec`)."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_spec(spec)


def save_codec(codec: RVQCodec, folder: str | Path, half: bool = False) -> dict:
    """Write `codec.json` + `codec.safetensors` into folder (atomically) and return the json dict.

    Args:
        half: store float weights as float16 (the loaded codec is then the rounded one: its
            SHA-256, written into codec.json, is computed after rounding).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        rounded = build_codec(codec.spec())
        rounded.load_state_dict({k: v.float() for k, v in state.items()})
        sha = rounded.sha256()
    else:
        sha = codec.sha256()
    meta = {**codec.spec(), "sha256": sha, "dtype": "float16" if half else "float32"}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, folder / WEIGHTS_FILE)
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, folder / CONFIG_FILE)
    return meta


def load_codec(spec: str | Path) -> RVQCodec:
    """Build a codec (eval mode) from a folder, a Lightning ckpt, a DAC .pth or `dac:16khz`.

    Raises:
        CodecLoadError: naming the path when nothing usable is there.
    """
    from siren_lightning.codec.dac_codec import DACCodec

    text = str(spec)
    if text.startswith("dac:"):
        return DACCodec(pretrained=text[4:]).eval()
    path = Path(text)
    if path.is_dir():
        config = path / CONFIG_FILE
        if not config.is_file():
            raise CodecLoadError(
                f"{path} has no {CONFIG_FILE}: not a codec folder (see save_codec)"
            )
        meta = json.loads(config.read_text())
        codec = build_codec(meta)
        state = load_file(str(path / WEIGHTS_FILE))
        codec.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
        return codec.eval()
    if path.suffix == ".ckpt":
        return load_training_checkpoint(path)
    if path.suffix == ".pth" or path.exists():
        return DACCodec(checkpoint=path).eval()
    raise CodecLoadError(
        f"codec not found: {path}. Give a codec folder (codec.json + codec.safetensors), a "
        f"CodecModule .ckpt, a DAC weights .pth, or dac:16khz."
    )


def load_training_checkpoint(path: str | Path) -> RVQCodec:
    """The codec inside a CodecModule Lightning checkpoint (read with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CodecLoadError(f"checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if "codec_spec" not in blob:
        raise CodecLoadError(f"{path} is not a CodecModule checkpoint (no 'codec_spec' entry)")
    codec = build_codec(blob["codec_spec"])
    prefix = "codec."
    state = {k[len(prefix) :]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
    codec.load_state_dict(state)
    return codec.eval()


def main(argv: list[str]) -> int:
    """Export a CodecModule checkpoint to a codec folder and print its SHA-256s."""
    parser = argparse.ArgumentParser(prog="siren export-codec", description=main.__doc__)
    parser.add_argument("checkpoint", help="a CodecModule .ckpt or a codec folder")
    parser.add_argument("out", help="folder to write codec.json + codec.safetensors into")
    parser.add_argument("--half", action="store_true", help="store weights as float16")
    args = parser.parse_args(argv)
    meta = save_codec(load_codec(args.checkpoint), args.out, half=args.half)
    print(f"codec sha256 (weights): {meta['sha256']}")
    print(f"{WEIGHTS_FILE} sha256 (file): {file_sha256(Path(args.out) / WEIGHTS_FILE)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
