"""KL divergence between the class outputs of generated clips and their paired references.

Letters: B pairs, C classes (527 AudioSet classes for PANNs).

As audioldm_eval computes it: for each (reference, generated) pair, ``KL(p_ref || p_gen) =
sum_c p_ref[c] (log p_ref[c] - log(p_gen[c] + 1e-6))``, averaged over pairs; the ``softmax``
variant takes p = softmax(logits), the ``sigmoid`` variant applies the same formula to the
per-class sigmoids (not normalised). Generated and reference clips are paired by clip id
(audioldm_eval: file basename); when the two id sets overlap by no more than 99% audioldm_eval
reports -1, we raise `PairingError` instead.

torchmetrics' own `KLDivergence` normalises its inputs and clamps with the float epsilon, which
changes the sigmoid variant and the numbers; so the formula lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

KLVariant = Literal["softmax", "sigmoid", "softmax_gen_ref"]
KL_VARIANTS = ("softmax", "sigmoid", "softmax_gen_ref")
KL_EPS = 1e-6
# audioldm_eval's rule: the id intersection must exceed this fraction of *both* sets.
MIN_PAIRED_FRACTION = 0.99


class PairingError(ValueError):
    """Generated and reference clips do not pair up by id."""


def _kl_per_pair(gen_logits: Tensor, ref_logits: Tensor, variant: KLVariant) -> Tensor:
    """Per-pair KL(p_ref || p_gen).

    Args:
        gen_logits: generated clips' class logits, [B, C].
        ref_logits: paired reference clips' class logits, [B, C].
        variant: "softmax", "sigmoid", or "softmax_gen_ref" (KL(p_gen || p_ref) with the
            epsilon on p_ref: stable-audio-metrics' PaSST KL).

    Returns:
        [B] float64 divergences.
    """
    if variant == "softmax_gen_ref":
        # KL(p_gen || p_ref) with the epsilon on p_ref: the softmax formula, roles swapped.
        return _kl_per_pair(ref_logits, gen_logits, "softmax")
    gen, ref = gen_logits.to(torch.float64), ref_logits.to(torch.float64)
    if variant == "softmax":
        p_gen, p_ref = gen.softmax(dim=1), ref.softmax(dim=1)
    elif variant == "sigmoid":
        p_gen, p_ref = gen.sigmoid(), ref.sigmoid()
    else:
        raise ValueError(f"KL variant must be one of {KL_VARIANTS}, got {variant!r}")
    # xlogy gives 0 log 0 = 0, as torch.nn.functional.kl_div does for its target.
    return (torch.xlogy(p_ref, p_ref) - p_ref * torch.log(p_gen + KL_EPS)).sum(dim=1)


def pair_by_id(
    generated: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    min_fraction: float = MIN_PAIRED_FRACTION,
) -> tuple[list[str], Tensor, Tensor]:
    """Pair generated and reference rows by clip id.

    Args:
        generated: clip id -> row (e.g. logits [C]).
        reference: clip id -> row.
        min_fraction: the shared ids must be more than this fraction of each set.

    Returns:
        (ids, generated rows [B, C], reference rows [B, C]) over the shared ids, in the
        reference's order (as audioldm_eval iterates).

    Raises:
        PairingError: when the sets overlap too little.
    """
    if not generated or not reference:
        raise PairingError(
            f"cannot pair {len(generated)} generated with {len(reference)} reference clips"
        )
    shared = [k for k in reference if k in generated]
    frac_gen, frac_ref = len(shared) / len(generated), len(shared) / len(reference)
    if not (frac_gen > min_fraction and frac_ref > min_fraction):
        unshared = {
            "references without a generated clip": [k for k in reference if k not in generated],
            "generated clips without a reference": [k for k in generated if k not in reference],
        }
        detail = "; ".join(
            f"{len(ids)} {side}, e.g. {ids[:3]}" for side, ids in unshared.items() if ids
        )
        raise PairingError(
            f"only {len(shared)} clip ids are shared between {len(generated)} generated and "
            f"{len(reference)} reference clips (need > {min_fraction:.0%} of each): {detail}"
        )
    gen = torch.stack([torch.as_tensor(generated[k]) for k in shared])
    ref = torch.stack([torch.as_tensor(reference[k]) for k in shared])
    return shared, gen, ref


class KLDivergence(Metric):
    """Mean KL(p_ref || p_gen) over paired clips, from class logits.

    ``update(gen_logits [B, C], ref_logits [B, C])`` takes rows that are already paired (see
    `pair_by_id`); the state is a float64 sum and count, so it syncs by summation.

    Args:
        variant: "softmax" (AudioGen / audioldm_eval's headline KL), "sigmoid", or
            "softmax_gen_ref" (the reverse direction, stable-audio-metrics' PaSST KL).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, variant: KLVariant = "softmax", **kwargs) -> None:
        super().__init__(**kwargs)
        if variant not in KL_VARIANTS:
            raise ValueError(f"KL variant must be one of {KL_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.add_state("kl_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, gen_logits: Tensor, ref_logits: Tensor) -> None:
        if gen_logits.ndim != 2 or gen_logits.shape != ref_logits.shape:
            raise ValueError(
                "KLDivergence expects paired logits [B, C] of equal shape, got "
                f"{tuple(gen_logits.shape)} and {tuple(ref_logits.shape)}"
            )
        kl = _kl_per_pair(gen_logits.detach(), ref_logits.detach(), self.variant)
        self.kl_sum += kl.sum()
        self.pairs += kl.shape[0]

    def compute(self) -> Tensor:
        if float(self.pairs) == 0:
            raise PairingError("KLDivergence.compute called before any paired update")
        return self.kl_sum / self.pairs


def paired_kl(
    generated: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    variants: Sequence[KLVariant] = ("softmax", "sigmoid"),
) -> dict[str, float]:
    """KL of each variant over clips paired by id (a convenience over `KLDivergence`)."""
    _, gen, ref = pair_by_id(generated, reference)
    out = {}
    for variant in variants:
        metric = KLDivergence(variant)
        metric.update(gen, ref)
        out[variant] = float(metric.compute())
    return out
