"""Bootstrap intervals and seed spread against independent references (closed forms, brute
force, the normal approximation of a mean's sampling spread)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from siren_lightning.metrics.frechet import _frechet_distance
from siren_lightning.metrics.intervals import (
    _frechet_from_rows,
    _weighted_kad,
    bootstrap_intervals,
    seed_spread,
)
from siren_lightning.metrics.kad import _kernel_audio_distance, _kernel_matrices


def _fd_reference(a: np.ndarray, b: np.ndarray) -> float:
    """FD with Tr((S_a S_b)^(1/2)) from the eigenvalues of the (non-symmetric) product."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    root_trace = np.sqrt(np.clip(eig.real, 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * root_trace)


@pytest.mark.parametrize("m, n, d", [(40, 55, 6), (12, 9, 30)])  # eigh path, SVD path
def test_frechet_from_rows_equals_the_definition(m, n, d):
    rng = np.random.default_rng(m)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    a = rng.normal(size=(m, d)) @ mix
    b = rng.normal(size=(n, d)) @ mix * 1.4 + 0.3
    got = _frechet_from_rows(a, b)
    # Rank-deficient products (fewer rows than dimensions) leave eigenvalues of rounding size
    # whose square roots (~1e-8 each) the reference sums: hence 1e-7 there.
    assert got == pytest.approx(_fd_reference(a, b), rel=1e-8 if m > d else 1e-7)
    if m > d:  # full-rank covariances: scipy's sqrtm (the metric's own formula) agrees too
        sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        assert got == pytest.approx(_frechet_distance(a.mean(0), sa, b.mean(0), sb), rel=1e-8)


def test_weighted_kad_leaves_out_pairs_of_a_clip_with_its_copy():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(7, 3)), rng.normal(size=(6, 3)) + 0.5
    sigma = 1.7
    kernels = _kernel_matrices(torch.from_numpy(real), torch.from_numpy(fake), sigma)
    # Every clip drawn once: the resample is the set, the value its KAD.
    ones_r, ones_g = torch.ones(7, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    full, _ = _kernel_audio_distance(torch.from_numpy(real), torch.from_numpy(fake), sigma)
    assert _weighted_kad(*kernels, ones_r, ones_g) == pytest.approx(full, rel=1e-12)
    # Draw counts: brute force over the drawn copies, skipping pairs from one source clip.
    w_r, w_g = [2, 0, 1, 3, 0, 1, 0], [0, 2, 2, 1, 0, 1]
    rows_r = [(i, real[i]) for i, c in enumerate(w_r) for _ in range(c)]
    rows_g = [(i, fake[i]) for i, c in enumerate(w_g) for _ in range(c)]

    def k(a, b):
        return math.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    def within(rows):
        pairs = [(a, b) for (i, a), (j, b) in itertools.permutations(rows, 2) if i != j]
        return sum(k(a, b) for a, b in pairs) / len(pairs)

    cross = np.mean([k(a, b) for (_, a), (_, b) in itertools.product(rows_r, rows_g)])
    expected = 100 * (within(rows_r) + within(rows_g) - 2 * cross)
    weights = torch.tensor(w_r, dtype=torch.float64), torch.tensor(w_g, dtype=torch.float64)
    assert _weighted_kad(*kernels, *weights) == pytest.approx(expected, rel=1e-12)


def _features(n: int, seed: int) -> tuple[dict, dict, dict, np.ndarray, np.ndarray]:
    """Paired generated/reference features with known per-clip CLAP cosines and KLs."""
    g = torch.Generator().manual_seed(seed)
    ids = [f"c{i:03d}" for i in range(n)]
    gen_logits, ref_logits = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    audio, text = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    emb = torch.randn(n, 3, generator=g)
    gen = {
        k: {"embedding": emb[i], "logits": gen_logits[i], "clap": audio[i]}
        for i, k in enumerate(ids)
    }
    ref = {k: {"embedding": emb[i] + 0.1, "logits": ref_logits[i]} for i, k in enumerate(ids)}
    cos = torch.nn.functional.cosine_similarity(audio.double(), text.double(), dim=1).numpy()
    p, q = ref_logits.double().softmax(1), gen_logits.double().softmax(1)
    kl = (p * (p.log() - (q + 1e-6).log())).sum(1).numpy()
    return gen, ref, dict(zip(ids, text, strict=True)), cos, kl


def test_mean_metrics_intervals_match_the_normal_approximation():
    """For a mean over clips the 95% bootstrap half-width is close to 1.96 sd / sqrt(n)."""
    n = 400
    gen, ref, text, cos, kl = _features(n, 0)
    metrics = {"clap_score": 100 * cos.mean(), "kl": kl.mean()}
    intervals = bootstrap_intervals([gen], ref, metrics, text=text, resamples=2000, seed=1)
    for name, values in (("clap_score", 100 * cos), ("kl", kl)):
        low, high = intervals[name]
        expected = 1.96 * values.std(ddof=1) / math.sqrt(n)
        assert (high - low) / 2 == pytest.approx(expected, rel=0.12), name
        assert low < metrics[name] < high, name
    # A wider confidence gives a wider interval; one seed given twice is the same interval.
    wide = bootstrap_intervals(
        [gen], ref, metrics, text=text, resamples=2000, seed=1, confidence=0.99
    )
    assert wide["kl"][1] - wide["kl"][0] > intervals["kl"][1] - intervals["kl"][0]
    twice = bootstrap_intervals([gen, gen], ref, metrics, text=text, resamples=2000, seed=1)
    assert {k: pytest.approx(v) for k, v in twice.items()} == intervals


def test_interval_of_the_seed_mean_is_narrower_than_one_seeds():
    gen, ref, text, _, _ = _features(200, 1)
    other = _features(200, 2)[0]  # another "seed": independent cosines for the same ids
    for k in gen:
        other[k]["embedding"] = gen[k]["embedding"]
    metrics = {"clap_score": 0.0}
    one = bootstrap_intervals([gen], ref, metrics, text=text, resamples=1000)["clap_score"]
    two = bootstrap_intervals([gen, other], ref, metrics, text=text, resamples=1000)
    # Averaging two independent draws per clip shrinks the spread by about sqrt(2).
    ratio = (two["clap_score"][1] - two["clap_score"][0]) / (one[1] - one[0])
    assert 0.55 < ratio < 0.85


def test_seed_spread_is_the_sample_standard_deviation():
    spread = seed_spread([{"fd": 1.0, "fad": None}, {"fd": 2.0, "fad": None}, {"fd": 4.0}])
    assert spread == {
        "fd": {"std": pytest.approx(math.sqrt(7 / 3)), "min": 1.0, "max": 4.0, "seeds": 3}
    }
    assert seed_spread([{"fd": 1.0}]) == {}
