"""`siren tokenize`: encode every clip of a manifest once into a code cache (DESIGN.md section 3).

Batched, with a progress bar, resumable and safe to interrupt (shards and the index are written to
temporary names and renamed; the index comes last). A resumed run keeps a finished shard only if
the same codec wrote it, with the same settings (batch size, crop, minimum length, text encoder),
from the same manifest entries (their SHA-256), and it is whole; any other shard is re-encoded
with a logged line, so an edited manifest never leaves stale clips in the cache. Bad clips
(missing, unreadable, empty, silent, NaN, shorter than `min_seconds`) are skipped with one logged
line and counted in the index (with their reasons); the run fails if more than
`max_skip_fraction` of the clips are bad. A batch holds at most `batch_size x LONG_CLIP_SECONDS`
of padded audio, so a long clip is batched with fewer clips, or alone; clips longer than
`LONG_CLIP_SECONDS` are encoded whole with a warning (memory grows with their length;
`--max-seconds` bounds it).

Letters: B batch, r codebooks, T frames, N samples.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from siren_lightning.codec.base import RVQCodec
from siren_lightning.data.audio import MIN_SECONDS
from siren_lightning.data.code_cache import (
    FORMAT,
    INDEX_FILE,
    CodeCacheError,
    open_shard,
    shard_metadata,
    shard_name,
    write_index,
    write_shard,
)

log = logging.getLogger(__name__)

# Memory of encoding grows with the padded batch (clips x longest clip). Measured with
# assets/codec_tiny on the CPU (peak RSS over the process's 0.87 GB): a 10-minute clip alone
# +0.45 GB, with one more clip padded to its length +0.87 GB; issue 22 measured 5.8 GB for one
# at the default batch of 16. So a batch holds at most `batch_size x LONG_CLIP_SECONDS` of padded
# audio (fewer clips beside a long one, alone past that), and a clip longer than
# LONG_CLIP_SECONDS, whose own memory still grows with it, is logged as a warning.
LONG_CLIP_SECONDS = 60.0


@torch.no_grad()
def encode_clips(
    codec: RVQCodec,
    audios: list[torch.Tensor],
    batch_size: int,
    max_batch_samples: int | None = None,
) -> list[torch.Tensor]:
    """Encode clips of any lengths in length-sorted, zero-padded batches.

    Args:
        audios: n tensors [N_i].
        batch_size: most clips a batch.
        max_batch_samples: most padded samples a batch (clips x longest); a clip longer than
            this is encoded alone. None: no bound.

    Returns:
        n code tensors long [r, ceil(N_i / hop)], in input order.
    """
    device = next(codec.parameters()).device
    order = sorted(range(len(audios)), key=lambda i: -audios[i].numel())
    out: list[torch.Tensor | None] = [None] * len(audios)
    b = 0
    while b < len(order):
        n_max = audios[order[b]].numel()  # the longest left: the order is by length
        size = batch_size
        if max_batch_samples is not None:
            size = max(1, min(batch_size, max_batch_samples // max(n_max, 1)))
        idx = order[b : b + size]
        b += size
        batch = torch.zeros(len(idx), 1, n_max)
        for k, i in enumerate(idx):
            batch[k, 0, : audios[i].numel()] = audios[i]
        codes = codec.encode(batch.to(device)).cpu()  # [B, r, T_max]
        for k, i in enumerate(idx):
            out[i] = codes[k, :, : math.ceil(audios[i].numel() / codec.hop_length)]
    return out  # type: ignore[return-value]


def _text_states(text_encoder: Any, captions: list[list[str]]) -> list[list[torch.Tensor]]:
    """Per clip, one float [L, Dt] state tensor per caption (padding removed)."""
    flat = [c for caps in captions for c in caps]
    enc = text_encoder.encode(flat)
    lengths = enc.mask.sum(1).tolist()
    states = [enc.states[i, : int(n)].float().cpu() for i, n in enumerate(lengths)]
    out, k = [], 0
    for caps in captions:
        out.append(states[k : k + len(caps)])
        k += len(caps)
    return out


def _settings(
    shard_size: int,
    batch_size: int,
    max_seconds: float | None,
    min_seconds: float,
    text_encoder: Any,
    text_encoder_name: str | None,
) -> dict[str, Any]:
    """The tokenize settings a shard's content depends on (besides the codec and its clips).

    The batch size is one: clips are zero-padded to their batch's longest, and the codec's last
    frames see that padding.
    """
    if text_encoder is not None and text_encoder_name is None:
        text_encoder_name = type(text_encoder).__name__
    return {
        "shard_size": shard_size,
        "batch_size": batch_size,
        "max_seconds": max_seconds,
        "min_seconds": min_seconds,
        "text_encoder": text_encoder_name,
        "long_clip_seconds": LONG_CLIP_SECONDS,
    }


def _part_sha256(part: list[Any], root: Path) -> str:
    """SHA-256 of a shard's manifest entries as the manifest states them (paths relative)."""
    entries = [clip.to_json(root) for clip in part]
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _reusable(
    path: Path,
    part: list[Any],
    codec: RVQCodec,
    settings: str,
    part_sha: str,
    overwrite: bool,
) -> dict[str, str] | None:
    """The skip reasons of a finished shard that can be kept as it is, else None.

    A shard is kept only when it was written by the same codec, with the same settings, from
    the same manifest entries, and is whole; otherwise it is re-encoded (with a logged line).
    A shard of another codec is refused unless `overwrite`.
    """
    if not path.is_file():
        return None
    meta = shard_metadata(path)
    sha = codec.sha256()
    done_sha = meta.get("codec_sha256") if meta is not None else None
    if done_sha is not None and done_sha != sha and not overwrite:
        raise CodeCacheError(
            f"{path} was written by codec {done_sha[:16]}..., not {sha[:16]}...; "
            f"use another --out or --overwrite"
        )
    if meta is None:
        reason = "the file is unreadable"
    elif done_sha != sha:
        reason = "it was written by another codec (--overwrite)"
    elif meta.get("settings") != settings:
        try:
            before = json.loads(meta.get("settings", "{}"))
        except json.JSONDecodeError:
            before = {}
        now = json.loads(settings)
        changed = [f"{k} {before.get(k, '?')} -> {v}" for k, v in now.items() if before.get(k) != v]
        reason = f"its settings changed ({', '.join(changed)})"
    elif meta.get("manifest_sha256") != part_sha:
        reason = "its clips in the manifest changed since it was written"
    else:
        try:
            data = open_shard(path, codec.n_codebooks, codec.codebook_size)
        except CodeCacheError as err:
            reason = str(err)
        else:
            skipped = json.loads(meta.get("skipped", "{}"))
            wanted = [c.id for c in part if c.id not in skipped]
            if [c["id"] for c in data["clips"]] == wanted:
                return skipped
            reason = "its clip ids differ from the manifest's"
    log.warning("tokenize: re-encoding %s: %s", path.name, reason)
    return None


