"""Per-clip rows against hand computations, and attribute adherence on synthesized clips."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from siren_lightning.data.synthcaps import synthesize
from siren_lightning.metrics.per_clip import per_clip_scores, read_jsonl, worst, write_jsonl
from siren_lightning.metrics.protocol import PRESETS


class _Text:
    """A stand-in CLAP: caption i -> a fixed vector."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        return torch.stack([self.table[c] for c in captions])


def test_rows_match_hand_computations(tmp_path):
    evaluator = SimpleNamespace(
        protocol=PRESETS["tiny"],
        clap_backbone=_Text({"up": torch.tensor([1.0, 0.0]), "diag": torch.tensor([1.0, 1.0])}),
    )
    gen = {
        "a": {
            "embedding": torch.tensor([3.0, 4.0]),
            "logits": torch.tensor([0.0, 1.0, 2.0]),
            "clap": torch.tensor([2.0, 0.0]),
        },
        "b": {
            "embedding": torch.tensor([0.0, 0.0]),
            "logits": torch.tensor([1.0, 1.0, 1.0]),
            "clap": torch.tensor([0.0, 3.0]),
        },
    }
    ref = {
        "a": {"embedding": torch.tensor([0.0, 2.0]), "logits": torch.tensor([2.0, 0.0, 0.0])},
        "b": {"embedding": torch.tensor([2.0, 0.0]), "logits": torch.tensor([1.0, 1.0, 1.0])},
    }
    rows = per_clip_scores(evaluator, gen, ref, {"a": "up", "b": "diag"}, seed="s1")
    a, b = rows
    assert a["id"] == "a" and a["seed"] == "s1" and a["caption"] == "up"
    assert a["clap_cosine"] == pytest.approx(1.0) and b["clap_cosine"] == pytest.approx(1 / 2**0.5)
    # KL(p_ref || p_gen) with the protocol's +1e-6, softmax variant, for clip a.
    p, q = (
        np.exp([2.0, 0, 0]) / np.exp([2.0, 0, 0]).sum(),
        np.exp([0, 1.0, 2]) / np.exp([0, 1.0, 2]).sum(),
    )
    assert (
        a["kl"]
        == a["kl_softmax"]
        == pytest.approx(float(np.sum(p * (np.log(p) - np.log(q + 1e-6)))))
    )
    assert b["kl_softmax"] == pytest.approx(0.0, abs=1e-5)  # equal logits: 0 up to the epsilon
    # Distance to the reference mean (1, 1): |(3, 4) - (1, 1)| = sqrt(13), |(0, 0) - (1, 1)|.
    assert a["embedding_distance"] == pytest.approx(math.sqrt(13.0))
    assert b["embedding_distance"] == pytest.approx(math.sqrt(2.0))
    assert "adherence" not in a  # no attributes stated
    path = write_jsonl(rows, tmp_path / "x" / "per_clip.jsonl")
    assert read_jsonl(path) == rows
    assert [r["id"] for r in worst(rows, "clap_cosine", 1)] == ["b"]
    assert [r["id"] for r in worst(rows, "embedding_distance", 2)] == ["a", "b"]


def test_adherence_is_measured_from_the_audio(tmp_path):
    rng = np.random.default_rng(0)
    attrs = {"source": "tone", "pitch": "high", "count": "twice", "envelope": "steady"}
    audio, _ = synthesize(attrs, 2.0, rng, sample_rate=16000)
    sf.write(tmp_path / "c.wav", audio, 16000)
    evaluator = SimpleNamespace(protocol=PRESETS["tiny"], clap_backbone=None)
    feats = {"c": {"embedding": torch.zeros(2)}}
    stated = {"c": attrs, "d": attrs}
    right = per_clip_scores(evaluator, feats, feats, None, stated, {"c": tmp_path / "c.wav"})[0]
    assert right["adherence"] == {"pitch": True, "count": True, "envelope": True, "all": True}
    wrong = {"c": {**attrs, "pitch": "low", "count": "three_times"}}
    row = per_clip_scores(evaluator, feats, feats, None, wrong, {"c": (audio, 16000)})[0]
    assert row["adherence"] == {"pitch": False, "count": False, "envelope": True, "all": False}
    assert row["attributes"] == {"pitch": "low", "count": "three_times", "envelope": "steady"}
