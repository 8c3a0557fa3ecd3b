"""KAD against a direct numpy computation of its formula, its bandwidth rule and its zero."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from siren_lightning.metrics.kad import KAD_SCALE, KernelAudioDistance, median_pairwise_distance


def _numpy_kad(real: np.ndarray, fake: np.ndarray, sigma: float | None = None) -> float:
    """The formula written out pair by pair: 100 * unbiased MMD², Gaussian kernel, sigma the
    median distance over the reference set's distinct pairs."""
    if sigma is None:
        sigma = float(
            np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(real, 2)])
        )

    def k(a, b):
        return math.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    n, m = len(real), len(fake)
    rr = sum(k(real[i], real[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    gg = sum(k(fake[i], fake[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    rg = sum(k(a, b) for a in real for b in fake) / (n * m)
    return 100.0 * (rr + gg - 2 * rg)


def _kad(real: torch.Tensor, fake: torch.Tensor, chunks: int = 1) -> tuple[float, float]:
    metric = KernelAudioDistance(real.shape[1])
    for part in real.chunk(chunks):
        metric.update(part, real=True)
    for part in fake.chunk(chunks):
        metric.update(part, real=False)
    return float(metric.compute()), metric.bandwidth_used


def test_kad_matches_numpy_formula_on_random_features():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(23, 5))
    fake = rng.normal(size=(17, 5)) * 1.3 + 0.4
    expected = _numpy_kad(real, fake)
    got, sigma = _kad(torch.from_numpy(real), torch.from_numpy(fake).float(), chunks=3)
    # float32 generated rows are exact in float64, so the numpy reference must use them too.
    expected = _numpy_kad(real, fake.astype(np.float32).astype(np.float64))
    assert got == pytest.approx(expected, rel=1e-10)
    assert KAD_SCALE == 100.0 and got > 1.0
    pairs = [np.linalg.norm(a - b) for a, b in itertools.combinations(real, 2)]
    assert sigma == pytest.approx(float(np.median(pairs)), rel=1e-12)
    # An even number of pairs (n = 4: 6 pairs): the median is the mean of the middle two.
    four = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert median_pairwise_distance(four) == pytest.approx((3.0 + 4.0) / 2)  # 1,2,3,4,6,7


def test_bandwidth_comes_from_the_reference_set_only():
    """The kadtk#9 trap: a generated set spread 10x wider must not widen the kernel it is
    judged with (a bandwidth from the generated or pooled set would shrink its distance)."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(30, 4))
    fake = rng.normal(size=(30, 4))
    sigma_ref = float(
        np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(real, 2)])
    )
    values = {}
    for spread in (1.0, 10.0):
        got, sigma = _kad(torch.from_numpy(real), torch.from_numpy(fake * spread))
        assert sigma == pytest.approx(sigma_ref, rel=1e-12), spread
        assert got == pytest.approx(_numpy_kad(real, fake * spread, sigma_ref), rel=1e-10)
        values[spread] = got
    pooled = np.concatenate([real, fake * 10.0])
    sigma_pooled = float(
        np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)])
    )
    trap = _numpy_kad(real, fake * 10.0, sigma_pooled)
    # The wide set is far from the reference on the reference's yardstick; the pooled bandwidth
    # hides most of that distance.
    assert values[10.0] > 2 * trap and values[10.0] > 10 * abs(values[1.0])


def test_identical_sets_give_about_zero_and_same_distribution_samples_too():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(200, 6)))
    same, sigma = _kad(x, x)
    # Identical sets: the within-set means leave out the diagonal, the cross mean keeps it, so
    # KAD = -2 * 100 * (1 - mean off-diagonal kernel) / N exactly: 0 up to 1/N.
    k = torch.exp(-torch.cdist(x, x).square() / (2 * sigma**2))
    off = float((k.sum() - k.diagonal().sum()) / (200 * 199))
    assert same == pytest.approx(-2 * 100.0 * (1 - off) / 200, rel=1e-10)
    assert -2 * 100.0 / 200 < same < 0
    # Two independent samples of one distribution: about 0; a shifted sample: clearly not.
    y = torch.from_numpy(rng.normal(size=(200, 6)))
    assert abs(_kad(x, y)[0]) < 0.5
    assert _kad(x, y + 1.0)[0] > 10.0


def test_bad_inputs_raise():
    metric = KernelAudioDistance(3)
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        metric.update(torch.zeros(2, 4), real=True)
    metric.update(torch.ones(5, 3), real=True)
    metric.update(torch.randn(5, 3), real=False)
    with pytest.raises(ValueError, match="all identical"):
        metric.compute()
