"""Inception score of generated clips from their class logits (PANNs' 527 AudioSet classes).

Letters: M generated clips, C classes.

audioldm_eval's protocol: shuffle the clips with ``numpy.random.RandomState(2020).permutation``,
cut them into 10 splits at ``i * M // 10``, take ``exp(mean_x KL(p(y|x) || p(y)))`` per split and
report the mean and the population standard deviation.

torchmetrics' `InceptionScore` shuffles with the global torch RNG, splits with `Tensor.chunk`
(other boundaries) and reports an unbiased std, so its numbers differ from the protocol's; it
also wants images for its own Inception network. We keep its state layout (all logits, a "cat"
state, since splits need the whole set) and write the split formula here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020


def _inception_score(
    logits: Tensor, splits: int = IS_SPLITS, seed: int | None = IS_SHUFFLE_SEED
) -> tuple[float, float]:
    """Inception score mean and std.

    Args:
        logits: class logits of the generated clips, [M, C].
        splits: number of splits (M must be >= splits).
        seed: seed of the numpy shuffle; None keeps the given order.

    Returns:
        (mean, std) over splits.
    """
    m = logits.shape[0]
    if m < splits:
        raise ValueError(f"Inception score needs at least {splits} clips (one per split), got {m}")
    if seed is not None:
        logits = logits[torch.as_tensor(np.random.RandomState(seed).permutation(m))]
    logits = logits.to(torch.float64)
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * m // splits, (i + 1) * m // splits
        p_split, log_p_split = p[lo:hi], log_p[lo:hi]
        log_marginal = p_split.mean(dim=0, keepdim=True).log()
        kl = (p_split * (log_p_split - log_marginal)).sum(dim=1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


class InceptionScore(Metric):
    """Inception score over the class logits of generated clips; `compute` returns (mean, std).

    Args:
        splits: number of splits (10 in the protocol).
        seed: numpy shuffle seed (2020 in the protocol).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, splits: int = IS_SPLITS, seed: int | None = IS_SHUFFLE_SEED, **kw) -> None:
        super().__init__(**kw)
        self.splits = splits
        self.seed = seed
        self.add_state("logits", [], dist_reduce_fx="cat")

    def update(self, logits: Tensor) -> None:
        if logits.ndim != 2:
            raise ValueError(f"InceptionScore expects logits [M, C], got {tuple(logits.shape)}")
        self.logits.append(logits.detach().to(torch.float64))

    def compute(self) -> tuple[Tensor, Tensor]:
        logits = torch.cat(self.logits) if isinstance(self.logits, list) else self.logits
        mean, std = _inception_score(logits, self.splits, self.seed)
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
