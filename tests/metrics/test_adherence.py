"""Adherence and text gap against hand-made cases, and a text gap that fails when text is ignored."""

import math

import numpy as np
import pytest
import torch
from text_lm_testing import TextLogitsLM
from torch import nn

from siren_lightning.data.synthcaps import synthesize
from siren_lightning.metrics.adherence import (
    adherence,
    caption_ce,
    mismatched_partners,
    text_gap,
)
from siren_lightning.models.siren import SirenConfig, SirenLM
from siren_lightning.text.encoder import TextStates

SR = 16_000


def _clip(attrs, seed):
    audio, _ = synthesize(attrs, 3.0, np.random.default_rng(seed), sample_rate=SR)
    return audio


def test_adherence_counts_matches_by_hand():
    truth = [
        {"source": "tone", "pitch": "low", "count": "twice", "envelope": "steady"},
        {"source": "chord", "pitch": "high", "count": "three_times", "envelope": "fade_out"},
        {"source": "tone", "pitch": "medium", "count": "once", "envelope": "fade_in"},
    ]
    audios = [_clip(a, i) for i, a in enumerate(truth)]
    stated = [dict(a) for a in truth]
    stated[1]["pitch"] = "low"  # clip 1: pitch wrong
    stated[2]["count"] = "twice"  # clip 2: count wrong
    stated[2]["envelope"] = "fade_out"  # and envelope wrong
    got = adherence(audios, stated, SR)
    assert got["pitch"] == pytest.approx(2 / 3)
    assert got["count"] == pytest.approx(2 / 3)
    assert got["envelope"] == pytest.approx(2 / 3)
    assert got["mean"] == pytest.approx(2 / 3)
    assert got["all"] == pytest.approx(1 / 3)  # only clip 0 has all three right
    assert [c["all"] for c in got["per_clip"]] == [True, False, False]
    assert adherence(audios, truth, SR)["all"] == 1.0


def test_partners_have_another_combination_and_are_deterministic():
    a = {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"}
    b = {**a, "pitch": "high"}
    attrs = [a, a, b, a]
    assert mismatched_partners(attrs) == [2, 2, 3, 2]
    with pytest.raises(ValueError, match="same attribute combination"):
        mismatched_partners([a, a])


class _NumberText:
    """Caption "s=3.0" -> one token whose state is [0, 3.0]: `TextLogitsLM`'s logits."""

    def encode(self, captions):
        s = torch.tensor([float(c.split("=")[1]) for c in captions])
        states = torch.stack([torch.zeros_like(s), s], -1)[:, None]  # [B, 1, 2]
        return TextStates(states, torch.ones(len(captions), 1, dtype=torch.bool), states[:, 0])


def test_text_gap_by_hand():
    base = {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"}
    attrs = [base, {**base, "count": "twice"}]
    codes = [torch.ones(1, 5, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)]
    got = text_gap(TextLogitsLM(), _NumberText(), codes, ["s=3", "s=0"], attrs)
    # CE of code 1 under logits [0, s] is log(1 + e^-s). Clip 0: own s=3, other (clip 1) s=0;
    # clip 1: own s=0, other s=3.
    own = (math.log(1 + math.exp(-3)) + math.log(2)) / 2
    other = (math.log(2) + math.log(1 + math.exp(-3))) / 2
    assert got["own"] == pytest.approx([own]) and got["other"] == pytest.approx([other])
    assert got["gap"] == pytest.approx([0.0], abs=1e-7)
    one_sided = text_gap(TextLogitsLM(), _NumberText(), codes, ["s=3", "s=3"], attrs)
    assert one_sided["gap"] == pytest.approx([0.0], abs=1e-7)  # same caption: no gap
    # Clip 0 is all code 1 with caption s=5, clip 1 all code 0 with s=-5: each caption makes its
    # own clip likely, so each swap costs log(1 + e^5) - log(1 + e^-5) = 5 nats exactly.
    codes = [torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)]
    better = text_gap(TextLogitsLM(), _NumberText(), codes, ["s=5", "s=-5"], attrs)
    assert better["gap"] == pytest.approx([5.0], abs=1e-5)
    assert better["own"] == pytest.approx([math.log(1 + math.exp(-5))])


def test_text_gap_under_control_by_hand():
    # Logits [0, s] + control [c0, c1] per frame: clip 0 is code 1 over 2 frames under s=3,
    # clip 1 code 1 over 1 frame under s=0; the captions swap, each clip's curve stays.
    base = {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"}
    attrs = [base, {**base, "count": "twice"}]
    codes = [torch.ones(1, 2, dtype=torch.long), torch.ones(1, 1, dtype=torch.long)]
    curves = [torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[0.0, -1.0]])]  # [T_i, K]
    got = text_gap(TextLogitsLM(), _NumberText(), codes, ["s=3", "s=0"], attrs, controls=curves)

    def ce(s, c0, c1):  # CE of code 1 under logits [c0, s + c1]
        return math.log(1 + math.exp(c0 - s - c1))

    own = ((ce(3, 0, 1) + ce(3, 2, 0)) / 2 + ce(0, 0, -1)) / 2
    other = ((ce(0, 0, 1) + ce(0, 2, 0)) / 2 + ce(3, 0, -1)) / 2
    assert got["own"] == pytest.approx([own], abs=1e-6)
    assert got["other"] == pytest.approx([other], abs=1e-6)
    assert got["gap"] == pytest.approx([other - own], abs=1e-6)
    plain = text_gap(TextLogitsLM(), _NumberText(), codes, ["s=3", "s=0"], attrs)
    assert plain["gap"] != pytest.approx(got["gap"])  # the curves are read
    # Each caption set with its own curves: set 1 reads clip 0 under s=0 and [[1, 0], [0, 2]].
    other_curves = [torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0]])]
    sets = [["s=3", "s=0"], ["s=0", "s=3"]]
    both, _ = caption_ce(
        TextLogitsLM(), _NumberText(), codes, sets, control_sets=[curves, other_curves]
    )
    other_with_its_curves = ((ce(0, 1, 0) + ce(0, 0, 2)) / 2 + ce(3, 3, 0)) / 2
    assert both[:, 0].tolist() == pytest.approx([own, other_with_its_curves], abs=1e-6)
    with pytest.raises(ValueError, match="one control set per caption set"):
        caption_ce(TextLogitsLM(), _NumberText(), codes, sets, control_sets=[curves])


