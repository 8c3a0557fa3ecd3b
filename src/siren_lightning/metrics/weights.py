"""Pretrained weights of the metric backbones: local path first, download when online, else one
clear error naming the file to place.

A file is identified by its SHA-256, which every results JSON records. Where the official file's
hash is published it is checked: VGGish's torch.hub name carries the first 8 hex digits of its
SHA-256; the PANNs Zenodo record publishes an MD5 only (no SHA-256 is published for it, so its
SHA-256 is computed and recorded, not pinned). A user can pin a full SHA-256 with
``expected_sha256``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR_ENV = "SIREN_WEIGHTS_DIR"


class WeightsError(FileNotFoundError):
    """Backbone weights are missing or do not match their pinned hash."""


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable weights file.

    Attributes:
        name: backbone name used in results ("panns-cnn14-16k").
        filename: the file's name on disk.
        url: official download URL.
        sha256: full pinned SHA-256, when known.
        sha256_prefix: leading hex digits of the SHA-256 (torch.hub convention), when known.
        md5: the MD5 the official host publishes, when that is all it publishes.
    """

    name: str
    filename: str
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None


PANNS_CNN14_16K = WeightSpec(
    name="panns-cnn14-16k",
    filename="Cnn14_16k_mAP=0.438.pth",
    url="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
    # Published in the Zenodo record's file list (record 3987831); Zenodo gives no SHA-256.
    md5="362fc5ff18f1d6ad2f6d464b45893f2c",
)
VGGISH = WeightSpec(
    name="vggish",
    filename="vggish-10086976.pth",
    url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    sha256_prefix="10086976",
)
# The stable_audio_metrics preset's (their hosts publish no hash: computed and recorded).
OPENL3_MEL256_ENV_512 = WeightSpec(
    name="openl3-mel256-env-512",
    filename="torchopenl3_mel256_env_512.pth.tar",
    url="https://github.com/torchopenl3/torchopenl3-models/raw/master/"
    "torchopenl3_mel256_env_512.pth.tar",
)
PASST_S_SWA_AP476 = WeightSpec(
    name="passt-s-swa-p16-128-ap476",
    filename="passt-s-f128-p16-s10-ap.476-swa.pt",
    url="https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
    "passt-s-f128-p16-s10-ap.476-swa.pt",
)
FILE_WEIGHTS = {
    spec.name: spec for spec in (PANNS_CNN14_16K, VGGISH, OPENL3_MEL256_ENV_512, PASST_S_SWA_AP476)
}
# Hugging Face checkpoints of `transformers.ClapModel` (LAION CLAP).
DEFAULT_CLAP_CHECKPOINT = "laion/clap-htsat-unfused"


def weights_dir() -> Path:
    """Where downloaded weights live: $SIREN_WEIGHTS_DIR, else ~/.cache/siren_lightning/weights."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "siren_lightning" / "weights"


def is_online() -> bool:
    """Downloads are allowed unless HF_HUB_OFFLINE is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("1", "true", "yes", "on")


