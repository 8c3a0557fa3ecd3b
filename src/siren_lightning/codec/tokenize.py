"""`siren tokenize`: encode every clip of a manifest once into a code cache (DESIGN.md section 3).

The cache is a litdata chunked dataset (`data.code_cache`): part k (clips [k*S, (k+1)*S) of the
manifest) is one chunk, written with litdata's `BinaryWriter`, then a part record, and index.json
last. Batched, with a progress bar, resumable and safe to interrupt (an unfinished run leaves no
index.json, so nothing reads it). A resumed run keeps a finished part only if the same codec wrote
it, with the same settings (batch size, crop, minimum length, text encoder), from the same
manifest entries (their SHA-256), and its chunk is whole (its SHA-256); any other part is
re-encoded with a logged line, so an edited manifest never leaves stale clips in the cache. Bad
clips (missing, unreadable, empty, silent, NaN, shorter than `min_seconds`) are skipped with one
logged line and counted in the index (with their reasons); the run fails if more than
`max_skip_fraction` of the clips are bad. A batch holds at most `batch_size x LONG_CLIP_SECONDS`
of padded audio, so a long clip is batched with fewer clips, or alone; clips longer than
`LONG_CLIP_SECONDS` are encoded whole with a warning (memory grows with their length;
`--max-seconds` bounds it). `--convert OLD` rewrites a cache of the old safetensors format.

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
    INDEX_FILE,
    OLD_FORMAT,
    CodeCacheError,
    finish_cache,
    old_format_message,
    read_part,
    write_part,
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
    out: Path,
    k: int,
    part: list[Any],
    codec_sha: str,
    settings: str,
    part_sha: str,
    overwrite: bool,
) -> dict[str, Any] | None:
    """The record of finished part `k` if it can be kept as it is, else None.

    A part is kept only when it was written by the same codec, with the same settings, from
    the same manifest entries, and its chunk is whole; otherwise it is re-encoded (with a logged
    line). A part of another codec is refused unless `overwrite`.
    """
    record = read_part(out, k)
    if record is None:
        if (out / "parts" / f"part-{k:05d}.json").exists():
            log.warning("tokenize: re-encoding part %d: its record or chunk is damaged", k)
        return None
    done_sha = record.get("codec_sha256")
    if done_sha != codec_sha and not overwrite:
        raise CodeCacheError(
            f"{out} part {k} was written by codec {str(done_sha)[:16]}..., not {codec_sha[:16]}...; "
            f"use another --out or --overwrite"
        )
    if done_sha != codec_sha:
        reason = "it was written by another codec (--overwrite)"
    elif record.get("settings") != settings:
        try:
            before = json.loads(record.get("settings") or "{}")
        except json.JSONDecodeError:
            before = {}
        now = json.loads(settings)
        changed = [f"{k} {before.get(k, '?')} -> {v}" for k, v in now.items() if before.get(k) != v]
        reason = f"its settings changed ({', '.join(changed)})"
    elif record.get("manifest_sha256") != part_sha:
        reason = "its clips in the manifest changed since it was written"
    elif record["ids"] != [c.id for c in part if c.id not in record.get("skipped", {})]:
        reason = "its clip ids differ from the manifest's"
    else:
        return record
    log.warning("tokenize: re-encoding part %d: %s", k, reason)
    return None


def _manifest_sha256(clips: list[Any], root: Path) -> str:
    """SHA-256 of all manifest entries (paths relative), as the cache's index records it."""
    entries = [clip.to_json(root) for clip in clips]
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _refuse_other_cache(out: Path, codec_sha: str, overwrite: bool) -> None:
    """Refuse to write into a folder that holds another codec's cache, or an old-format one."""
    index_path = out / INDEX_FILE
    if not index_path.is_file():
        return
    old = json.loads(index_path.read_text())
    if old.get("format") == OLD_FORMAT:
        raise CodeCacheError(old_format_message(out) + "; or use another --out")
    found = (old.get("siren") or {}).get("codec_sha256", "?")
    if found != codec_sha and not overwrite:
        raise CodeCacheError(
            f"{out} holds a cache written by codec {found[:16]}..., not {codec_sha[:16]}...; use "
            f"another --out or --overwrite"
        )


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
    """Encode every clip of `manifest` into a code cache at `out` and return its index entry.

    Args:
        codec: the codec (its `sha256()` keys the cache).
        shard_size: clips per part (one litdata chunk; manifest order: part k holds clips
            [k*S, (k+1)*S)).
        batch_size: clips encoded together (zero-padded to the longest of them).
        max_seconds: keep only the first `max_seconds` of longer clips (None: whole clips).
        min_seconds: shorter clips are skipped as too short.
        text_encoder: optional object with `encode(list[str]) -> (states [B, L, Dt], mask [B, L])`
            attributes; its states are stored per caption.
        overwrite: rewrite parts written by another codec instead of refusing.

    Resuming into a folder keeps a finished part only if the same codec wrote it with the same
    settings from the same manifest entries; any other part is re-encoded.

    Returns:
        the index's "siren" entry (codec, r, K, ids, frames, skips, ...).

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
    _refuse_other_cache(out, sha, overwrite)
    (out / INDEX_FILE).unlink(missing_ok=True)  # written again once every part is done
    settings = _settings(
        shard_size, batch_size, max_seconds, min_seconds, text_encoder, text_encoder_name
    )
    settings_json = json.dumps(settings, sort_keys=True)

    codec.eval()
    n_parts = math.ceil(len(clips) / shard_size)
    parts: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}  # clip id -> reason, in manifest order
    bar = tqdm(total=len(clips), desc="tokenize", unit="clip", disable=not progress)
    for k in range(n_parts):
        part = clips[k * shard_size : (k + 1) * shard_size]
        part_sha = _part_sha256(part, root)
        done = _reusable(out, k, part, sha, settings_json, part_sha, overwrite)
        if done is not None:
            skipped |= done.get("skipped", {})
            parts.append(done)
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
                "text_states": states[i] if states else None,
            }
            for i, (clip, code, audio) in enumerate(zip(good, codes, audios))
        ]
        record = {
            "codec_sha256": sha,
            "settings": settings_json,
            "manifest_sha256": part_sha,
            "skipped": bad,
        }
        write_part(out, k, items, record)
        parts.append(read_part(out, k))
        skipped |= bad
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
    return finish_cache(
        out,
        parts,
        {
            "codec_sha256": sha,
            "codec": codec.spec()["class_path"],
            "sample_rate": codec.sample_rate,
            "hop_length": codec.hop_length,
            "n_codebooks": codec.n_codebooks,
            "codebook_size": codec.codebook_size,
            "manifest": str(Path(manifest)),
            "manifest_sha256": _manifest_sha256(clips, root),
            "text_encoder": text_encoder_name,
            "shard_size": shard_size,
            "settings": settings,
            "skipped": list(skipped),
            "skip_reasons": skipped,
        },
    )


def convert_old_cache(old: str | Path, out: str | Path) -> dict[str, Any]:
    """Rewrite a cache of the old safetensors format (`siren-code-cache/1`) as a litdata cache.

    Each old shard becomes one part with the same clips, codes, text states, skips, settings
    and manifest SHA-256, so a later `siren tokenize` of the same manifest with the same codec
    and settings into `out` keeps every part. Needs neither the audio nor the codec.

    Returns:
        the new index's "siren" entry.
    """
    from safetensors import SafetensorError, safe_open

    old, out = Path(old), Path(out)
    index_path = old / INDEX_FILE
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if index.get("format") != OLD_FORMAT:
        raise CodeCacheError(f"{old} holds no finished cache of the old format ({OLD_FORMAT})")
    if out.resolve() == old.resolve():
        raise CodeCacheError("--convert writes a new folder: give another --out")
    out.mkdir(parents=True, exist_ok=True)
    _refuse_other_cache(out, index["codec_sha256"], overwrite=False)
    (out / INDEX_FILE).unlink(missing_ok=True)
    parts = []
    for k, entry in enumerate(index["shards"]):
        path = old / entry["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                codes = f.get_tensor("codes")  # [r, sum T]
                frames = f.get_tensor("frames").tolist()
                samples = f.get_tensor("samples").tolist()
                states = f.get_tensor("text_states") if "text_states" in keys else None
                lengths = f.get_tensor("text_lengths").tolist() if states is not None else None
        except (SafetensorError, OSError, KeyError) as exc:
            raise CodeCacheError(f"old cache shard {path} is unreadable ({exc})") from None
        clips = json.loads(meta["clips"])
        if len(clips) != entry["num_clips"] or meta.get("manifest_sha256") != entry.get(
            "manifest_sha256", meta.get("manifest_sha256")
        ):
            raise CodeCacheError(f"old cache shard {path} does not match {index_path} (stale)")
        offsets = [0, *torch.tensor(lengths or [], dtype=torch.int64).cumsum(0).tolist()]
        items, start, row = [], 0, 0
        for clip, t, n in zip(clips, frames, samples, strict=True):
            item = {**clip, "codes": codes[:, start : start + t], "samples": n}
            start += t
            if states is not None:
                caps = len(clip["captions"])
                item["text_states"] = [
                    states[offsets[row + j] : offsets[row + j + 1]] for j in range(caps)
                ]
                row += caps
            items.append(item)
        record = {
            "codec_sha256": meta.get("codec_sha256", index["codec_sha256"]),
            "settings": meta.get("settings"),
            "manifest_sha256": meta.get("manifest_sha256"),
            "skipped": json.loads(meta.get("skipped", "{}")),
        }
        write_part(out, k, items, record)
        parts.append(read_part(out, k))
    keep = ("codec_sha256", "codec", "sample_rate", "hop_length", "n_codebooks", "codebook_size")
    siren = {key: index.get(key) for key in keep}
    siren |= {
        key: index.get(key)
        for key in ("manifest", "text_encoder", "shard_size", "settings", "skipped")
    }
    siren["skip_reasons"] = index.get("skip_reasons", {})
    siren["manifest_sha256"] = None  # the old format kept per-shard hashes only
    siren["converted_from"] = str(old)
    return finish_cache(out, parts, siren)


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
    parser.add_argument("--manifest", help="JSONL manifest")
    parser.add_argument(
        "--codec",
        help="codec folder (e.g. assets/codec_tiny), CodecModule .ckpt, DAC .pth, or dac:16khz",
    )
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument(
        "--convert",
        metavar="OLD_CACHE",
        default=None,
        help="instead of encoding: rewrite a cache of the old safetensors format into --out",
    )
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
    if args.convert is not None:
        try:
            index = convert_old_cache(args.convert, args.out)
        except CodeCacheError as err:
            print(f"siren tokenize: {err}", file=sys.stderr)
            return 2
        print(f"{index['num_clips']} clips of {args.convert} converted into {args.out}")
        return 0
    if args.manifest is None or args.codec is None:
        parser.error("--manifest and --codec are required (unless --convert)")
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
        f"{index['num_clips']} clips in {len(index['parts'])} parts at {args.out} "
        f"({len(index['skipped'])} skipped); codec {index['codec_sha256']}"
    )
    return 0
