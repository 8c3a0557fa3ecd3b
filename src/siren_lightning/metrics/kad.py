"""Kernel audio distance (KAD): an unbiased MMD² between generated and reference embeddings.

Letters: N reference rows, M generated rows, D embedding width.

``KAD = scale * (mean_{i != j} k(r_i, r_j) + mean_{i != j} k(g_i, g_j) - 2 mean_{i, j} k(r_i, g_j))``
with the Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))`` and ``scale = 100`` (as kadtk
reports it). The bandwidth sigma is the median Euclidean distance over the distinct pairs of the
**reference** set only: taking it from the generated set (or from both) lets a generated set that
is merely spread wider or narrower move its own yardstick, which is the kadtk#9 trap.

Unlike FD it assumes no Gaussian, is unbiased at any set size, and is 0 in expectation for two
samples of one distribution (so it can come out slightly negative).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

KAD_SCALE = 100.0


def median_pairwise_distance(x: Tensor) -> float:
    """Median Euclidean distance over the N (N - 1) / 2 distinct pairs of rows of x [N, D].

    For an even count it is the mean of the two middle values (numpy's median; ``torch.median``
    would take the lower one).
    """
    if x.shape[0] < 2:
        raise ValueError(f"KAD: the reference set needs >= 2 embeddings, got {x.shape[0]}")
    return float(np.median(torch.pdist(x.to(torch.float64)).cpu().numpy()))


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances [A, B] between rows of a [A, D] and b [B, D], float64."""
    return torch.cdist(a, b).square()


def _kernel_matrices(real: Tensor, fake: Tensor, bandwidth: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian kernel matrices K_rr [N, N], K_gg [M, M], K_rg [N, M] (float64)."""
    gamma = 1.0 / (2.0 * bandwidth**2)
    r, g = real.to(torch.float64), fake.to(torch.float64)
    return (
        torch.exp(-gamma * _sq_dists(r, r)),
        torch.exp(-gamma * _sq_dists(g, g)),
        torch.exp(-gamma * _sq_dists(r, g)),
    )


def _mmd2_unbiased(k_rr: Tensor, k_gg: Tensor, k_rg: Tensor) -> float:
    """Unbiased MMD² from the kernel matrices (diagonals of the within-set ones left out)."""
    n, m = k_rr.shape[0], k_gg.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"KAD needs >= 2 embeddings per set, got {n} reference and {m} generated")
    within_r = (k_rr.sum() - k_rr.diagonal().sum()) / (n * (n - 1))
    within_g = (k_gg.sum() - k_gg.diagonal().sum()) / (m * (m - 1))
    return float(within_r + within_g - 2.0 * k_rg.mean())


def _kernel_audio_distance(
    real: Tensor, fake: Tensor, bandwidth: float | None = None, scale: float = KAD_SCALE
) -> tuple[float, float]:
    """KAD of generated rows against reference rows.

    Args:
        real: reference embeddings, [N, D].
        fake: generated embeddings, [M, D].
        bandwidth: the Gaussian kernel's sigma; None takes the reference set's median pairwise
            distance.
        scale: the reported multiple of MMD².

    Returns:
        (KAD, the bandwidth used).
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"KAD expects embeddings [N, D] and [M, D], got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    sigma = median_pairwise_distance(real) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(
            f"KAD: the bandwidth is {sigma:g}; the reference embeddings are all identical"
        )
    return scale * _mmd2_unbiased(*_kernel_matrices(real, fake, sigma)), sigma


class KernelAudioDistance(Metric):
    """KAD (unbiased MMD², Gaussian kernel, reference-set median bandwidth) over any embedding.

    ``update(x, real)`` adds rows: embeddings ``[M, D]`` or, with an ``embedder`` module,
    whatever it maps to ``[M, D]``. A pairwise statistic needs every row, so the state keeps
    them (float64 "cat" lists, gathered across processes) rather than sums; ``compute`` is
    order-free, so the gathered order does not matter.

    Args:
        num_features: embedding width D.
        embedder: optional module mapping the update input to embeddings ``[M, D]``.
        bandwidth: fix sigma instead of the reference median (to compare runs on one yardstick).
        scale: the multiple of MMD² reported (100, as kadtk).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        num_features: int,
        embedder: nn.Module | None = None,
        bandwidth: float | None = None,
        scale: float = KAD_SCALE,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.embedder = embedder
        self.bandwidth = bandwidth
        self.scale = scale
        self.add_state("real_rows", [], dist_reduce_fx="cat")
        self.add_state("fake_rows", [], dist_reduce_fx="cat")

    def update(self, x: Tensor, real: bool) -> None:
        """Add rows to the reference (``real=True``) or generated (``real=False``) set."""
        if self.embedder is not None:
            with torch.no_grad():
                x = self.embedder(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"KernelAudioDistance expects embeddings [M, {self.num_features}], "
                f"got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("KernelAudioDistance got non-finite embeddings")
        rows = self.real_rows if real else self.fake_rows
        rows.append(x.detach().to(torch.float64))

    def compute(self) -> Tensor:
        value, self.bandwidth_used = _kernel_audio_distance(
            _rows(self.real_rows), _rows(self.fake_rows), self.bandwidth, self.scale
        )
        return torch.tensor(value, dtype=torch.float64)


def _rows(state: list[Tensor] | Tensor) -> Tensor:
    # After a distributed sync a "cat" state is already one tensor.
    if isinstance(state, list):
        if not state:
            raise ValueError("KernelAudioDistance.compute called before both sets were updated")
        return torch.cat(state)
    return state
