"""Code cache: pre-tokenized clips in safetensors shards plus a JSON index (DESIGN.md section 3).

Layout of a cache folder:
    index.json                 format, codec SHA-256, sample rate, hop, r, K, shard list, counts
    shard-00000.safetensors    tensors: "codes" int16 [r, sum T], "frames" int64 [n],
                               "samples" int64 [n] (clip length in samples); optional
                               "text_states" float16 [sum L, Dt] and "text_lengths" int64 [n_caps];
                               metadata: "clips" (JSON list of {"id", "captions"}), "codec_sha256",
                               and from `siren tokenize`: "settings" and "manifest_sha256" (what
                               a resumed run compares), "skipped" (JSON {id: reason})

Shards are written to a temporary name and renamed (`os.replace`), and index.json is written last,
so a reader never sees a half-written shard and an interrupted run leaves no index. A shard is
checked whole when it is opened (`open_shard`: readable, consistent, every code in [0, K)), so
a damaged or stale file fails with its path (and clip) rather than deep inside a training step. Why
safetensors: installed already, no pickle (safe to read), exact dtypes, memory-mapped loads; the
shard counts here are small, so litdata / webdataset (not installed) would add a dependency
without a gain.

Letters: r codebooks, T frames, L text tokens, Dt text width.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

INDEX_FILE = "index.json"
FORMAT = "siren-code-cache/1"


class CodeCacheError(RuntimeError):
    """A code cache is missing, incomplete, or was written by another codec."""


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _ordinary_mode(path: Path) -> None:
    """Gives a file the mode a plain open() would (0666 & ~umask); safetensors writes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_shard(
    path: Path,
    clips: list[dict[str, Any]],
    codec_sha256: str,
    *,
    n_codebooks: int | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Atomically write one shard.

    Args:
        path: final shard path (a `.tmp` sibling is written first, then renamed).
        clips: dicts with "id", "captions" (list[str]), "codes" (int [r, T]), "samples" (int) and
            optionally "text_states" (one float [L, Dt] tensor per caption). May be empty (a
            shard whose clips were all bad), which needs `n_codebooks`.
        codec_sha256: stored in the shard's metadata so resumed runs can check it.
        metadata: more string entries for the shard's metadata.
    """
    codes = [torch.as_tensor(c["codes"]) for c in clips]
    if not codes and n_codebooks is None:
        raise ValueError("write_shard: an empty shard needs n_codebooks")
    if any(
        int(c.min()) < torch.iinfo(torch.int16).min or int(c.max()) > torch.iinfo(torch.int16).max
        for c in codes
    ):
        raise CodeCacheError("codes do not fit int16")
    r = codes[0].shape[0] if codes else n_codebooks
    tensors = {
        "codes": (torch.cat(codes, dim=1) if codes else torch.zeros(r, 0))
        .to(torch.int16)
        .contiguous(),  # [r, sum T]
        "frames": torch.tensor([c.shape[1] for c in codes], dtype=torch.int64),
        "samples": torch.tensor([int(c["samples"]) for c in clips], dtype=torch.int64),
    }
    if clips and clips[0].get("text_states") is not None:
        states = [s for c in clips for s in c["text_states"]]
        tensors["text_states"] = torch.cat(states).to(torch.float16).contiguous()  # [sum L, Dt]
        tensors["text_lengths"] = torch.tensor([s.shape[0] for s in states], dtype=torch.int64)
    meta = {
        "clips": json.dumps([{"id": c["id"], "captions": list(c["captions"])} for c in clips]),
        "codec_sha256": codec_sha256,
        **(metadata or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    _ordinary_mode(tmp)
    os.replace(tmp, path)


def shard_metadata(path: Path) -> dict[str, str] | None:
    """A shard's metadata, read from its header only (None if the file is unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError):
        return None


def open_shard(path: Path, n_codebooks: int, codebook_size: int) -> dict[str, Any]:
    """Opens a shard and checks it whole: readable, consistent, every code in [0, codebook_size).

    Reads the codes once (a shard is a few MB); items later read their slices through the
    returned reader.

    Returns:
        {"reader": open safe_open, "keys": tensor names, "metadata", "clips" (list of
        {"id", "captions"}), "offsets" (n + 1 frame offsets), "samples" (n ints), and with
        caption states "text_offsets" and "caption_starts"}.

    Raises:
        CodeCacheError: naming the file, and the clip for a code out of range.
    """
    rewrite = "re-run `siren tokenize` with the same arguments to rewrite it"
    try:
        reader = safe_open(str(path), framework="pt")
        metadata = reader.metadata() or {}
        clips = json.loads(metadata["clips"])
        keys = set(reader.keys())
        frames = reader.get_tensor("frames")  # [n]
        samples = reader.get_tensor("samples")  # [n]
        codes = reader.get_tensor("codes").to(torch.int32)  # [r, sum T]
        text_lengths = reader.get_tensor("text_lengths") if "text_lengths" in keys else None
        text_rows = (
            reader.get_slice("text_states").get_shape()[0] if text_lengths is not None else 0
        )
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise CodeCacheError(
            f"code cache shard {path} is unreadable ({type(exc).__name__}: {exc}); {rewrite}"
        ) from None
    n = len(clips)
    problem = None
    if codes.dim() != 2 or codes.shape[0] != n_codebooks:
        problem = f"codes of shape {tuple(codes.shape)}, not [{n_codebooks}, T]"
    elif len(frames) != n or len(samples) != n:
        problem = f"{n} clips but {len(frames)} frame counts and {len(samples)} sample counts"
    elif int(frames.sum()) != codes.shape[1] or bool((frames < 0).any()):
        problem = f"frame counts summing to {int(frames.sum())} for {codes.shape[1]} frames"
    elif text_lengths is not None and (
        len(text_lengths) != sum(len(c["captions"]) for c in clips)
        or int(text_lengths.sum()) != text_rows
    ):
        problem = "caption states that do not match the captions"
    if problem is not None:
        raise CodeCacheError(f"code cache shard {path} is inconsistent ({problem}); {rewrite}")
    offsets = [0, *torch.cumsum(frames, 0).tolist()]
    bad = (codes < 0) | (codes >= codebook_size)  # [r, sum T]
    if bool(bad.any()):
        col = int(bad.any(0).nonzero()[0])
        row = int(bad[:, col].nonzero()[0])
        j = bisect.bisect_right(offsets, col) - 1
        raise CodeCacheError(
            f"code cache shard {path}: clip {clips[j]['id']!r} holds code {int(codes[row, col])} "
            f"(codebook {row}, frame {col - offsets[j]}), outside [0, {codebook_size}): the "
            f"shard is corrupt; {rewrite}"
        )
    data: dict[str, Any] = {
        "reader": reader,
        "keys": keys,
        "metadata": metadata,
        "clips": clips,
        "offsets": offsets,
        "samples": samples.tolist(),
    }
    if text_lengths is not None:
        data["text_offsets"] = [0, *torch.cumsum(text_lengths, 0).tolist()]
        caps = [len(c["captions"]) for c in clips]
        data["caption_starts"] = [sum(caps[:i]) for i in range(len(caps))]
    return data


def write_index(root: Path, index: dict[str, Any]) -> None:
    """Atomically write index.json."""
    tmp = root / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, root / INDEX_FILE)


