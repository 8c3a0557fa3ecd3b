"""Fréchet distance between two sets of embeddings (FD on PANNs, FAD on VGGish frames, ...).

Letters: M embedding rows (clips, or frames of all clips for FAD), D embedding width.

The metric keeps float64 running sums (count, sum, sum of outer products) per set, so its state
syncs across processes by summation. The distance itself is the pytorch-fid / audioldm_eval
formula: ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))`` with ``scipy.linalg.sqrtm`` and
the usual fallback of ``eps`` added to both diagonals when the product is singular.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn
from torchmetrics import Metric

# Imaginary parts of sqrtm's diagonal above this are a failure, not rounding (pytorch-fid's rule).
_IMAG_TOLERANCE = 1e-3
# A negative distance closer to zero than this (relative to the traces) is rounding: clamp to 0.
_NEGATIVE_TOLERANCE = 1e-6


class FrechetDistanceError(ArithmeticError):
    """The Fréchet distance could not be computed to a trustworthy real, non-negative number."""


def _mean_cov_from_sums(n: Tensor, total: Tensor, outer: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (as `np.cov`) from running sums.

    Args:
        n: number of rows M, scalar float64.
        total: sum of rows, [D] float64.
        outer: sum of outer products x x^T, [D, D] float64.

    Returns:
        mean [D] and covariance [D, D] as float64 numpy arrays.
    """
    count = float(n)
    if count < 2:
        raise FrechetDistanceError(
            f"need at least 2 embeddings per set for a covariance, got {count:g}"
        )
    mean = (total / count).cpu().numpy()
    # sum (x - mu)(x - mu)^T = sum x x^T - n mu mu^T
    cov = (outer.cpu().numpy() - count * np.outer(mean, mean)) / (count - 1.0)
    return mean, cov


