"""Does a model follow its caption? Measures on SynthCaps-style data (DESIGN.md section 4).

- **Adherence**: generate from held-out captions at their clips' own durations, recover pitch
  band, onset count and envelope direction from the audio by signal processing
  (`measure_attributes`), and count how often each matches the caption's attributes. Chance is
  about 1/3 (pitch), 1/4 (count) and 1/3 (envelope); the codec's resynthesis is the ceiling.
- **Text gap**: teacher-forced cross-entropy of the true codes under a caption of a *different*
  attribute combination minus under the clip's own caption, per codebook. Near 0 means the LM
  ignores its text (it learned to continue audio, not to follow the caption).
- **Attribute gaps**: the same with one attribute's words swapped at a time (pitch, count,
  envelope; the others kept true and the wording kept), and with the empty caption. The
  combination swap changes every attribute at once, so it hides which words the LM reads.

Letters: B clips, r codebooks, n predicted codebooks, T frames, L text tokens, Dt text width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from siren_lightning.data.loudness import pad_curves
from siren_lightning.data.synthcaps import (
    ATTRIBUTES,
    COUNTS,
    ENVELOPES,
    PITCH_RANGES_HZ,
    attribute_agreement,
    make_caption,
    measure_attributes,
)

JUDGED = ("pitch", "count", "envelope")
# Chance of a uniform guess per judged attribute: 3 pitch bands, 4 counts, 3 envelopes.
CHANCE = {"pitch": 1 / 3, "count": 1 / 4, "envelope": 1 / 3}


def has_attributes(attributes: Sequence[dict[str, Any] | None]) -> bool:
    """True when every clip states the judged attributes (SynthCaps manifests do)."""
    return bool(attributes) and all(a and all(k in a for k in JUDGED) for a in attributes)


def adherence(
    audios: Sequence[np.ndarray | Tensor], attributes: Sequence[dict[str, Any]], sample_rate: int
) -> dict[str, Any]:
    """Fraction of clips whose measured attributes match their stated ones.

    Args:
        audios: one waveform [N_i] per clip.
        attributes: one dict per clip with at least "pitch", "count", "envelope".

    Returns:
        {"pitch", "count", "envelope": fractions; "mean": their mean; "all": fraction of clips
        with all three right; "n": clips; "per_clip": one {attribute: bool} dict per clip}.
    """
    if len(audios) != len(attributes) or not audios:
        raise ValueError(f"adherence: {len(audios)} clips for {len(attributes)} attribute sets")
    per_clip = []
    for audio, stated in zip(audios, attributes, strict=True):
        wave = audio.detach().cpu().float().numpy() if isinstance(audio, Tensor) else audio
        per_clip.append(attribute_agreement(measure_attributes(wave, sample_rate), stated))
    out: dict[str, Any] = {k: float(np.mean([c[k] for c in per_clip])) for k in JUDGED}
    out["mean"] = float(np.mean([out[k] for k in JUDGED]))
    out["all"] = float(np.mean([c["all"] for c in per_clip]))
    out["n"] = len(per_clip)
    out["per_clip"] = per_clip
    return out


def mismatched_partners(attributes: Sequence[dict[str, Any]]) -> list[int]:
    """For clip i, the first clip after it (cyclically) with another attribute combination.

    Deterministic, so the text gap of two models is measured on the same caption pairs.

    Raises:
        ValueError: when every clip has the same combination (no gap can be measured).
    """
    combos = [tuple(a.get(k) for k in ATTRIBUTES) for a in attributes]
    n = len(combos)
    partners = []
    for i in range(n):
        j = next((j % n for j in range(i + 1, i + n) if combos[j % n] != combos[i]), None)
        if j is None:
            raise ValueError("text gap: every clip has the same attribute combination")
        partners.append(j)
    return partners


@torch.no_grad()
def codebook_ce(
    network: torch.nn.Module,
    codes: Tensor,
    mask: Tensor,
    text_states: Tensor,
    text_mask: Tensor,
    control: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Teacher-forced cross-entropy of every clip and codebook.

    Args:
        codes: [B, r, T] long; mask: [B, T] bool; text_states: [B, L, Dt]; text_mask: [B, L].
        control: [B, T, C] per-frame control (LMs with `control_dim` > 0).

    Returns:
        ce [B, n] (mean over each clip's valid frames) and the n codebook indices.
    """
    given = {} if control is None else {"control": control}
    out = network(codes, text_states, text_mask, mask, **given)
    logits = out.logits.float()  # [B, n, T, K]
    targets = codes[:, out.codebooks]  # [B, n, T]
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 2), targets.flatten(), reduction="none"
    ).view(targets.shape)
    weights = out.mask.to(ce.dtype)
    return (ce * weights).sum(-1) / weights.sum(-1).clamp_min(1.0), torch.tensor(out.codebooks)


