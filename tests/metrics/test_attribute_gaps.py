"""Attribute gaps: one attribute's caption words swapped at a time, checked against a reader of
the SynthCaps word tables (which value each caption names) and a fake LM that reads only one
attribute's words, so every gap is known by hand."""

import math
import re

import pytest
import torch
from text_lm_testing import TextLogitsLM

from siren_lightning.data.synthcaps import (
    COUNT_ADVERBS,
    COUNTS,
    ENVELOPE_PHRASES,
    ENVELOPES,
    NOUNS,
    PITCH_WORDS,
    all_combinations,
)
from siren_lightning.metrics.adherence import (
    attribute_captions,
    attribute_gaps,
    caption_ce,
)
from siren_lightning.text.encoder import TextStates

VALUES = {"pitch": ("low", "medium", "high"), "count": COUNTS, "envelope": ENVELOPES}
# What names each value, read off the word tables: the pitch bands also as "at a low pitch",
# the counts also as template 3's "a continuous ..." and "two ...s, each".
NAMES = {
    "pitch": {**{w: v for v, ws in PITCH_WORDS.items() for w in ws}, **{v: v for v in VALUES["pitch"]}},
    "count": {
        **{w: v for v, ws in COUNT_ADVERBS.items() for w in ws},
        "continuous": "continuous",
        "one": "once",
        "two": "twice",
        "three": "three_times",
    },
    "envelope": {w: v for v, ws in ENVELOPE_PHRASES.items() for w in ws},
}  # fmt: skip
# Whole words only ("three-note" is a noun, "continuously" an adverb), the longest phrase first.
PATTERNS = {
    key: re.compile(
        r"(?<![\w-])("
        + "|".join(sorted(map(re.escape, names), key=len, reverse=True))
        + r")(?![\w-])",
        re.IGNORECASE,
    )
    for key, names in NAMES.items()
}
TEMPLATE_3 = re.compile(r"^(a continuous |(one|two|three) (?!times?\b))", re.IGNORECASE)


def named(caption: str, key: str) -> str | None:
    """The value of `key` that the caption names (None when it names none); one at most."""
    values = {NAMES[key][m.lower()] for m in PATTERNS[key].findall(caption)}
    assert len(values) <= 1, (caption, key, values)
    return values.pop() if values else None


def skeleton(caption: str) -> str:
    """The caption with every attribute phrase masked: what the template and rng chose."""
    for key, pattern in PATTERNS.items():
        caption = pattern.sub(f"<{key}>", caption)
    return caption


def _clips(seeds=range(3)):
    combos = [dict(zip(("source", "pitch", "count", "envelope"), c)) for c in all_combinations()]
    return [c for _ in seeds for c in combos]


def test_swapped_captions_change_one_attribute_and_keep_the_wording():
    clips = _clips()
    got = attribute_captions(clips, rng_seed=3)
    assert len(got["own"]) == len(clips) and got["empty"] == [""] * len(clips)
    chosen = {key: set() for key in VALUES}
    for i, truth in enumerate(clips):
        own = got["own"][i]
        assert {k: named(own, k) for k in VALUES} == {k: truth[k] for k in VALUES}, own
        for key in VALUES:
            swapped = got[key][i]
            said = {k: named(swapped, k) for k in VALUES}
            assert said[key] != truth[key] and said[key] is not None, (own, swapped)
            assert {k: v for k, v in said.items() if k != key} == {
                k: truth[k] for k in VALUES if k != key
            }, (own, swapped)
            chosen[key].add((truth[key], said[key]))
            if key != "count":  # the same template and words, bar the attribute's own
                assert skeleton(swapped) == skeleton(own), (own, swapped)
            elif TEMPLATE_3.match(own) or TEMPLATE_3.match(swapped):  # counted nouns: "two beeps"
                assert TEMPLATE_3.match(own) and TEMPLATE_3.match(swapped), (own, swapped)
            else:
                assert skeleton(swapped) == skeleton(own), (own, swapped)
    for key, values in VALUES.items():  # every other value is drawn as a replacement
        assert chosen[key] == {(a, b) for a in values for b in values if a != b}
    nouns = {n for forms in NOUNS.values() for form in forms for n in form}
    assert any(n in own for own in got["own"] for n in nouns)  # the reader saw real captions