def _frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: means, [D].
        sigma1, sigma2: covariances, [D, D].
        eps: added to both diagonals when ``sqrtm(sigma1 @ sigma2)`` is not finite.

    Returns:
        The distance, a non-negative float.

    Raises:
        FrechetDistanceError: on a shape mismatch, a significant imaginary component, or a
            clearly negative result (never returned silently).
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise FrechetDistanceError(
            f"embedding shapes differ: means {mu1.shape} vs {mu2.shape}, "
            f"covariances {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"Fréchet distance: sqrtm(S1 S2) is singular; adding {eps} to the covariance diagonals",
            stacklevel=3,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > _IMAG_TOLERANCE:
            raise FrechetDistanceError(
                f"sqrtm(S1 S2) has an imaginary diagonal component of {imag:.3g} "
                f"(tolerance {_IMAG_TOLERANCE}); the covariances are too ill-conditioned"
            )
        covmean = covmean.real
    traces = float(np.trace(sigma1) + np.trace(sigma2))
    distance = float(diff.dot(diff) + traces - 2.0 * np.trace(covmean))
    if not np.isfinite(distance):
        raise FrechetDistanceError(f"Fréchet distance is not finite ({distance})")
    if distance < 0:
        scale = max(traces, 1.0)
        if distance < -_NEGATIVE_TOLERANCE * scale:
            raise FrechetDistanceError(
                f"Fréchet distance came out negative ({distance:.6g}, traces {traces:.6g}); "
                "the matrix square root is inaccurate for these covariances"
            )
        warnings.warn(
            f"Fréchet distance {distance:.3g} is negative by rounding; reporting 0", stacklevel=3
        )
        distance = 0.0
    return distance


class FrechetDistance(Metric):
    """Fréchet distance between generated and reference embeddings, over any embedding.

    ``update(x, real)`` adds rows: either embeddings ``[M, D]`` or, when an ``embedder`` module
    is given, whatever it takes (e.g. audio ``[B, N]``), which it maps to ``[M, D]``.

    Args:
        num_features: embedding width D.
        embedder: optional module mapping the update input to embeddings ``[M, D]``.
        eps: diagonal offset of the singular-product fallback.
        keep_features: also keep every row (a "cat" state) so that `bootstrap` can resample.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        num_features: int,
        embedder: nn.Module | None = None,
        eps: float = 1e-6,
        keep_features: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.embedder = embedder
        self.eps = eps
        self.keep_features = keep_features
        d = num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum"
            )
            if keep_features:
                self.add_state(f"{side}_rows", [], dist_reduce_fx="cat")

    def _embed(self, x: Tensor, real: bool, ids: Sequence[str] | None) -> Tensor:
        if self.embedder is not None:
            with torch.no_grad():
                x = self.embedder(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FrechetDistance expects embeddings [M, {self.num_features}], got {tuple(x.shape)}"
            )
        bad_rows = (~torch.isfinite(x).all(dim=1)).nonzero().flatten().tolist()
        if bad_rows:
            side = "reference" if real else "generated"
            if ids is not None:  # a clip with several rows (FAD frames) is named once
                named = list(dict.fromkeys(str(ids[i]) for i in bad_rows))
                where = f"{side} clip(s) {named[:5]}{' ...' if len(named) > 5 else ''}"
            else:
                where = f"{side} row(s) {bad_rows[:5]}{' ...' if len(bad_rows) > 5 else ''}"
            raise ValueError(
                f"FrechetDistance got non-finite embeddings for {where} "
                "(a NaN or inf in the audio, or a backbone that overflowed on it)"
            )
        return x.detach().to(torch.float64)

    def update(self, x: Tensor, real: bool, ids: Sequence[str] | None = None) -> None:
        """Add rows to the reference (``real=True``) or generated (``real=False``) set.

        Args:
            x: [M, D] embeddings (or the embedder's input).
            ids: the clip id of each of the M rows, named when a row is not finite.
        """
        if ids is not None and len(ids) != x.shape[0]:
            raise ValueError(f"FrechetDistance.update: {len(ids)} ids for {x.shape[0]} rows")
        rows = self._embed(x, real, ids)
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + rows.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + rows.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + rows.T @ rows)
        if self.keep_features:
            getattr(self, f"{side}_rows").append(rows)

    def statistics(self, real: bool) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] of one set."""
        side = "real" if real else "fake"
        n = getattr(self, f"{side}_n")
        if float(n) < self.num_features:
            warnings.warn(
                f"Fréchet distance: the {'reference' if real else 'generated'} set has "
                f"{float(n):g} embeddings for {self.num_features} dimensions; its covariance is "
                "rank-deficient and the distance is biased (use more clips)",
                stacklevel=2,
            )
        return _mean_cov_from_sums(n, getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer"))

    def compute(self) -> Tensor:
        mu_real, sigma_real = self.statistics(real=True)
        mu_fake, sigma_fake = self.statistics(real=False)
        return torch.tensor(
            _frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real, self.eps),
            dtype=torch.float64,
        )

    def bootstrap(
        self, num_resamples: int = 100, confidence: float = 0.95, seed: int = 0
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of the distance (both sets resampled with replacement).

        Needs ``keep_features=True``. Each resample costs one D x D matrix square root.

        Returns:
            (low, high) bounds of the central ``confidence`` interval.
        """
        if not self.keep_features:
            raise RuntimeError("FrechetDistance.bootstrap needs keep_features=True")
        real = _rows(self.real_rows).cpu().numpy()
        fake = _rows(self.fake_rows).cpu().numpy()
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(num_resamples):
            r = real[rng.integers(0, len(real), len(real))]
            f = fake[rng.integers(0, len(fake), len(fake))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values.append(
                    _frechet_distance(
                        f.mean(0), np.cov(f, rowvar=False), r.mean(0), np.cov(r, rowvar=False)
                    )
                )
        alpha = (1.0 - confidence) / 2.0
        low, high = np.quantile(values, [alpha, 1.0 - alpha])
        return float(low), float(high)


def _rows(state: list[Tensor] | Tensor) -> Tensor:
    # After a distributed sync a "cat" state is already one tensor.
    return torch.cat(state) if isinstance(state, list) else state