class CodeCache(Sequence):
    """Reads a finished code cache.

    Args:
        root: the cache folder (with index.json).
        expected_codec_sha256: if given, a cache written by another codec is refused.

    Items: {"id": str, "codes": int16 [r, T], "captions": list[str], "samples": int} and
    "text_states": list of float [L, Dt] (one per caption) when the cache holds them.
    """

    def __init__(self, root: str | Path, expected_codec_sha256: str | None = None) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise CodeCacheError(
                f"no code cache at {self.root} ({INDEX_FILE} missing: run `siren tokenize`, or "
                f"let an interrupted run finish)"
            )
        self.index: dict[str, Any] = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT:
            raise CodeCacheError(f"{index_path}: unknown format {self.index.get('format')!r}")
        missing = [
            k
            for k in ("codec_sha256", "n_codebooks", "codebook_size", "shards")
            if k not in self.index
        ]
        if missing:
            raise CodeCacheError(f"{index_path}: lacks {missing}; re-run `siren tokenize`")
        found = self.index["codec_sha256"]
        if expected_codec_sha256 is not None and found != expected_codec_sha256:
            raise CodeCacheError(
                f"code cache {self.root} was written by codec {found[:16]}..., but the configured "
                f"codec is {expected_codec_sha256[:16]}...; re-run `siren tokenize` with this codec "
                f"or point to the matching cache"
            )
        self._starts: list[int] = []
        total = 0
        for shard in self.index["shards"]:
            self._starts.append(total)
            total += shard["num_clips"]
        self._len = total
        self._loaded: dict[int, dict[str, Any]] = {}

    @property
    def codec_sha256(self) -> str:
        return self.index["codec_sha256"]

    def __len__(self) -> int:
        return self._len

    def _shard(self, s: int) -> dict[str, Any]:
        """A shard's small metadata (offsets, clip ids, captions) and an open reader.

        Codes and text states stay in the file: each item reads its slice through the
        memory-mapped reader, so every process (DDP ranks, loader workers) reads the same files
        and shares the operating system's page cache instead of holding a copy of the cache.
        The shard is checked whole when it is first opened (`open_shard`).
        """
        if s not in self._loaded:
            entry = self.index["shards"][s]
            path = self.root / entry["file"]
            if not path.is_file():
                raise CodeCacheError(f"code cache shard missing: {path}")
            data = open_shard(path, self.index["n_codebooks"], self.index["codebook_size"])
            # The index lists what the shard held when the cache was finished; a shard that
            # differs was replaced since, and reading it would mix two caches.
            stale = len(data["clips"]) != entry["num_clips"] or (
                "manifest_sha256" in entry
                and data["metadata"].get("manifest_sha256") != entry["manifest_sha256"]
            )
            if stale:
                raise CodeCacheError(
                    f"code cache shard {path} does not match {self.root / INDEX_FILE} (it holds "
                    f"{len(data['clips'])} clips, the index lists {entry['num_clips']}, or its "
                    f"manifest hash differs): it was replaced after the cache was finished; "
                    f"re-run `siren tokenize`"
                )
            self._loaded[s] = data
        return self._loaded[s]

    def __getstate__(self) -> dict[str, Any]:
        # Open readers do not pickle (spawned loader workers): each process opens its own.
        state = self.__dict__.copy()
        state["_loaded"] = {}
        return state

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -self._len <= i < self._len:
            raise IndexError(f"code cache index {i} out of range ({self._len} clips)")
        i %= self._len
        s = bisect.bisect_right(self._starts, i) - 1
        j = i - self._starts[s]
        data = self._shard(s)
        a, b = data["offsets"][j], data["offsets"][j + 1]
        clip = data["clips"][j]
        reader = data["reader"]
        item = {
            "id": clip["id"],
            "codes": reader.get_slice("codes")[:, a:b],  # int16 [r, T]
            "captions": clip["captions"],
            "samples": int(data["samples"][j]),
        }
        if "text_states" in data["keys"]:
            c0, offs = data["caption_starts"][j], data["text_offsets"]
            states = reader.get_slice("text_states")
            item["text_states"] = [
                states[offs[c0 + k] : offs[c0 + k + 1]] for k in range(len(clip["captions"]))
            ]
        return item