def test_captions_are_deterministic_in_the_seed():
    clips = _clips(seeds=[0])
    assert attribute_captions(clips, rng_seed=5) == attribute_captions(clips, rng_seed=5)
    other = attribute_captions(clips, rng_seed=6)
    assert other["own"] != attribute_captions(clips, rng_seed=5)["own"]


class _AttributeText:
    """A caption -> one token: 5 x one-hot of the value of `key` it names (zeros if none)."""

    def __init__(self, key: str):
        self.key = key

    def encode(self, captions):
        states = torch.zeros(len(captions), 1, len(VALUES[self.key]))
        for b, caption in enumerate(captions):
            value = named(caption, self.key)
            if value is not None:
                states[b, 0, VALUES[self.key].index(value)] = 5.0
        return TextStates(states, torch.ones(len(captions), 1, dtype=torch.bool), states[:, 0])


def _reader() -> TextLogitsLM:
    """Codebook 0's logits are the text state; codebook 1 is text-blind."""
    return TextLogitsLM(blind_books=1)


@pytest.mark.parametrize("key", ["pitch", "count", "envelope"])
def test_a_model_that_reads_one_attribute_shows_a_gap_there_alone(key):
    clips = _clips(seeds=[0])[::23]  # 11 clips of mixed combinations
    # Codebook 0 of each clip is its true value of `key` at every frame; codebook 1 is code 0.
    codes = []
    for i, attrs in enumerate(clips):
        c = torch.zeros(2, 3 + i % 4, dtype=torch.long)
        c[0] = VALUES[key].index(attrs[key])
        codes.append(c)
    got = attribute_gaps(_reader(), _AttributeText(key), codes, clips, rng_seed=1, batch_size=4)
    k = len(VALUES[key])
    # By hand: own caption, logit 5 on the right code -> CE log(1 + (k-1) e^-5); a swapped value
    # puts the 5 on a wrong code -> CE log(e^5 + k - 1); the empty caption -> log k.
    own = math.log(1 + (k - 1) * math.exp(-5))
    expected = {row: 0.0 for row in VALUES}
    expected[key] = math.log(math.exp(5) + k - 1) - own
    expected["empty"] = math.log(k) - own
    assert got["own"] == pytest.approx([own, math.log(k)], abs=1e-5)
    for row, gap in expected.items():
        assert got[row]["gap"] == pytest.approx([gap, 0.0], abs=1e-5), row
        assert got[row]["mean"] == pytest.approx(gap / 2, abs=1e-5), row
    assert got["codebooks"] == [0, 1] and got["n"] == len(clips) and got["seed"] == 1
    again = attribute_gaps(_reader(), _AttributeText(key), codes, clips, rng_seed=1, batch_size=4)
    assert again == got  # deterministic
    whole = attribute_gaps(_reader(), _AttributeText(key), codes, clips, rng_seed=1)
    assert whole[key]["gap"] == pytest.approx(got[key]["gap"], abs=1e-5)  # batching aside


def test_caption_ce_is_the_mean_over_clips_of_each_caption_set():
    # Codebook 0 is code 0 ("steady") everywhere: the steady phrase puts logit 5 on it, the empty
    # caption none; text-blind codebook 1 is log 3 under both.
    codes = [torch.zeros(2, 2 + i, dtype=torch.long) for i in range(5)]
    text = _AttributeText("envelope")
    steady = ENVELOPE_PHRASES["steady"][0]
    ce, books = caption_ce(_reader(), text, codes, [[steady] * 5, [""] * 5], batch_size=2)
    assert books == [0, 1]
    right = math.log(1 + 2 * math.exp(-5))
    assert ce.flatten().tolist() == pytest.approx([right, math.log(3), math.log(3), math.log(3)])
    with pytest.raises(ValueError, match="one caption per clip"):
        caption_ce(_reader(), text, codes, [[steady] * 4])
