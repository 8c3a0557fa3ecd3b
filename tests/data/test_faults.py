"""Generator faults written into real clips (`data.faults`), checked against hand-made signals and
against the grader (`measure_attributes`), which the faults themselves never use."""

import math

import numpy as np
import pytest
import torch

from siren_lightning.data.faults import (
    add_envelope,
    add_fault,
    add_hole,
    add_run_on,
    add_wander,
    sounding_spans,
)
from siren_lightning.data.synthcaps import measure_attributes, synthesize

SR = 16_000


def _tone_bursts(bursts: list[tuple[float, float]], seconds: float = 2.0) -> torch.Tensor:
    """A 500 Hz tone (amplitude 0.5) on the given (start, end) seconds, silence elsewhere."""
    t = torch.arange(int(seconds * SR)) / SR
    x = torch.zeros_like(t)
    for a, b in bursts:
        on = (t >= a) & (t < b)
        x[on] = 0.5 * torch.sin(2 * math.pi * 500 * t[on])
    return x


def _clip(count: str, envelope: str, seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    attrs = {"source": "tone", "pitch": "medium", "count": count, "envelope": envelope}
    audio, _ = synthesize(attrs, seconds, np.random.default_rng(seed))
    return torch.from_numpy(audio)


def test_sounding_spans_finds_hand_placed_bursts():
    x = _tone_bursts([(0.2, 0.5), (0.9, 1.6)])
    spans = sounding_spans(x, SR)
    assert len(spans) == 2
    for (s, e), (a, b) in zip(spans, [(0.2, 0.5), (0.9, 1.6)], strict=True):
        assert abs(s / SR - a) <= 0.02 and abs(e / SR - b) <= 0.03
    assert sounding_spans(torch.zeros(SR), SR) == []


def test_a_hole_silences_the_inside_of_an_event_and_nothing_else():
    x = _tone_bursts([(0.2, 1.2)])
    spans = sounding_spans(x, SR)
    for seed in range(200):
        y = add_hole(x, SR, spans, torch.Generator().manual_seed(seed))
        changed = (y != x).nonzero().flatten()
        assert changed.numel() > 0.05 * SR  # at least one hole of 60 ms or more
        first, last = int(changed.min()), int(changed.max())
        assert first >= spans[0][0] + int(0.05 * SR) and last < spans[0][1] - int(0.05 * SR)
        assert (y.abs() <= x.abs()).all()  # only ever quieter
    y = add_hole(x, SR, spans, torch.Generator().manual_seed(0))
    # The grader, which the fault never consulted, now hears more than one event.
    assert measure_attributes(y.numpy(), SR)["onsets"] >= 2
    assert measure_attributes(x.numpy(), SR)["onsets"] == 1
    assert add_hole(_tone_bursts([(0.2, 0.3)]), SR, [(3200, 4800)], torch.Generator()) is None


def test_run_on_carries_the_last_event_to_the_clip_end():
    x = _tone_bursts([(0.2, 0.5), (0.8, 1.1)], seconds=2.0)
    spans = sounding_spans(x, SR)
    y = add_run_on(x, SR, spans, valid=x.numel())
    end = spans[-1][1] - int(0.005 * SR)
    assert torch.equal(y[:end], x[:end])
    tail = y[int(1.3 * SR) : int(1.9 * SR)]
    assert tail.pow(2).mean().sqrt() > 0.3  # the tone's RMS is 0.35; the original is silent here
    assert x[int(1.3 * SR) : int(1.9 * SR)].abs().max() == 0
    # An event that already reaches the clip's end has nothing to run on into.
    assert add_run_on(_tone_bursts([(0.2, 1.99)]), SR, [(3200, 31840)], valid=32000) is None


@pytest.mark.parametrize(
    ("own", "other"), [("steady", "fade_in"), ("fade_in", "steady"), ("fade_out", "fade_in")]
)
def test_the_envelope_fault_gives_the_clip_the_other_envelope(own, other):
    x = _clip("twice", own)
    assert measure_attributes(x.numpy(), SR)["envelope"] == own
    y = add_envelope(x, sounding_spans(x, SR), own, other)
    measured = measure_attributes(y.numpy(), SR)
    assert measured["envelope"] == other
    assert measured["count"] == "twice"  # the events stay where they were
    assert y.abs().max() == pytest.approx(float(x.abs().max()), rel=1e-5)
    assert add_envelope(x, sounding_spans(x, SR), own, own) is None


def test_wander_is_a_smooth_positive_gain_of_the_stated_size():
    x = torch.full((2 * SR,), 0.5)
    y = add_wander(x, SR, valid=x.numel(), generator=torch.Generator().manual_seed(0), sd_db=4.0)
    db = 20 * torch.log10(y / x)
    assert db.std() > 1.5 and db.abs().max() < 20
    # linear between knots 250 ms apart: no jump from one sample to the next over 0.01 dB
    assert db.diff().abs().max() < 0.01
    same = add_wander(x, SR, valid=x.numel(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, same)


def test_add_fault_is_seeded_and_skips_silence():
    x = _clip("twice", "fade_out")  # its last event ends at 7/8 of the clip
    kinds = set()
    for seed in range(12):
        a = add_fault(x, SR, x.numel(), torch.Generator().manual_seed(seed), "fade_out")
        b = add_fault(x, SR, x.numel(), torch.Generator().manual_seed(seed), "fade_out")
        assert a is not None and a[1] == b[1] and torch.equal(a[0], b[0])
        assert not torch.equal(a[0], x)
        kinds.add(a[1])
    assert kinds == {"hole", "run_on", "wander", "envelope"}
    assert add_fault(torch.zeros(SR), SR, SR, torch.Generator()) is None
    # without the envelope attribute the envelope fault is never drawn
    for seed in range(12):
        assert add_fault(x, SR, x.numel(), torch.Generator().manual_seed(seed))[1] != "envelope"
