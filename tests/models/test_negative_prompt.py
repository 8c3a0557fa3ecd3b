"""Negative prompts (issue 18): the negative caption is the unconditional branch of guidance."""

import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import make_model

from siren_lightning.models import sampling
from siren_lightning.models.sampling import generate_for_captions
from siren_lightning.text.encoder import TextStates


class WordEncoder:
    """A stand-in text encoder: one fixed random 12-d vector per word (the empty caption has
    one token of its own), padded and masked per batch, in float64."""

    def __init__(self):
        self.table: dict[str, torch.Tensor] = {}

    def _vector(self, word: str) -> torch.Tensor:
        if word not in self.table:
            g = torch.Generator().manual_seed(len(self.table) + 11)
            self.table[word] = torch.randn(12, generator=g, dtype=torch.float64)
        return self.table[word]

    def encode(self, captions: list[str]) -> TextStates:
        words = [c.split() or ["<empty>"] for c in captions]
        length = max(len(w) for w in words)
        states = torch.zeros(len(captions), length, 12, dtype=torch.float64)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                states[i, j], mask[i, j] = self._vector(w), True
        return TextStates(states, mask, states.sum(1) / mask.sum(1, keepdim=True))


def _recorded_logits(monkeypatch, model, encoder, captions, negatives, frames, scale):
    """Greedy generation; returns its codes and every mixed logit row the sampler drew from."""
    seen: list[torch.Tensor] = []

    def greedy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return logits.argmax(dim=-1)

    monkeypatch.setattr(sampling, "sample_logits", greedy)
    codes = generate_for_captions(
        model, encoder, captions, frames, negative_captions=negatives, cfg_scale=scale
    )
    return codes, seen


def _teacher_forced(model, encoder, captions, codes):
    text = encoder.encode(captions)
    return model(codes, text.states, text.mask).logits  # [B, r, T, K]


@pytest.mark.parametrize("kind", ["siren", "delay"])
def test_guided_logits_follow_the_negative_caption_formula(monkeypatch, kind):
    model = (make_model() if kind == "siren" else make_delay_model()).double()
    encoder = WordEncoder()
    captions = ["high beep twice", "low hum"]
    negatives = ["noise burst loud", ""]  # per clip; "" keeps the empty caption
    scale, frames = 3.0, 4
    codes, seen = _recorded_logits(monkeypatch, model, encoder, captions, negatives, frames, scale)
    # Independent reference: teacher-forced logits of the drawn codes under each prompt.
    cond = _teacher_forced(model, encoder, captions, codes)
    neg = _teacher_forced(model, encoder, negatives, codes)
    expected = neg + scale * (cond - neg)  # [B, r, T, K]
    r = codes.shape[1]
    if kind == "siren":  # one draw per frame and codebook, in order
        got = torch.stack(seen).view(frames, r, 2, -1).permute(2, 1, 0, 3)
    else:  # one draw per delay step of every active codebook; codebook q at step t + q
        got = torch.empty_like(expected)
        for s, rows in enumerate(seen):
            active = [q for q in range(r) if 0 <= s - q < frames]
            rows = rows.view(2, len(active), -1)
            for i, q in enumerate(active):
                got[:, q, s - q] = rows[:, i]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    # The negative caption made a difference: with the empty caption the rows differ.
    empty = _teacher_forced(model, encoder, ["", ""], codes)
    assert (empty[0] - neg[0]).abs().max() > 1e-3
    torch.testing.assert_close(neg[1], empty[1], rtol=0, atol=1e-12)  # "" is the empty caption


def test_negative_captions_must_match_the_captions():
    with pytest.raises(ValueError, match="1 negative captions for 2 captions"):
        generate_for_captions(
            make_model(), WordEncoder(), ["a", "b"], 2, negative_captions=["c"], cfg_scale=3.0
        )
