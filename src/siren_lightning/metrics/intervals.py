"""Bootstrap confidence intervals of every metric, and the spread over generation seeds.

Letters: M generated clips, N reference clips, P pairs, D embedding width, C classes, S seeds.

The percentile bootstrap resamples the evaluation set: clip ids are drawn with replacement,
``resamples`` times, and each metric is recomputed on the drawn clips; the interval is the
central ``confidence`` quantile range of those values. When the generated and reference sets
hold the same ids (the paired design `siren evaluate` uses), one draw of ids picks both a clip's
generation and its reference, so the interval reflects which captions were in the test set;
otherwise the two sets are drawn independently. KL averages over the drawn pairs, CLAP score
over the drawn captioned clips, IS is recomputed with its protocol splits, FD/FAD recompute the
Gaussian statistics of the drawn rows (FAD: all frames of the drawn clips), and KAD keeps the
bandwidth of the full reference set and leaves out pairs of one clip with its own copy (a
duplicate would otherwise count as a perfectly similar pair). With several generation seeds each
draw scores every seed on the same ids and averages, which is the interval of the seed mean.

Recomputing FD with ``scipy.linalg.sqrtm`` per resample would take minutes for 2048-d PANNs
embeddings; `_frechet_from_rows` gets the same trace from a singular value decomposition of
the M x N cross-product of the centred rows (or, for more rows than dimensions, from symmetric
eigendecompositions), which is exact for covariance matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from siren_lightning.metrics.inception import _inception_score
from siren_lightning.metrics.kad import KAD_SCALE, _kernel_matrices
from siren_lightning.metrics.kl import _kl_per_pair

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
# The metrics that get an interval (and a seed spread), as results name them.
INTERVAL_METRICS = ("fd", "fad", "kad", "kl", "is_mean", "clap_score")


def _frechet_from_rows(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted (mean, unbiased covariance) to rows.

    Args:
        a: [M, D] rows of one set; b: [N, D] rows of the other (M, N >= 2).

    Returns:
        ``|mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))``. The last trace is the sum
        of the square roots of the eigenvalues of ``S_a S_b``, which are the squared singular
        values of ``A_c B_c^T / sqrt((M - 1)(N - 1))`` (A_c, B_c the centred rows).
    """
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    ac, bc = a - a.mean(0), b - b.mean(0)
    diff = a.mean(0) - b.mean(0)
    traces = float((ac * ac).sum() / (m - 1) + (bc * bc).sum() / (n - 1))
    if min(m, n) <= d:
        # [M, N] cross-product: cheap when there are fewer clips than dimensions.
        singular = np.linalg.svd(ac @ bc.T, compute_uv=False)
        cross = float(singular.sum()) / math.sqrt((m - 1) * (n - 1))
    else:
        # [D, D]: S_a^(1/2) S_b S_a^(1/2) is symmetric PSD with the eigenvalues of S_a S_b.
        w, v = np.linalg.eigh(ac.T @ ac / (m - 1))
        root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        inner = root @ (bc.T @ bc / (n - 1)) @ root
        cross = float(np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum())
    return float(diff @ diff) + traces - 2.0 * cross


def _weighted_kad(
    k_rr: Tensor, k_gg: Tensor, k_rg: Tensor, w_r: Tensor, w_g: Tensor, scale: float = KAD_SCALE
) -> float:
    """KAD of a resample given as draw counts (w_r [N], w_g [M], float64) of the clips.

    The within-set means run over pairs of distinct draws of distinct clips: the pairs of a
    clip with its own copy are left out as the diagonal is in the unbiased estimator.
    """

    def within(k: Tensor, w: Tensor) -> Tensor:
        pairs = w.sum() ** 2 - (w * w).sum()
        return (w @ k @ w - (w * w * k.diagonal()).sum()) / pairs

    cross = (w_r @ k_rg @ w_g) / (w_r.sum() * w_g.sum())
    return float(scale * (within(k_rr, w_r) + within(k_gg, w_g) - 2.0 * cross))


def percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """(low, high): the central ``confidence`` range of the resampled values."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _draws(
    rng: np.random.Generator, n_gen: int, n_ref: int, paired: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One resample: generated and reference clip indices drawn with replacement."""
    gen = rng.integers(0, n_gen, n_gen)
    return gen, (gen if paired else rng.integers(0, n_ref, n_ref))


def bootstrap_intervals(
    seeds: Sequence[Mapping[str, Mapping[str, Tensor]]],
    ref: Mapping[str, Mapping[str, Tensor]],
    metrics: Mapping[str, float | None],
    *,
    kl_variant: str = "softmax",
    is_splits: int = 10,
    is_seed: int | None = 2020,
    kad_bandwidth: float | None = None,
    fd_over_frames: bool = False,
    text: Mapping[str, Tensor] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = BOOTSTRAP_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, list[float]]:
    """Percentile intervals of the metrics that the full set produced (non-None in ``metrics``).

    Args:
        seeds: per generation seed, clip id -> features (``embedding``, ``logits``?,
            ``frames``?, ``clap``?); every seed holds the same ids.
        ref: clip id -> reference features.
        metrics: the full-set values; an interval is made for each name of
            `INTERVAL_METRICS` whose value is not None.
        kl_variant, is_splits, is_seed: the protocol's.
        kad_bandwidth: the full reference set's bandwidth (kept fixed across resamples).
        fd_over_frames: FD over the ``fd_frames`` of the drawn clips (OpenL3), not their
            clip embeddings.
        text: clip id -> caption text embedding [D], for CLAP score.
        resamples, confidence, seed: the bootstrap's.

    Returns:
        metric -> [low, high].
    """
    wanted = [k for k in INTERVAL_METRICS if metrics.get(k) is not None]
    if resamples < 1 or not wanted:
        return {}
    gen_ids = list(seeds[0])
    for i, s in enumerate(seeds[1:], start=1):
        if set(s) != set(gen_ids):
            diff = sorted(set(s) ^ set(gen_ids))[:3]
            raise ValueError(f"generation seed {i} does not hold seed 0's clip ids (e.g. {diff})")
    ref_ids = list(ref)
    paired = set(gen_ids) == set(ref_ids)
    if paired:
        ref_ids = gen_ids  # one draw of ids picks a clip's generation and its reference
    stats = _statistics(
        seeds,
        ref,
        gen_ids,
        ref_ids,
        wanted,
        kl_variant,
        kad_bandwidth,
        text,
        is_splits,
        is_seed,
        fd_over_frames,
    )
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in wanted}
    for _ in range(resamples):
        gi, ri = _draws(rng, len(gen_ids), len(ref_ids), paired)
        for name in wanted:
            per_seed = [fn(gi, ri) for fn in stats[name]]
            values[name].append(float(np.mean(per_seed)))
    return {k: list(percentile_interval(v, confidence)) for k, v in values.items()}