@torch.no_grad()
def caption_ce(
    network: torch.nn.Module,
    text_encoder: Any,
    codes: Sequence[Tensor],
    caption_sets: Sequence[Sequence[str]],
    batch_size: int = 16,
    control_sets: Sequence[Sequence[Tensor]] | None = None,
) -> tuple[Tensor, list[int]]:
    """Mean teacher-forced CE over clips of the same codes under each of S caption sets.

    Clips are padded into batches of `batch_size`; every batch is scored once per caption set.

    Args:
        network: an LM (`SirenLM` or `DelayPatternLM`) returning `SirenOutput`.
        text_encoder: `encode(list[str]) -> TextStates`.
        codes: one [r, T_i] long tensor per clip (whole clips).
        caption_sets: S lists, each with one caption per clip.
        control_sets: S lists, each with one per-frame control curve [T_i] or [T_i, C] per
            clip (LMs with `control_dim` > 0), read with the caption set of the same place.

    Returns:
        ce [S, n] (nats, mean over clips) and the n codebook indices.
    """
    if any(len(captions) != len(codes) for captions in caption_sets):
        raise ValueError(f"caption_ce: every caption set needs one caption per clip ({len(codes)})")
    if control_sets is not None and (
        len(control_sets) != len(caption_sets) or any(len(c) != len(codes) for c in control_sets)
    ):
        raise ValueError("caption_ce: one control set per caption set, one curve per clip")
    device = network.codebook_table.device
    sums, books = 0.0, None
    for start in range(0, len(codes), batch_size):
        idx = list(range(start, min(start + batch_size, len(codes))))
        t_max = max(codes[i].shape[-1] for i in idx)
        batch = torch.zeros(len(idx), codes[idx[0]].shape[0], t_max, dtype=torch.long)
        mask = torch.zeros(len(idx), t_max, dtype=torch.bool)
        for b, i in enumerate(idx):
            batch[b, :, : codes[i].shape[-1]] = codes[i]
            mask[b, : codes[i].shape[-1]] = True
        batch, mask = batch.to(device), mask.to(device)
        ces = []
        for s, captions in enumerate(caption_sets):
            control = None
            if control_sets is not None:
                control = pad_curves([control_sets[s][i] for i in idx], t_max).to(device)
            enc = text_encoder.encode([captions[i] for i in idx])
            states = enc.states.to(device)
            ce, books = codebook_ce(network, batch, mask, states, enc.mask, control)
            ces.append(ce.sum(0))  # [n]
        sums = sums + torch.stack(ces)  # [S, n]
    return sums / len(codes), books.tolist()


