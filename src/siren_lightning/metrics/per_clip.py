"""Per-clip scores: one row per generated clip, to find the clips that pull a metric down.

Letters: D embedding width.

Each row holds the clip id (and seed label when several seeds were scored), its caption, its
CLAP cosine with that caption, its KL against the reference clip of the same id (the
protocol's variant and both variants), the Euclidean distance of its FD-backbone embedding to
the mean embedding of the reference set, and, where the manifest states SynthCaps attributes,
whether the attributes measured from the audio agree with them (`synthcaps.measure_attributes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from siren_lightning.metrics.kl import _kl_per_pair

# The attributes `synthcaps.attribute_agreement` judges from audio.
JUDGED_ATTRIBUTES = ("pitch", "count", "envelope")


def _adherence(audio: Path | tuple[np.ndarray, int], stated: Mapping[str, Any]) -> dict[str, bool]:
    from siren_lightning.data.synthcaps import attribute_agreement, measure_attributes

    if isinstance(audio, tuple):
        samples, sr = audio
    else:
        samples, sr = sf.read(str(audio), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    return attribute_agreement(measure_attributes(np.asarray(samples), sr), stated)


def per_clip_scores(
    evaluator: Any,
    gen: Mapping[str, Mapping[str, Tensor]],
    ref: Mapping[str, Mapping[str, Tensor]],
    captions: Mapping[str, str] | None = None,
    attributes: Mapping[str, Mapping[str, Any]] | None = None,
    audio: Mapping[str, Path | tuple[np.ndarray, int]] | None = None,
    seed: str | None = None,
) -> list[dict[str, Any]]:
    """One row per generated clip.

    Args:
        evaluator: the `metrics.protocol.Evaluator` whose features these are.
        gen, ref: clip id -> features (``embedding``, ``logits``?, ``clap``?).
        captions: clip id -> caption (CLAP cosine).
        attributes: clip id -> the manifest's attributes (adherence, where it states the
            judged ones).
        audio: clip id -> the generated audio (a file, or (samples [N], rate)), for adherence.
        seed: the generation seed's label, written into each row when given.

    Returns:
        rows in the generated set's order.
    """
    captions, attributes, audio = captions or {}, attributes or {}, audio or {}
    ref_mean = torch.stack([f["embedding"] for f in ref.values()]).to(torch.float64).mean(0)
    ids = list(gen)
    text = {}
    clap = evaluator.clap_backbone
    scored = [k for k in ids if k in captions and "clap" in gen[k]]
    if clap is not None and scored:
        embedded = clap.embed_text([captions[k] for k in scored]).cpu().to(torch.float64)
        text = dict(zip(scored, embedded, strict=True))
    rows = []
    for k in ids:
        feats = gen[k]
        row: dict[str, Any] = {"id": k}
        if seed is not None:
            row["seed"] = seed
        if k in captions:
            row["caption"] = captions[k]
        if k in text:
            a = feats["clap"].to(torch.float64)
            row["clap_cosine"] = float(torch.nn.functional.cosine_similarity(a, text[k], dim=0))
        if "logits" in feats and k in ref:
            for variant in ("softmax", "sigmoid"):
                kl = _kl_per_pair(feats["logits"][None], ref[k]["logits"][None], variant)
                row[f"kl_{variant}"] = float(kl[0])
            row["kl"] = row[f"kl_{evaluator.protocol.kl_variant}"]
        distance = torch.linalg.vector_norm(feats["embedding"].to(torch.float64) - ref_mean)
        row["embedding_distance"] = float(distance)
        stated = attributes.get(k, {})
        if k in audio and all(a in stated for a in JUDGED_ATTRIBUTES):
            row["attributes"] = {a: stated[a] for a in JUDGED_ATTRIBUTES}
            row["adherence"] = _adherence(audio[k], stated)
        rows.append(row)
    return rows


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a per-clip JSONL file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def worst(
    rows: Iterable[Mapping[str, Any]], key: str = "clap_cosine", n: int = 10
) -> list[dict[str, Any]]:
    """The n rows worst on ``key`` (lowest CLAP cosine; highest KL or embedding distance)."""
    have = [dict(r) for r in rows if r.get(key) is not None]
    return sorted(have, key=lambda r: r[key], reverse=key != "clap_cosine")[:n]
