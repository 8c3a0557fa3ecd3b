"""Known values of the metric formulas and their state sync (no backbones involved)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from siren_lightning.metrics.clap_score import CLAPScore
from siren_lightning.metrics.frechet import FrechetDistance, FrechetDistanceError, _frechet_distance
from siren_lightning.metrics.inception import InceptionScore, _inception_score
from siren_lightning.metrics.kl import KLDivergence, PairingError, _kl_per_pair, pair_by_id


def _gaussian(m: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return torch.randn(m, d, generator=g, dtype=torch.float64) @ mix + 0.3


def test_identical_sets_give_zero_distance():
    x = _gaussian(200, 8, 0)
    fd = FrechetDistance(8)
    fd.update(x, real=True)
    fd.update(x, real=False)
    assert abs(float(fd.compute())) < 1e-8


def test_shifted_and_scaled_set_gives_closed_form():
    # Y = a X + delta: cov_Y = a^2 cov_X, so FD = |mu_X (1 - a) - delta|^2 + (1 - a)^2 Tr(cov_X).
    x = _gaussian(300, 6, 1)
    a, delta = 1.7, torch.linspace(-1.0, 2.0, 6, dtype=torch.float64)
    y = a * x + delta
    fd = FrechetDistance(6)
    fd.update(x, real=True)
    fd.update(y, real=False)
    mu, cov = x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)
    expected = float(np.sum((mu * (1 - a) - delta.numpy()) ** 2) + (1 - a) ** 2 * np.trace(cov))
    assert float(fd.compute()) == pytest.approx(expected, rel=1e-9)


def test_sums_give_numpy_mean_and_covariance():
    x = _gaussian(50, 5, 2)
    fd = FrechetDistance(5)
    for chunk in x.split(7):
        fd.update(chunk.float(), real=True)
    mu, cov = fd.statistics(real=True)
    np.testing.assert_allclose(mu, x.float().double().mean(0).numpy(), rtol=1e-10)
    np.testing.assert_allclose(cov, np.cov(x.float().double().numpy(), rowvar=False), atol=1e-10)


def test_merged_halves_equal_whole():
    x, y = _gaussian(120, 4, 3), _gaussian(100, 4, 4) * 1.3
    whole = FrechetDistance(4)
    whole.update(x, real=True)
    whole.update(y, real=False)
    first, second = FrechetDistance(4), FrechetDistance(4)
    first.update(x[:50], real=True)
    first.update(y[:30], real=False)
    second.update(x[50:], real=True)
    second.update(y[30:], real=False)
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(float(whole.compute()), rel=1e-10)


def test_few_samples_warn_and_bad_shapes_raise():
    fd = FrechetDistance(16)
    fd.update(_gaussian(10, 16, 5), real=True)
    fd.update(_gaussian(10, 16, 6), real=False)
    with pytest.warns(UserWarning, match="rank-deficient"):
        assert float(fd.compute()) >= 0
    with pytest.raises(ValueError, match=r"\[M, 16\]"):
        fd.update(torch.zeros(3, 15), real=True)
    with pytest.raises(FrechetDistanceError, match="shapes differ"):
        _frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_distance_is_never_silently_negative():
    # Rounding-size negatives are clamped to 0 with a warning...
    sigma = np.diag([1.0, 2.0])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert _frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma) >= 0.0
    # ...and an indefinite "covariance" that drives the distance clearly negative raises.
    bad = np.array([[1.0, 0.0], [0.0, -4.0]])
    with pytest.raises(FrechetDistanceError):
        _frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2) * 9.0)


def test_bootstrap_interval_brackets_the_estimate():
    x, y = _gaussian(150, 3, 7), _gaussian(150, 3, 8) + 0.5
    fd = FrechetDistance(3, keep_features=True)
    fd.update(x, real=True)
    fd.update(y, real=False)
    value = float(fd.compute())
    low, high = fd.bootstrap(num_resamples=50, seed=0)
    assert low < value < high


def test_kl_of_identical_distributions_is_zero_and_of_different_is_positive():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    for variant in ("softmax", "sigmoid"):
        kl = KLDivergence(variant)
        kl.update(logits, logits)
        # p log p - p log(p + 1e-6): zero up to the protocol's epsilon.
        assert abs(float(kl.compute())) < 1e-4
    kl = KLDivergence("softmax")
    kl.update(logits.roll(1, dims=0), logits)
    assert float(kl.compute()) > 0.1


def test_kl_matches_the_definition():
    p_ref = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    p_gen = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    expected = float((p_ref * (p_ref.log() - (p_gen + 1e-6).log())).sum())
    got = float(_kl_per_pair(p_gen.log(), p_ref.log(), "softmax")[0])
    assert got == pytest.approx(expected, rel=1e-12)


def test_pairing_by_id_and_its_99_percent_rule():
    gen = {f"c{i}": torch.full((3,), float(i)) for i in range(200)}
    ref = {f"c{i}": torch.full((3,), float(-i)) for i in reversed(range(200))}
    ids, g, r = pair_by_id(gen, ref)
    assert ids[0] == "c199" and torch.equal(g[0], -r[0])
    del gen["c5"], gen["c6"], gen["c7"]  # 197 / 200 = 98.5% of the references
    with pytest.raises(PairingError, match="197 clip ids"):
        pair_by_id(gen, ref)


def test_inception_score_known_values():
    # Confident, evenly spread predictions over C classes: IS = C in every split.
    c = 5
    logits = torch.full((50, c), -40.0)
    logits[torch.arange(50), torch.arange(50) % c] = 0.0
    mean, std = _inception_score(logits, splits=10, seed=None)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Identical predictions for every clip: IS = 1.
    mean, _ = _inception_score(torch.randn(1, 7).repeat(40, 1), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    # The metric (shuffle seed 2020, 10 splits) over two updates equals the function.
    logits = torch.randn(37, 6, generator=torch.Generator().manual_seed(1))
    metric = InceptionScore()
    metric.update(logits[:20])
    metric.update(logits[20:])
    mean, std = metric.compute()
    assert (float(mean), float(std)) == pytest.approx(_inception_score(logits), rel=1e-12)
    assert float(mean) > 1.0
    with pytest.raises(ValueError, match="at least 10 clips"):
        _inception_score(torch.randn(9, 3))


def test_clap_score_is_mean_cosine_times_100_and_merges():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    first, second = CLAPScore(), CLAPScore()
    first.update(a[:2], t[:2])
    second.update(a[2:], t[2:])
    first.merge_state(second)
    expected = 100.0 * (1.0 - 1.0 + 1.0 / math.sqrt(2.0)) / 3.0
    assert float(first.compute()) == pytest.approx(expected, rel=1e-12)


def test_embedder_module_maps_inputs_to_rows():
    torch.manual_seed(0)
    embedder = torch.nn.Linear(10, 3).double()
    x, y = _gaussian(80, 10, 9), _gaussian(70, 10, 10) + 1.0
    with_module = FrechetDistance(3, embedder=embedder)
    with_module.update(x, real=True)
    with_module.update(y, real=False)
    plain = FrechetDistance(3)
    with torch.no_grad():
        plain.update(embedder(x), real=True)
        plain.update(embedder(y), real=False)
    assert float(with_module.compute()) == pytest.approx(float(plain.compute()), rel=1e-12)


def test_a_pairing_error_names_the_unshared_ids_on_their_own_side():
    ref = {f"c{i}": torch.zeros(3) for i in range(10)}
    gen = {**ref, "x1": torch.zeros(3), "x2": torch.zeros(3)}  # extra generated clips
    with pytest.raises(PairingError) as error:
        pair_by_id(gen, ref)
    assert str(error.value).endswith(": 2 generated clips without a reference, e.g. ['x1', 'x2']")
    del gen["c3"]
    with pytest.raises(PairingError) as error:
        pair_by_id(gen, ref)
    assert str(error.value).endswith(
        ": 1 references without a generated clip, e.g. ['c3']; "
        "2 generated clips without a reference, e.g. ['x1', 'x2']"
    )


def test_non_finite_embeddings_name_their_clip():
    fd = FrechetDistance(2)
    rows = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, float("inf")]])
    with pytest.raises(ValueError, match=r"for generated clip\(s\) \['b', 'c'\] \(a NaN"):
        fd.update(rows, real=False, ids=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"for reference row\(s\) \[1, 2\]"):
        fd.update(rows, real=True)
    frames = torch.zeros(4, 2)
    frames[2, 0] = float("nan")  # the second frame of clip "q": the clip is named once
    with pytest.raises(ValueError, match=r"clip\(s\) \['q'\] "):
        fd.update(frames, real=True, ids=["p", "p", "q", "q"])
    assert int(fd.real_n) == int(fd.fake_n) == 0  # nothing half-added