class _TableText:
    """Each caption gets its own fixed random token states."""

    def __init__(self, captions, dim=12):
        g = torch.Generator().manual_seed(0)
        self.table = {c: torch.randn(3, dim, generator=g) for c in captions}

    def encode(self, captions):
        states = torch.stack([self.table[c] for c in captions])
        mask = torch.ones(states.shape[:2], dtype=torch.bool)
        return TextStates(states, mask, states.mean(1))


def _overfit_gap(shuffle: bool) -> float:
    torch.manual_seed(0)
    config = SirenConfig(
        num_codebooks=4, codebook_size=8, latent_dim=8, group=2, width=32, num_heads=4,
        temporal_layers=1, decoder_layers=1, text_dim=12, mlp_hidden=64, dropout=0.0,
        max_frames=16, bias=False,
    )  # fmt: skip
    model = SirenLM(config, torch.randn(4, 8, 8))
    captions = ["low steady", "high steady", "low twice", "high twice"]
    g = torch.Generator().manual_seed(1)
    # Each caption's clip is one random code sequence: only the text says which at frame 0.
    codes = torch.randint(0, 8, (4, 4, 3), generator=g)  # [B, r, T]
    attrs = [{"source": "tone", "pitch": c.split()[0], "count": c.split()[1]} for c in captions]
    text = _TableText(captions)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        # Shuffled anew at every step, a caption carries nothing about its clip.
        order = torch.randperm(4, generator=g) if shuffle else torch.arange(4)
        enc = text.encode([captions[i] for i in order])
        logits = model(codes, enc.states, enc.mask).logits  # [B, r, T, K]
        loss = nn.functional.cross_entropy(logits.flatten(0, 2), codes.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return text_gap(model, text, list(codes), captions, attrs)["gap"][0]


def test_text_gap_separates_a_model_that_reads_its_text_from_one_that_cannot():
    # Trained with the right captions, the wrong caption costs nats on codebook 0 (whose frame
    # 0 only the text can tell); trained with captions shuffled at every step, it costs nothing.
    assert _overfit_gap(shuffle=False) > 1.0
    assert abs(_overfit_gap(shuffle=True)) < 0.3
