"""Generator faults written into real clips: what a reward must learn to rank below the clip.

A stage-2 reward only matters through how it ranks the samples of one caption (GRPO compares
samples within a group). The tiny Sirens' samples go wrong in a few recurring ways (docs/model.md
"Events that do not end", "Contrasted captions"): silent holes inside an event, an event that runs
on to the end of the clip, a level that wanders, and a fade that comes out steady. A reward
trained only on real clips never sees these, and ranks such samples at chance (docs/align.md
"The clean judges"). `add_fault` writes one of them into a real clip, so that a reward can be
taught, clip by clip, to prefer the clip to its faulted copy (`TinyCLAPModule(fault_loss_weight)`).

The faults are placed with their own simple event detector (`sounding_spans`), not with the
grader's (`data.synthcaps.measure_attributes`), and every label comes from how the fault was
made: the reward is never fitted to the grader's judgements.

Letters: N samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from siren_lightning.data.synthcaps import ENVELOPES, _gain

FAULTS = ("hole", "run_on", "wander", "envelope")
HOP_S = 0.01  # the detector's frame hop
EDGE_S = 0.005  # raised-cosine edges on every cut, as SynthCaps' own events have


def sounding_spans(
    audio: Tensor, sample_rate: int, threshold: float = 0.05, min_gap_s: float = 0.03
) -> list[tuple[int, int]]:
    """Sample spans [start, end) where a clip sounds: 20 ms RMS frames over `threshold` x the
    loudest frame, gaps shorter than `min_gap_s` closed, spans under 40 ms dropped.

    audio: [N]. Returns spans in samples, in order.
    """
    hop = max(int(HOP_S * sample_rate), 1)
    win = 2 * hop
    x = audio.detach().float()
    if x.numel() < win:
        return []
    rms = x.unfold(0, win, hop).pow(2).mean(-1).sqrt()  # [F]
    if float(rms.max()) <= 0:
        return []
    on = (rms > threshold * rms.max()).tolist()
    spans: list[list[int]] = []
    for i, v in enumerate(on):
        if not v:
            continue
        if spans and (i - spans[-1][1]) * HOP_S < min_gap_s:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    out = []
    for s, e in spans:
        if (e - s) * HOP_S >= 0.04:
            out.append((s * hop, min(e * hop + win - hop, x.numel())))
    return out


def _edge(n: int, device: torch.device) -> Tensor:
    """A raised-cosine ramp 0 -> 1 over n samples."""
    return 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, n, device=device))


def add_hole(
    audio: Tensor, sample_rate: int, spans: list[tuple[int, int]], generator: torch.Generator
) -> Tensor | None:
    """1-3 silent holes of 60-250 ms inside events (at least 50 ms from their edges)."""
    margin = int(0.05 * sample_rate)
    out = audio.clone()
    holes = 0
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        length = int(sample_rate * (0.06 + 0.19 * float(torch.rand(1, generator=generator))))
        room = [(s, e) for s, e in spans if e - s >= length + 2 * margin]
        if not room:
            break
        s, e = room[int(torch.randint(len(room), (1,), generator=generator))]
        start = (
            s
            + margin
            + int(torch.randint(e - s - length - 2 * margin + 1, (1,), generator=generator))
        )
        edge = int(EDGE_S * sample_rate)
        gain = torch.zeros(length, device=audio.device)
        gain[:edge] = _edge(edge, audio.device).flip(0)
        gain[-edge:] = _edge(edge, audio.device)
        out[start : start + length] *= gain
        holes += 1
    return out if holes else None


def add_run_on(
    audio: Tensor, sample_rate: int, spans: list[tuple[int, int]], valid: int
) -> Tensor | None:
    """The last event goes on to the clip's end: its last 200 ms repeated, with soft splices.

    None when the last event already ends in the clip's last 10%.
    """
    if not spans:
        return None
    s, e = spans[-1]
    edge = int(EDGE_S * sample_rate)
    e = e - edge  # leave the event's own fade-out edge behind
    if valid - e < 0.1 * valid or e - s < 4 * edge:
        return None
    loop = audio[max(s, e - int(0.2 * sample_rate)) : e]
    fill = loop.repeat(math.ceil((valid - e) / loop.numel()))[: valid - e].clone()
    # soften every splice of the loop, and the clip's new end
    ramp = _edge(edge, audio.device)
    for k in range(0, fill.numel(), loop.numel()):
        m = min(edge, fill.numel() - k)
        fill[k : k + m] *= ramp[:m]
    fill[-edge:] *= ramp.flip(0)[: min(edge, fill.numel())]
    out = audio.clone()
    out[e:valid] = fill
    return out


def add_wander(
    audio: Tensor, sample_rate: int, valid: int, generator: torch.Generator, sd_db: float = 4.0
) -> Tensor:
    """The level wanders: a gain in dB through random knots every 250 ms (sd `sd_db`)."""
    step = int(0.25 * sample_rate)
    knots = sd_db * torch.randn(valid // step + 2, generator=generator).to(audio.device)
    pos = torch.arange(valid, device=audio.device) / step
    i = pos.floor().long()
    frac = pos - i
    db = knots[i] * (1 - frac) + knots[i + 1] * frac
    out = audio.clone()
    out[:valid] *= torch.pow(10.0, db / 20)
    return out


def _ramp(envelope: str, n: int, like: Tensor) -> Tensor:
    """SynthCaps' gain over one event of n samples (`synthcaps._gain`), as `like`'s dtype."""
    return torch.as_tensor(_gain(envelope, n).copy()).to(like)  # fade_out is a reversed view


def add_envelope(
    audio: Tensor, spans: list[tuple[int, int]], envelope: str, other: str
) -> Tensor | None:
    """Every event re-shaped from the clip's `envelope` to `other` (SynthCaps' fade ramps)."""
    if not spans or envelope == other:
        return None
    out = audio.clone()
    for s, e in spans:
        out[s:e] *= _ramp(other, e - s, audio) / _ramp(envelope, e - s, audio)
    peak = audio.abs().max()
    return out * (peak / out.abs().max().clamp_min(1e-9))  # the clip's own peak, as SynthCaps sets


def add_fault(
    audio: Tensor,
    sample_rate: int,
    valid: int,
    generator: torch.Generator,
    envelope: str | None = None,
) -> tuple[Tensor, str] | None:
    """One fault, drawn among those that apply to the clip, written into a copy of it.

    Args:
        audio: [N] the clip (padded past `valid`).
        valid: its real samples.
        envelope: the clip's SynthCaps envelope (`steady`, `fade_in`, `fade_out`); the
            `envelope` fault needs it.

    Returns:
        (the faulted copy [N], the fault's name), or None when no fault applies (silence).
    """
    spans = sounding_spans(audio[:valid], sample_rate)
    if not spans:
        return None
    order = torch.randperm(len(FAULTS), generator=generator).tolist()
    for kind in (FAULTS[i] for i in order):
        if kind == "hole":
            out = add_hole(audio, sample_rate, spans, generator)
        elif kind == "run_on":
            out = add_run_on(audio, sample_rate, spans, valid)
        elif kind == "wander":
            out = add_wander(audio, sample_rate, valid, generator)
        else:
            if envelope is None:
                continue
            others = [v for v in ENVELOPES if v != envelope]
            other = others[int(torch.randint(len(others), (1,), generator=generator))]
            out = add_envelope(audio, spans, envelope, other)
        if out is not None:
            return out, kind
    return None