def _statistics(
    seeds: Sequence[Mapping[str, Mapping[str, Tensor]]],
    ref: Mapping[str, Mapping[str, Tensor]],
    gen_ids: list[str],
    ref_ids: list[str],
    wanted: list[str],
    kl_variant: str,
    kad_bandwidth: float | None,
    text: Mapping[str, Tensor] | None,
    is_splits: int,
    is_seed: int | None,
    fd_over_frames: bool,
) -> dict[str, list[Callable[[np.ndarray, np.ndarray], float]]]:
    """Per metric, one function (generated indices, reference indices) -> value per seed."""
    out: dict[str, list[Callable]] = {k: [] for k in wanted}
    r_emb = torch.stack([ref[k]["embedding"] for k in ref_ids]).to(torch.float64)
    if "kad" in wanted and kad_bandwidth is None:
        raise ValueError("bootstrap of KAD needs the full reference set's bandwidth")
    for feats in seeds:
        g_emb = torch.stack([feats[k]["embedding"] for k in gen_ids]).to(torch.float64)
        if "fd" in wanted and fd_over_frames:
            out["fd"].append(_pooled_frames(feats, ref, gen_ids, ref_ids, "fd_frames"))
        elif "fd" in wanted:
            a, b = g_emb.numpy(), r_emb.numpy()
            out["fd"].append(lambda gi, ri, a=a, b=b: _frechet_from_rows(a[gi], b[ri]))
        if "fad" in wanted:
            out["fad"].append(_pooled_frames(feats, ref, gen_ids, ref_ids, "frames"))
        if "kad" in wanted:
            k_rr, k_gg, k_rg = _kernel_matrices(r_emb, g_emb, kad_bandwidth)

            def kad(gi, ri, k_rr=k_rr, k_gg=k_gg, k_rg=k_rg):
                w_g = torch.bincount(torch.from_numpy(gi), minlength=len(gen_ids)).double()
                w_r = torch.bincount(torch.from_numpy(ri), minlength=len(ref_ids)).double()
                return _weighted_kad(k_rr, k_gg, k_rg, w_r, w_g)

            out["kad"].append(kad)
        if "kl" in wanted:
            # Per generated clip, its pair's KL (NaN where the reference set lacks the id).
            kl = np.full(len(gen_ids), np.nan)
            shared = [i for i, k in enumerate(gen_ids) if k in ref]
            g = torch.stack([feats[gen_ids[i]]["logits"] for i in shared])
            r = torch.stack([ref[gen_ids[i]]["logits"] for i in shared])
            kl[shared] = _kl_per_pair(g, r, kl_variant).numpy()
            out["kl"].append(lambda gi, ri, kl=kl: float(np.nanmean(kl[gi])))
        if "is_mean" in wanted:
            logits = torch.stack([feats[k]["logits"] for k in gen_ids])
            out["is_mean"].append(
                lambda gi, ri, x=logits: _inception_score(
                    x[torch.from_numpy(gi)], is_splits, is_seed
                )[0]
            )
        if "clap_score" in wanted and text:
            cos = np.full(len(gen_ids), np.nan)
            scored = [i for i, k in enumerate(gen_ids) if k in text]
            a = torch.stack([feats[gen_ids[i]]["clap"] for i in scored]).to(torch.float64)
            t = torch.stack([text[gen_ids[i]] for i in scored]).to(torch.float64)
            cos[scored] = torch.nn.functional.cosine_similarity(a, t, dim=1, eps=1e-12).numpy()
            out["clap_score"].append(lambda gi, ri, c=cos: 100.0 * float(np.nanmean(c[gi])))
    return {k: v for k, v in out.items() if v}


def _pooled_frames(
    feats: Mapping[str, Mapping[str, Tensor]],
    ref: Mapping[str, Mapping[str, Tensor]],
    gen_ids: list[str],
    ref_ids: list[str],
    key: str,
) -> Callable[[np.ndarray, np.ndarray], float]:
    """FD over all frames ([F_i, D] under ``key``) of the drawn clips of each set."""
    gf = [feats[k][key].to(torch.float64).numpy() for k in gen_ids]
    rf = [ref[k][key].to(torch.float64).numpy() for k in ref_ids]
    return lambda gi, ri: _frechet_from_rows(
        np.concatenate([gf[i] for i in gi]), np.concatenate([rf[i] for i in ri])
    )


def seed_spread(per_seed: Sequence[Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Across generation seeds, per metric: the sample standard deviation, min and max.

    Args:
        per_seed: each seed's metrics.

    Returns:
        metric -> {"std", "min", "max", "seeds"} for the metrics every seed has.
    """
    out = {}
    for name in INTERVAL_METRICS:
        values = [m.get(name) for m in per_seed]
        if len(values) < 2 or any(v is None for v in values):
            continue
        arr = np.asarray(values, dtype=np.float64)
        out[name] = {
            "std": float(arr.std(ddof=1)),
            "min": float(arr.min()),
            "max": float(arr.max()),
            "seeds": len(values),
        }
    return out