def sha256_file(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest (SHA-256 by default) of a file's content."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hash(spec: WeightSpec, path: Path, expected_sha256: str | None) -> str:
    actual = sha256_file(path)
    expected = expected_sha256 or spec.sha256
    if expected and actual != expected.lower():
        raise WeightsError(f"{path}: SHA-256 {actual} does not match the pinned {expected}")
    if not expected and spec.sha256_prefix and not actual.startswith(spec.sha256_prefix):
        raise WeightsError(
            f"{path}: SHA-256 {actual} does not start with {spec.sha256_prefix}, "
            f"the official {spec.filename}'s"
        )
    if not expected and spec.md5:
        md5 = sha256_file(path, "md5")
        if md5 != spec.md5:
            raise WeightsError(
                f"{path}: MD5 {md5} differs from {spec.md5}, the one published for the official "
                f"{spec.filename} ({spec.url}); the file is truncated or another checkpoint"
            )
    return actual


def resolve_weights(
    spec: WeightSpec, path: str | Path | None = None, expected_sha256: str | None = None
) -> tuple[Path, str]:
    """Find (or fetch) a weights file and check its hash.

    Args:
        spec: which file.
        path: a file, or a folder holding ``spec.filename``; None looks in `weights_dir()`.
        expected_sha256: pin a full hash (overrides the spec's).

    Returns:
        (path, sha256).

    Raises:
        WeightsError: when the file is missing and cannot be downloaded, or its hash differs.
    """
    candidates = []
    if path is not None:
        p = Path(path).expanduser()
        candidates.append(p / spec.filename if p.is_dir() else p)
    candidates.append(weights_dir() / spec.filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate, _check_hash(spec, candidate, expected_sha256)
    if path is not None and not candidates[0].is_file():
        raise WeightsError(f"{spec.name}: no weights file at {candidates[0]}")
    target = candidates[-1]
    if not is_online():
        raise WeightsError(
            f"{spec.name}: weights file {spec.filename} not found. Place it at {target} "
            f"(or pass its path; download: {spec.url}), or set HF_HUB_OFFLINE=0 to download it."
        )
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=spec.sha256_prefix)
    return target, _check_hash(spec, target, expected_sha256)


def resolve_hf_checkpoint(checkpoint: str) -> Path:
    """A local folder for a Hugging Face checkpoint (a local path, the HF cache, or a download).

    Raises:
        WeightsError: when it is neither local nor downloadable.
    """
    local = Path(checkpoint).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(checkpoint, local_files_only=not is_online()))
    except Exception as err:  # the hub raises several unrelated types for "not available"
        raise WeightsError(
            f"checkpoint {checkpoint!r} is neither a local folder nor in the Hugging Face cache; "
            f"download it where there is network (`siren download-weights`) or set "
            f"HF_HUB_OFFLINE=0 ({type(err).__name__}: {err})"
        ) from err


def checkpoint_sha256(folder: str | Path) -> str:
    """SHA-256 identifying a Hugging Face checkpoint folder (over its weight files, by name)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise WeightsError(f"no *.safetensors or *.bin weights in {folder}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return digest.hexdigest() if len(files) > 1 else sha256_file(files[0])


def download_weights(
    names: list[str] | None = None, clap_checkpoint: str = DEFAULT_CLAP_CHECKPOINT
) -> dict[str, Path]:
    """Fetch every backbone's weights for later offline use (the `siren download-weights` tool).

    Args:
        names: subset of ``list(FILE_WEIGHTS) + ["clap"]``; None fetches all.
        clap_checkpoint: the LAION CLAP Hugging Face checkpoint to cache.

    Returns:
        name -> local path.
    """
    wanted = list(FILE_WEIGHTS) + ["clap"] if names is None else names
    unknown = sorted(set(wanted) - set(FILE_WEIGHTS) - {"clap"})
    if unknown:
        raise ValueError(f"unknown weights {unknown}; choose from {[*FILE_WEIGHTS, 'clap']}")
    out = {}
    for name in wanted:
        if name == "clap":
            out[name] = resolve_hf_checkpoint(clap_checkpoint)
        else:
            out[name] = resolve_weights(FILE_WEIGHTS[name])[0]
    return out


def main(argv: list[str]) -> int:
    """`siren download-weights [NAME ...]`: cache backbone weights (needs network)."""
    import argparse

    parser = argparse.ArgumentParser(prog="siren download-weights", description=main.__doc__)
    parser.add_argument("names", nargs="*", help=f"subset of {[*FILE_WEIGHTS, 'clap']}")
    parser.add_argument("--clap-checkpoint", default=DEFAULT_CLAP_CHECKPOINT)
    args = parser.parse_args(argv)
    # The siren CLI defaults to offline; this tool exists to download.
    os.environ["HF_HUB_OFFLINE"] = "0"
    os.environ["TRANSFORMERS_OFFLINE"] = "0"
    try:
        paths = download_weights(args.names or None, args.clap_checkpoint)
    except (WeightsError, OSError) as err:
        print(f"siren download-weights: {err}")
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
