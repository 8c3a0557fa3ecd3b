"""`siren tokenize`: encode every clip of a manifest once into a code cache (DESIGN.md section 3).

Batched, with a progress bar, resumable (finished shards written by the same codec are skipped)
and safe to interrupt (shards and the index are written to temporary names and renamed; the index
comes last). Bad clips (missing, unreadable, silent, too short) are skipped with one logged line,
counted in the index, and the run fails if more than `max_skip_fraction` of the clips are bad.

Letters: B batch, r codebooks, T frames, N samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from siren_lightning.codec.base import RVQCodec
from siren_lightning.data.code_cache import (
    FORMAT,
    INDEX_FILE,
    CodeCacheError,
    shard_codec_sha256,
    shard_name,
    write_index,
    write_shard,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_clips(
    codec: RVQCodec, audios: list[torch.Tensor], batch_size: int
) -> list[torch.Tensor]:
    """Encode clips of any lengths in length-sorted, zero-padded batches.

    Args:
        audios: n tensors [N_i].

    Returns:
        n code tensors long [r, ceil(N_i / hop)], in input order.
    """
    device = next(codec.parameters()).device
    order = sorted(range(len(audios)), key=lambda i: -audios[i].numel())
    out: list[torch.Tensor | None] = [None] * len(audios)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        n_max = max(audios[i].numel() for i in idx)
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


def tokenize_manifest(
    manifest: str | Path,
    codec: RVQCodec,
    out: str | Path,
    *,
    shard_size: int = 256,
    batch_size: int = 16,
    max_seconds: float | None = None,
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
        max_seconds: keep only the first `max_seconds` of longer clips (None: whole clips).
        text_encoder: optional object with `encode(list[str]) -> (states [B, L, Dt], mask [B, L])`
            attributes; its states are stored per caption.
        overwrite: rewrite shards written by another codec instead of refusing.

    Raises:
        CodeCacheError: on a cache written by another codec (without `overwrite`), or when more
            than `max_skip_fraction` of the clips are bad.
    """
    from siren_lightning.data.audio import AudioError, load_audio
    from siren_lightning.data.manifest import read_manifest

    clips = read_manifest(manifest)
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

    codec.eval()
    n_shards = math.ceil(len(clips) / shard_size)
    shards, skipped = [], []
    bar = tqdm(total=len(clips), desc="tokenize", unit="clip", disable=not progress)
    for s in range(n_shards):
        part = clips[s * shard_size : (s + 1) * shard_size]
        path = out / shard_name(s)
        done_sha = shard_codec_sha256(path) if path.is_file() else None
        if done_sha is not None and done_sha != sha and not overwrite:
            raise CodeCacheError(
                f"{path} was written by codec {done_sha[:16]}..., not {sha[:16]}...; "
                f"use another --out or --overwrite"
            )
        if done_sha == sha:
            with safe_open(str(path), framework="pt") as f:
                done_ids = {c["id"] for c in json.loads(f.metadata()["clips"])}
            kept = [c for c in part if c.id in done_ids]
            skipped += [c.id for c in part if c.id not in done_ids]
            shards.append({"file": path.name, "num_clips": len(kept)})
            bar.update(len(part))
            continue
        audios, good = [], []
        for clip in part:
            try:
                audio = load_audio(clip.audio, codec.sample_rate)
            except AudioError as err:
                log.warning("tokenize: skipping %s: %s", clip.id, err)
                skipped.append(clip.id)
                continue
            if max_seconds is not None:
                audio = audio[: int(max_seconds * codec.sample_rate)]
            audios.append(audio)
            good.append(clip)
        codes = encode_clips(codec, audios, batch_size)
        states = _text_states(text_encoder, [c.captions for c in good]) if text_encoder else None
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
        write_shard(path, items, sha)
        shards.append({"file": path.name, "num_clips": len(items)})
        bar.update(len(part))
    bar.close()
    if clips and len(skipped) / len(clips) > max_skip_fraction:
        raise CodeCacheError(
            f"tokenize: {len(skipped)} of {len(clips)} clips of {manifest} are bad "
            f"(more than max_skip_fraction={max_skip_fraction}); first: {skipped[:5]}"
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
        "num_clips": sum(sh["num_clips"] for sh in shards),
        "skipped": skipped,
        "shards": shards,
    }
    write_index(out, index)
    return index


def main(argv: list[str]) -> int:
    """`siren tokenize --manifest M --codec C --out DIR`."""
    from siren_lightning.codec.checkpoint import load_codec

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
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--max-skip-fraction", type=float, default=0.01)
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    codec = load_codec(args.codec).to(args.device)
    text_encoder = None
    if args.text_encoder:
        from siren_lightning.text import TextEncoder

        text_encoder = TextEncoder(args.text_encoder, args.text_encoder_path).to(args.device)
    index = tokenize_manifest(
        args.manifest,
        codec,
        args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        max_seconds=args.max_seconds,
        max_skip_fraction=args.max_skip_fraction,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        text_encoder=text_encoder,
        text_encoder_name=getattr(text_encoder, "source", None),
    )
    print(
        f"{index['num_clips']} clips in {len(index['shards'])} shards at {args.out} "
        f"({len(index['skipped'])} skipped); codec {index['codec_sha256']}"
    )
    return 0