@torch.no_grad()
def text_gap(
    network: torch.nn.Module,
    text_encoder: Any,
    codes: Sequence[Tensor],
    captions: Sequence[str],
    attributes: Sequence[dict[str, Any]],
    batch_size: int = 16,
    controls: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """CE under a mismatched caption minus CE under the clip's own caption, per codebook
    (under each clip's own `controls` curve in both, when given).

    Args:
        network: an LM (`SirenLM` or `DelayPatternLM`) returning `SirenOutput`.
        text_encoder: `encode(list[str]) -> TextStates`.
        codes: one [r, T_i] long tensor per clip (whole clips).
        captions: one caption per clip; attributes: one dict per clip.

    Returns:
        {"gap": [n] mean over clips (nats), "own": [n], "other": [n], "codebooks": [n],
        "n": clips}; lists of floats.
    """
    partners = mismatched_partners(attributes)
    other_captions = [captions[j] for j in partners]
    (own, other), books = caption_ce(
        network,
        text_encoder,
        codes,
        [captions, other_captions],
        batch_size,
        None if controls is None else [controls] * 2,
    )
    return {
        "gap": (other - own).tolist(),
        "own": own.tolist(),
        "other": other.tolist(),
        "codebooks": books,
        "n": len(codes),
    }


ATTRIBUTE_VALUES = {"pitch": tuple(PITCH_RANGES_HZ), "count": COUNTS, "envelope": ENVELOPES}
GAP_ROWS = (*JUDGED, "empty")  # one attribute's words swapped, then the empty caption


def attribute_captions(
    attributes: Sequence[dict[str, Any]], rng_seed: int = 0
) -> dict[str, list[str]]:
    """Per clip, a caption of its true attributes and one per judged attribute with that
    attribute alone changed, worded alike.

    A Generator seeded with `rng_seed` draws, per clip, a caption seed and then (pitch, count,
    envelope in turn) a replacement value uniformly among the attribute's other values. Every
    caption of a clip is `make_caption` under a fresh Generator seeded with that clip's caption
    seed, so own and swapped captions draw the same random numbers: each `make_caption` pick
    consumes one draw whatever the number of options (bar numpy's rejection step, under 1 in
    10^9 a pick), so the template, noun, verb and the other attributes' words are the same, and only
    the swapped attribute's words differ (with a count swap, also the noun's number where the
    template counts nouns: "two beeps").

    Args:
        attributes: one dict per clip with "source", "pitch", "count", "envelope".

    Returns:
        {"own": [B] captions, "pitch", "count", "envelope": [B] swapped captions,
        "empty": [B] empty captions}.
    """
    rng = np.random.default_rng(rng_seed)
    out: dict[str, list[str]] = {"own": [], **{row: [] for row in GAP_ROWS}}
    for attrs in attributes:
        caption_seed = int(rng.integers(2**63))
        out["own"].append(make_caption(attrs, np.random.default_rng(caption_seed)))
        for key in JUDGED:
            others = [v for v in ATTRIBUTE_VALUES[key] if v != attrs[key]]
            swapped = {**attrs, key: others[int(rng.integers(len(others)))]}
            out[key].append(make_caption(swapped, np.random.default_rng(caption_seed)))
        out["empty"].append("")
    return out


@torch.no_grad()
def attribute_gaps(
    network: torch.nn.Module,
    text_encoder: Any,
    codes: Sequence[Tensor],
    attributes: Sequence[dict[str, Any]],
    rng_seed: int = 0,
    batch_size: int = 16,
    controls: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """Which caption words does the LM read? The text gap of one attribute at a time.

    For each judged attribute, teacher-forced CE of the true codes under a caption with that
    attribute alone changed minus under a caption of the true attributes worded alike
    (`attribute_captions`), per codebook; "empty" is the empty caption against the same own
    caption. `text_gap` swaps the whole combination, so it cannot tell which words are read.

    Args:
        network: an LM (`SirenLM` or `DelayPatternLM`) returning `SirenOutput`.
        text_encoder: `encode(list[str]) -> TextStates`.
        codes: one [r, T_i] long tensor per clip (whole clips).
        attributes: one dict per clip with "source", "pitch", "count", "envelope".
        rng_seed: seeds the captions and the replacement values (same seed, same captions).
        controls: one control curve per clip, the same under every caption (`caption_ce`).

    Returns:
        {"pitch", "count", "envelope", "empty": {"gap": [n] nats (swapped - own, mean over
        clips), "mean": mean of the gap over codebooks}, "own": [n] CE under the own captions,
        "codebooks": [n], "n": clips, "seed": rng_seed}.
    """
    captions = attribute_captions(attributes, rng_seed)
    ce, books = caption_ce(
        network,
        text_encoder,
        codes,
        [captions["own"], *(captions[row] for row in GAP_ROWS)],
        batch_size,
        None if controls is None else [controls] * (1 + len(GAP_ROWS)),
    )  # [1 + rows, n]
    out: dict[str, Any] = {}
    for row, swapped in zip(GAP_ROWS, ce[1:], strict=True):
        gap = swapped - ce[0]
        out[row] = {"gap": gap.tolist(), "mean": float(gap.mean())}
    out.update(own=ce[0].tolist(), codebooks=books, n=len(codes), seed=rng_seed)
    return out


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = [float(x) for x in values]
    mean = sum(v) / len(v)
    spread = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return mean, spread