def tokenize_manifest(
    manifest: str | Path,
    codec: RVQCodec,
    out: str | Path,
    *,
    shard_size: int = 256,
    batch_size: int = 16,
    max_seconds: float | None = None,
    min_seconds: float = MIN_SECONDS,
    max_skip_fraction: float = 0.01,
    text_encoder: Any = None,
    text_encoder_name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every clip of `manifest` into a code cache at `out` and return its index.

    Args:
        codec: the codec (its `sha256()` keys the cache).
        shard_size: clips per shard (manifest order; shard k holds clips [k*S, (k+1)*S)).
        batch_size: clips encoded together (zero-padded to the longest of them).
        max_seconds: keep only the first `max_seconds` of longer clips (None: whole clips).
        min_seconds: shorter clips are skipped as too short.
        text_encoder: optional object with `encode(list[str]) -> (states [B, L, Dt], mask [B, L])`
            attributes; its states are stored per caption.
        overwrite: rewrite shards written by another codec instead of refusing.

    Resuming into a folder keeps a finished shard only if the same codec wrote it with the same
    settings from the same manifest entries; any other shard is re-encoded.

    Raises:
        ValueError: on a setting out of range (before any work).
        ManifestError: on a malformed or empty manifest.
        CodeCacheError: on a cache written by another codec (without `overwrite`), or when more
            than `max_skip_fraction` of the clips are bad.
    """
    from siren_lightning.data.audio import AudioError, load_audio
    from siren_lightning.data.manifest import read_manifest

    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tokenize: {name} must be a positive integer, got {value!r}")
    if max_seconds is not None and not 0 < max_seconds < math.inf:
        raise ValueError(f"tokenize: max_seconds must be positive (or None), got {max_seconds!r}")
    if not 0 <= min_seconds < math.inf:
        raise ValueError(f"tokenize: min_seconds must be >= 0, got {min_seconds!r}")
    if not 0.0 <= max_skip_fraction < 1.0:
        raise ValueError(f"tokenize: max_skip_fraction must be in [0, 1), got {max_skip_fraction}")
    clips = read_manifest(manifest)
    root = Path(manifest).resolve().parent
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sha = codec.sha256()
    index_path = out / INDEX_FILE
    if index_path.is_file() and not overwrite:
        old = json.loads(index_path.read_text())
        if old.get("codec_sha256") != sha:
            raise CodeCacheError(
                f"{out} holds a cache written by codec {old.get('codec_sha256', '?')[:16]}..., not "
                f"{sha[:16]}...; use another --out or --overwrite"
            )
    index_path.unlink(missing_ok=True)  # the index is rewritten once every shard is done
    settings = _settings(
        shard_size, batch_size, max_seconds, min_seconds, text_encoder, text_encoder_name
    )
    settings_json = json.dumps(settings, sort_keys=True)

    codec.eval()
    n_shards = math.ceil(len(clips) / shard_size)
    shards: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}  # clip id -> reason, in manifest order
    bar = tqdm(total=len(clips), desc="tokenize", unit="clip", disable=not progress)
    for s in range(n_shards):
        part = clips[s * shard_size : (s + 1) * shard_size]
        path = out / shard_name(s)
        part_sha = _part_sha256(part, root)
        done = _reusable(path, part, codec, settings_json, part_sha, overwrite)
        if done is not None:
            skipped |= done
            shards.append(
                {"file": path.name, "num_clips": len(part) - len(done), "manifest_sha256": part_sha}
            )
            bar.update(len(part))
            continue
        audios, good, bad = [], [], {}
        budget = batch_size * int(LONG_CLIP_SECONDS * codec.sample_rate)  # padded samples a batch
        for clip in part:
            try:
                audio = load_audio(clip.audio, codec.sample_rate, min_seconds=min_seconds)
            except AudioError as err:
                log.warning("tokenize: skipping %s: %s", clip.id, err)
                bad[clip.id] = err.reason
                continue
            if max_seconds is not None:
                audio = audio[: int(max_seconds * codec.sample_rate)]
            if audio.numel() > LONG_CLIP_SECONDS * codec.sample_rate:
                beside = min(batch_size, budget // audio.numel()) - 1  # clips padded to it
                log.warning(
                    "tokenize: %s is %.0f s long: it is encoded whole (%s), so memory grows "
                    "with its length; --max-seconds keeps only the start of long clips",
                    clip.id,
                    audio.numel() / codec.sample_rate,
                    f"with up to {beside} more clips padded to it" if beside > 0 else "alone",
                )
            audios.append(audio)
            good.append(clip)
        codes = encode_clips(codec, audios, batch_size, max_batch_samples=budget)
        states = (
            _text_states(text_encoder, [c.captions for c in good])
            if good and text_encoder
            else None
        )
        items = [
            {
                "id": clip.id,
                "captions": clip.captions,
                "codes": code,
                "samples": audio.numel(),
                "text_states": states[k] if states else None,
            }
            for k, (clip, code, audio) in enumerate(zip(good, codes, audios))
        ]
        metadata = {
            "settings": settings_json,
            "manifest_sha256": part_sha,
            "skipped": json.dumps(bad),
        }
        write_shard(path, items, sha, n_codebooks=codec.n_codebooks, metadata=metadata)
        skipped |= bad
        shards.append({"file": path.name, "num_clips": len(items), "manifest_sha256": part_sha})
        bar.update(len(part))
    bar.close()
    if len(skipped) > max_skip_fraction * len(clips):
        first = ", ".join(f"{k} ({v})" for k, v in list(skipped.items())[:5])
        raise CodeCacheError(
            f"{len(skipped)} of {len(clips)} clips of {manifest} are bad (more than "
            f"max_skip_fraction={max_skip_fraction:g}); first: {first}. `siren prepare jsonl "
            f"--min-seconds {min_seconds:g}` writes a manifest without them, or raise "
            f"--max-skip-fraction"
        )
    index = {
        "format": FORMAT,
        "codec_sha256": sha,
        "codec": codec.spec()["class_path"],
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "n_codebooks": codec.n_codebooks,
        "codebook_size": codec.codebook_size,
        "manifest": str(Path(manifest)),
        "text_encoder": text_encoder_name,
        "shard_size": shard_size,
        "settings": settings,
        "num_clips": sum(sh["num_clips"] for sh in shards),
        "skipped": list(skipped),
        "skip_reasons": skipped,
        "shards": shards,
    }
    write_index(out, index)
    return index


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def main(argv: list[str]) -> int:
    """`siren tokenize --manifest M --codec C --out DIR`."""
    from siren_lightning.codec.checkpoint import load_codec
    from siren_lightning.data.manifest import ManifestError

    parser = argparse.ArgumentParser(
        prog="siren tokenize", description="Encode a manifest's clips into a code cache."
    )
    parser.add_argument("--manifest", required=True, help="JSONL manifest")
    parser.add_argument(
        "--codec",
        required=True,
        help="codec folder (e.g. assets/codec_tiny), CodecModule .ckpt, DAC .pth, or dac:16khz",
    )
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.add_argument("--shard-size", type=_positive_int, default=256)
    parser.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=None,
        help="keep only the start of longer clips",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_SECONDS,
        help="shorter clips are skipped as too short (default: %(default)s)",
    )
    parser.add_argument("--max-skip-fraction", type=_fraction, default=0.01)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--text-encoder",
        default=None,
        help="also store caption states of this siren_lightning.text backend (minilm, t5, clap), "
        "so training never runs the text encoder",
    )
    parser.add_argument("--text-encoder-path", default=None, help="its local folder or hub name")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 0 <= args.min_seconds < math.inf:
        parser.error(f"argument --min-seconds: must be >= 0, got {args.min_seconds}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    codec = load_codec(args.codec).to(args.device)
    text_encoder = None
    if args.text_encoder:
        from siren_lightning.text import TextEncoder

        text_encoder = TextEncoder(args.text_encoder, args.text_encoder_path).to(args.device)
    try:
        index = tokenize_manifest(
            args.manifest,
            codec,
            args.out,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            min_seconds=args.min_seconds,
            max_skip_fraction=args.max_skip_fraction,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            text_encoder=text_encoder,
            text_encoder_name=getattr(text_encoder, "source", None),
        )
    except (CodeCacheError, ManifestError) as err:
        print(f"siren tokenize: {err}", file=sys.stderr)
        return 2
    print(
        f"{index['num_clips']} clips in {len(index['shards'])} shards at {args.out} "
        f"({len(index['skipped'])} skipped); codec {index['codec_sha256']}"
    )
    return 0
