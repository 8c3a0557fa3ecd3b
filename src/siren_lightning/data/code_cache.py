"""Code cache: pre-tokenized clips as a litdata chunked dataset (DESIGN.md section 3).

Layout of a cache folder (local, or the same files under an object-storage prefix):
    index.json          litdata's index ("chunks", "config") plus "siren": the codec SHA-256,
                        sample rate, hop, r, K, text encoder, tokenize settings, the manifest's
                        SHA-256, every clip's id and frame count in cache order, the skipped ids
                        and their reasons, and one entry per part
    chunk-0-<k>.bin     part k (clips [k*S, (k+1)*S) of the manifest, bad ones left out), one
                        litdata chunk of items {"id": str, "meta": JSON str {"captions",
                        "samples", "text_lengths"?}, "codes": int16 [r, T], "text_states"?:
                        float16 [sum L, Dt]}
    parts/part-<k>.json what `siren tokenize` needs to resume: part k's codec, settings,
                        manifest-entries SHA-256, ids, frames, skips and chunk (not read by
                        training)

`siren tokenize` writes each chunk under a temporary folder and renames it, a part record after
its chunk, and index.json last (renamed from a temporary name), so an interrupted run leaves no
index and is never read. Readers (`CodeCache` for map-style access, `data.streaming.CodeStream`
for training) go through litdata's `StreamingDataset`, so a cache is read the same way from a
local folder or from s3:// / gs:// / `local:` URIs (docs/data.md). Each item read is checked: its
id must be the index's id at that place (a chunk replaced after the index was written is stale)
and every code must be in [0, K).

Letters: r codebooks, T frames, L text tokens, Dt text width.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

INDEX_FILE = "index.json"
FORMAT = "siren-code-cache/2"
OLD_FORMAT = "siren-code-cache/1"
PARTS_DIR = "parts"
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "hf://", "local:")


class CodeCacheError(RuntimeError):
    """A code cache is missing, incomplete, stale, corrupt, or was written by another codec."""


def is_remote(uri: str | Path) -> bool:
    """Whether `uri` names object storage (or litdata's `local:` stand-in), not a plain folder."""
    return str(uri).startswith(REMOTE_PREFIXES)


def old_format_message(root: str | Path) -> str:
    return (
        f"{root} is a code cache in the old safetensors format ({OLD_FORMAT}); convert it with "
        f"`siren tokenize --convert {root} --out NEW_FOLDER` (no audio or codec needed), or "
        f"re-run `siren tokenize` into a new folder"
    )


# ------------------------------------------------------------------------------------------
# Writing


def encode_item(clip: dict[str, Any]) -> dict[str, Any]:
    """One clip as stored in a chunk.

    Args:
        clip: {"id", "captions" (list[str]), "codes" (int [r, T]), "samples" (int)} and
            optionally "text_states" (one float [L, Dt] tensor per caption).
    """
    codes = torch.as_tensor(clip["codes"])
    info = torch.iinfo(torch.int16)
    if codes.numel() and (int(codes.min()) < info.min or int(codes.max()) > info.max):
        raise CodeCacheError(f"codes of clip {clip['id']!r} do not fit int16")
    meta: dict[str, Any] = {"captions": list(clip["captions"]), "samples": int(clip["samples"])}
    item: dict[str, Any] = {"id": str(clip["id"])}
    if clip.get("text_states") is not None:
        states = list(clip["text_states"])
        meta["text_lengths"] = [int(s.shape[0]) for s in states]
        item["text_states"] = torch.cat(states).to(torch.float16).contiguous()  # [sum L, Dt]
    item["meta"] = json.dumps(meta)
    item["codes"] = codes.to(torch.int16).contiguous()  # [r, T]
    return item


def decode_item(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored item back as {"id", "codes" int16 [r, T], "captions", "samples"[, "text_states"]}."""
    meta = json.loads(raw["meta"])
    item = {
        "id": raw["id"],
        "codes": raw["codes"],
        "captions": meta["captions"],
        "samples": int(meta["samples"]),
    }
    if "text_lengths" in meta:
        offsets = [0, *torch.tensor(meta["text_lengths"]).cumsum(0).tolist()]
        states = raw["text_states"]
        item["text_states"] = [states[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return item


def chunk_name(k: int) -> str:
    return f"chunk-0-{k}.bin"


def part_record_path(root: Path, k: int) -> Path:
    return root / PARTS_DIR / f"part-{k:05d}.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    """Atomically write JSON (a temporary sibling, then `os.replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n")
    os.replace(tmp, path)


def write_part(root: Path, k: int, clips: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Atomically write part `k`: its chunk (if it has clips), then its record.

    Args:
        clips: as `encode_item` takes them, in order.
        record: what resuming compares (codec, settings, manifest SHA-256, skips); the chunk's
            litdata entry and config, ids, frames and the chunk file's SHA-256 are added.
    """
    from litdata.streaming.writer import BinaryWriter

    root = Path(root)
    part_record_path(root, k).unlink(missing_ok=True)
    chunk: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    if clips:
        staging = root / f".part-{k:05d}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        writer = BinaryWriter(str(staging), chunk_size=len(clips), chunk_index=k)
        for i, clip in enumerate(clips):
            writer[i] = encode_item(clip)
        (written,) = writer.done()
        (local_index,) = staging.glob(f"*.{INDEX_FILE}")
        written_index = json.loads(local_index.read_text())
        (chunk,) = written_index["chunks"]
        config = written_index["config"]
        chunk["filename"] = chunk_name(k)
        os.replace(written, root / chunk_name(k))
        shutil.rmtree(staging)
    full = {
        **record,
        "ids": [str(c["id"]) for c in clips],
        "frames": [int(torch.as_tensor(c["codes"]).shape[-1]) for c in clips],
        "chunk": chunk,
        "config": config,
        "chunk_sha256": file_sha256(root / chunk_name(k)) if clips else None,
    }
    _write_json(part_record_path(root, k), full)


def read_part(root: Path, k: int) -> dict[str, Any] | None:
    """Part k's record if it and its chunk are whole (the chunk's SHA-256 matches), else None."""
    path = part_record_path(root, k)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("chunk") is not None:
        chunk = Path(root) / record["chunk"]["filename"]
        if not chunk.is_file() or file_sha256(chunk) != record.get("chunk_sha256"):
            return None
    return record


def finish_cache(root: Path, parts: list[dict[str, Any]], siren: dict[str, Any]) -> dict[str, Any]:
    """Write index.json (litdata's chunks and config plus `siren`) from the part records, last.

    Chunks of earlier runs that no part lists (a manifest that shrank) are removed first.

    Returns:
        the "siren" entry as written (with ids, frames and per-part entries added).
    """
    root = Path(root)
    chunks = [p["chunk"] for p in parts if p["chunk"] is not None]
    configs = [p["config"] for p in parts if p["config"] is not None]
    if not chunks:
        raise CodeCacheError(f"code cache {root}: no clip to write")
    layout = [{k: v for k, v in c.items() if k != "chunk_size"} for c in configs]
    if any(c != layout[0] for c in layout):  # chunk_size is each part's clip count
        raise CodeCacheError(f"code cache {root}: parts of different item layouts")
    config = {**configs[0], "chunk_size": max(c["chunk_size"] for c in configs)}
    keep = {c["filename"] for c in chunks}
    for stale in root.glob("chunk-*.bin"):
        if stale.name not in keep:
            stale.unlink()
    for record in root.glob(f"{PARTS_DIR}/part-*.json"):
        if int(record.stem.split("-")[1]) >= len(parts):
            record.unlink()
    siren = {
        "format": FORMAT,
        **siren,
        "num_clips": sum(len(p["ids"]) for p in parts),
        "ids": [i for p in parts for i in p["ids"]],
        "frames": [f for p in parts for f in p["frames"]],
        "parts": [
            {"chunk": p["chunk"] and p["chunk"]["filename"], "num_clips": len(p["ids"])}
            | {"manifest_sha256": p.get("manifest_sha256")}
            for p in parts
        ],
    }
    _write_json(root / INDEX_FILE, {"chunks": chunks, "config": config, "siren": siren})
    return siren


# ------------------------------------------------------------------------------------------
# Reading


def read_index(root: str | Path) -> dict[str, Any]:
    """The "siren" entry of a local cache's index.json, after format and chunk-size checks.

    Raises:
        CodeCacheError: no index (never finished), the old format, no siren entry, or a chunk
            missing or of another size than the index lists.
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise CodeCacheError(
            f"no code cache at {root} ({INDEX_FILE} missing: run `siren tokenize`, or let an "
            f"interrupted run finish)"
        )
    index = json.loads(path.read_text())
    siren = siren_entry(index, root)
    for chunk in index.get("chunks", []):  # a stat each: a truncated chunk fails here, by name
        file = Path(root) / chunk["filename"]
        size = file.stat().st_size if file.is_file() else None
        if size != chunk["chunk_bytes"]:
            raise CodeCacheError(
                f"code cache chunk {file} is missing or truncated ({size} bytes, index.json lists "
                f"{chunk['chunk_bytes']}); re-run `siren tokenize` with the same arguments to "
                f"rewrite it"
            )
    return siren


def siren_entry(index: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """The "siren" entry of a parsed index.json, after format checks (see `read_index`)."""
    if index.get("format") == OLD_FORMAT:
        raise CodeCacheError(old_format_message(root))
    siren = index.get("siren")
    if not isinstance(siren, dict) or siren.get("format") != FORMAT:
        raise CodeCacheError(
            f"{root}/{INDEX_FILE} is not a siren code cache (format {FORMAT}); run `siren tokenize`"
        )
    missing = [
        k
        for k in ("codec_sha256", "n_codebooks", "codebook_size", "ids", "frames")
        if k not in siren
    ]
    if missing:
        raise CodeCacheError(f"{root}/{INDEX_FILE}: lacks {missing}; re-run `siren tokenize`")
    return siren


def check_codec(siren: dict[str, Any], root: str | Path, expected: str | None) -> None:
    """Refuse a cache written by another codec than `expected` (a SHA-256), when given."""
    found = siren["codec_sha256"]
    if expected is not None and found != expected:
        raise CodeCacheError(
            f"code cache {root} was written by codec {found[:16]}..., but the configured codec is "
            f"{expected[:16]}...; re-run `siren tokenize` with this codec or point to the "
            f"matching cache"
        )


def open_streaming(
    uri: str | Path,
    *,
    dataset_class: type | None = None,
    stream_cache_dir: str | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Opens a cache with litdata and reads its "siren" entry.

    Args:
        uri: a local folder, or s3:// gs:// azure:// or `local:/path` (litdata copies its chunks
            into `stream_cache_dir`, as from object storage).
        dataset_class: `StreamingDataset` or a subclass.
        kwargs: passed to the dataset class.

    Returns:
        (the dataset, the index's "siren" entry).
    """
    from litdata import StreamingDataset

    uri = str(uri)
    if not is_remote(uri):
        read_index(uri)  # a clear message for a missing, unfinished or old-format cache
    cls = dataset_class or StreamingDataset
    try:
        dataset = cls(uri, cache_dir=stream_cache_dir, **kwargs)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise CodeCacheError(
            f"cannot open code cache {uri} ({type(exc).__name__}: {exc}); is it a finished "
            f"`siren tokenize` output?"
        ) from None
    return dataset, streamed_index(dataset, uri)


def streamed_index(dataset: Any, uri: str) -> dict[str, Any]:
    """The "siren" entry of the index.json litdata read for `dataset` (its local copy if remote)."""
    local_index = Path(dataset.input_dir.path or uri) / INDEX_FILE
    return siren_entry(json.loads(local_index.read_text()), uri)


def check_item(raw: dict[str, Any], index: int, siren: dict[str, Any], uri: str) -> None:
    """Refuse an item that is not the index's clip at `index`, or holds a code outside [0, K)."""
    want = siren["ids"][index]
    if raw["id"] != want:
        raise CodeCacheError(
            f"code cache {uri}: item {index} is clip {raw['id']!r}, but index.json lists {want!r} "
            f"there: a chunk was replaced after the cache was finished (stale); re-run "
            f"`siren tokenize`"
        )
    codes = raw["codes"]  # int16 [r, T]
    k = siren["codebook_size"]
    if codes.dim() != 2 or codes.shape[0] != siren["n_codebooks"]:
        raise CodeCacheError(
            f"code cache {uri}: clip {want!r} has codes of shape {tuple(codes.shape)}, not "
            f"[{siren['n_codebooks']}, T]; re-run `siren tokenize`"
        )
    bad = (codes < 0) | (codes >= k)
    if bool(bad.any()):
        row, col = (int(x) for x in bad.nonzero()[0])
        raise CodeCacheError(
            f"code cache {uri}: clip {want!r} holds code {int(codes[row, col])} (codebook {row}, "
            f"frame {col}), outside [0, {k}): the cache is corrupt; re-run `siren tokenize` with "
            f"the same arguments to rewrite it"
        )


class CodeCache(Sequence):
    """Map-style reader of a finished code cache (evaluation, tools), through litdata.

    Args:
        root: the cache folder or URI.
        expected_codec_sha256: if given, a cache written by another codec is refused.
        stream_cache_dir: where litdata keeps chunks of a remote cache.

    Items: {"id": str, "codes": int16 [r, T], "captions": list[str], "samples": int} and
    "text_states": list of float16 [L, Dt] (one per caption) when the cache holds them.
    `index` is the index's "siren" entry (codec, r, K, ids, frames, skips...).
    """

    def __init__(
        self,
        root: str | Path,
        expected_codec_sha256: str | None = None,
        stream_cache_dir: str | None = None,
    ) -> None:
        self.root = str(root)
        self.dataset, self.index = open_streaming(
            root, stream_cache_dir=stream_cache_dir, batch_decode=0
        )
        check_codec(self.index, root, expected_codec_sha256)
        if len(self.dataset) != len(self.index["ids"]):
            raise CodeCacheError(
                f"code cache {root}: litdata reads {len(self.dataset)} clips, index.json lists "
                f"{len(self.index['ids'])}; re-run `siren tokenize`"
            )

    @property
    def codec_sha256(self) -> str:
        return self.index["codec_sha256"]

    @property
    def frames(self) -> list[int]:
        """Frames of every clip, in cache order (from the index: no chunk is read)."""
        return self.index["frames"]

    def __len__(self) -> int:
        return len(self.index["ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"code cache index {i} out of range ({n} clips)")
        i %= n
        raw = self.dataset[i]
        check_item(raw, i, self.index, self.root)
        return decode_item(raw)

    def codes_of(self, ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """The codes of the named clips: {id: long [r, T]}; only their items are read.

        Raises:
            CodeCacheError: naming how many of the ids the cache lacks, and a few of them.
        """
        position = {clip: i for i, clip in enumerate(self.index["ids"])}
        missing = sorted(set(ids) - set(position))
        if missing:
            raise CodeCacheError(
                f"code cache {self.root} lacks {len(missing)} of the clips, e.g. {missing[:3]}"
            )
        return {c: torch.as_tensor(self[position[c]]["codes"]).long() for c in dict.fromkeys(ids)}
