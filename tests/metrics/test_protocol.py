"""The evaluator over folders: every metric, the results JSON, the feature cache, VGGish frames."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from siren_lightning.metrics.cache import FeatureCache, feature_key
from siren_lightning.metrics.kl import PairingError
from siren_lightning.metrics.preprocess import audioldm_panns_input
from siren_lightning.metrics.protocol import (
    PRESETS,
    Evaluator,
    audio_files,
    results_table,
    write_results,
)
from siren_lightning.metrics.tiny_clap import CaptionEmbeddingCache, TinyCLAP, TinyCLAPBackbone

SR = 16000


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    net = TinyCLAP(width=32, layers=1, heads=2, embed_dim=8, n_mels=32)
    # Random weights with BatchNorm at its init statistics map every clip to nearly one point;
    # estimate the statistics on a few varied clips so that embeddings spread (still untrained).
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = None
    t = torch.arange(SR) / SR
    calib = torch.stack(
        [
            torch.sin(2 * math.pi * f * t) * a
            for f in (80, 300, 900, 2500, 6000)
            for a in (0.05, 0.5)
        ]
    )
    with torch.no_grad():
        net.train().embed_audio(calib)
    net.eval()
    prompts = ["a low tone", "a high tone", "noise", "clicks"]
    # A stand-in weights hash so that the cache is used (random weights are never cached).
    return TinyCLAPBackbone(
        net, prompts, CaptionEmbeddingCache(), name="tiny-test", weights_sha256="0" * 64
    )


def _folder(path, seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    path.mkdir()
    captions = {}
    for i in range(n):
        f = rng.uniform(100, 2000)
        t = np.arange(int(SR * rng.uniform(0.5, 1.5))) / SR
        sf.write(path / f"c{i:02d}.wav", (0.4 * np.sin(2 * math.pi * f * t)).astype(np.float32), SR)
        captions[f"c{i:02d}"] = "a high tone" if f > 1000 else "a low tone"
    return captions


def test_evaluate_folders_writes_full_results(backbone, tmp_path):
    captions = _folder(tmp_path / "gen", 1)
    _folder(tmp_path / "ref", 2)
    cache = FeatureCache(tmp_path / "cache")
    evaluator = Evaluator(PRESETS["tiny"], backbone, None, backbone, cache)
    gen, ref = audio_files(tmp_path / "gen"), audio_files(tmp_path / "ref")
    results = evaluator.evaluate(gen, ref, captions)
    m = results["metrics"]
    assert set(m) == {
        "fd",
        "kad",
        "fad",
        "kl_softmax",
        "kl_sigmoid",
        "kl",
        "is_mean",
        "is_std",
        "clap_score",
    }
    assert m["fad"] is None and "VGGish" in results["unavailable"]["fad"]
    assert (
        m["fd"] > 0
        and math.isfinite(m["kad"])
        and m["kl"] == m["kl_softmax"]
        and m["is_mean"] >= 1.0
    )
    assert results["counts"] == {"generated": 12, "reference": 12, "paired": 12, "clap_scored": 12}
    assert results["backbones"]["fd"]["weights_sha256"] == "0" * 64
    assert results["protocol"]["kl_variant"] == "softmax" and results["preset"] == "tiny"
    assert cache.misses == 24 and cache.hits == 0
    again = evaluator.evaluate(gen, ref, captions)
    assert cache.hits == 24 and again["metrics"] == m
    path = write_results(results, tmp_path / "out" / "results.json")
    assert json.loads(path.read_text())["metrics"] == m
    # A set scored against itself: FD ~ 0 (up to the covariance of only 12 clips) and KL ~ 0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rounding-size negative distance is reported as 0
        same = evaluator.evaluate(gen, gen, captions)["metrics"]
    assert abs(same["fd"]) < 1e-6 and abs(same["kl_softmax"]) < 1e-4


def test_unpaired_folders_raise_for_kl(backbone, tmp_path):
    _folder(tmp_path / "gen", 1)
    ref = tmp_path / "ref"
    ref.mkdir()
    for p in sorted((tmp_path / "gen").iterdir()):
        (ref / f"other_{p.name}").write_bytes(p.read_bytes())
    evaluator = Evaluator(PRESETS["tiny"], backbone, None, backbone)
    with pytest.raises(PairingError, match="0 clip ids are shared"):
        evaluator.evaluate(audio_files(tmp_path / "gen"), audio_files(ref))


def test_cache_key_depends_on_every_field():
    base = ("b", "w", 16000, "rule", "f")
    keys = {feature_key(*base)}
    for i, other in enumerate(("b2", "w2", 22050, "rule2", "f2")):
        changed = list(base)
        changed[i] = other
        keys.add(feature_key(*changed))
    assert len(keys) == 6


def test_panns_input_rule():
    stereo = torch.stack([torch.ones(8000) * 0.5 + torch.arange(8000) / 8000, torch.zeros(8000)])
    x = audioldm_panns_input(stereo, 8000)  # 1 s at 8 kHz -> 2 s at 16 kHz after padding
    assert x.shape == (32000,)
    assert abs(float(x[:16000].mean())) < 1e-3  # mean removed (before padding)
    assert torch.all(x[16000:] == 0)
    with pytest.raises(ValueError, match="empty"):
        audioldm_panns_input(torch.zeros(1, 0), SR)


def test_vggish_frames_per_096_seconds():
    pytest.importorskip("torchvggish")
    from siren_lightning.metrics.backbones import VGGish

    torch.manual_seed(0)
    vggish = VGGish(pretrained=False)
    audio = torch.randn(2, int(2.5 * SR)) * 0.1
    out = vggish(audio)
    assert [f.shape for f in out.frames] == [(2, 128), (2, 128)]
    assert out.embedding.shape == (2, 128)
    # The last layer is linear (no ReLU): negative values survive.
    assert (out.frames[0] < 0).any()
    with pytest.raises(ValueError, match="0.96 s"):
        vggish(torch.randn(1, SR // 2))


def test_audioldm_eval_preset_names_every_missing_weights_file(tmp_path, monkeypatch):
    """Offline and without the pretrained files, the full preset fails once, naming each file."""
    from siren_lightning.metrics.protocol import build_evaluator
    from siren_lightning.metrics.weights import WeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIREN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as err:
        build_evaluator("audioldm_eval", clap_checkpoint="laion/clap-htsat-unfused")
    message = str(err.value)
    assert "Cnn14_16k_mAP=0.438.pth" in message and "vggish-10086976.pth" in message
    assert "laion/clap-htsat-unfused" in message and "--preset tiny" in message


def test_several_seeds_give_the_mean_the_spread_and_intervals(backbone, tmp_path):
    captions = _folder(tmp_path / "ref", 2)
    _folder(tmp_path / "seed0", 1)
    _folder(tmp_path / "seed1", 3)
    evaluator = Evaluator(PRESETS["tiny"], backbone, None, backbone, resamples=50)
    ref = evaluator.features(audio_files(tmp_path / "ref"))
    seeds = [evaluator.features(audio_files(tmp_path / f"seed{i}")) for i in (0, 1)]
    alone = [evaluator.score(s, ref, captions, resamples=0)["metrics"] for s in seeds]
    results = evaluator.score_seeds(seeds, ref, captions, labels=["a", "b"])
    for name in ("fd", "kad", "kl", "is_mean", "clap_score"):
        values = [m[name] for m in alone]
        assert results["metrics"][name] == pytest.approx(np.mean(values), rel=1e-12), name
        assert results["seed_spread"][name]["std"] == pytest.approx(np.std(values, ddof=1)), name
        low, high = results["intervals"][name]
        assert low <= high, name
    assert [s["label"] for s in results["seeds"]] == ["a", "b"]
    assert results["seeds"][1]["metrics"] == alone[1]
    assert results["bootstrap"]["resamples"] == 50 and results["bootstrap"]["confidence"] == 0.95
    assert "fad" not in results["intervals"]  # no value, no interval
    table = results_table(results)
    fd_low, fd_high = results["intervals"]["fd"]
    assert f"{results['metrics']['fd']:.4f} ± {(fd_high - fd_low) / 2:.4f}" in table
    assert "seed sd (2)" in table


def test_per_clip_rows_average_to_the_set_metrics(backbone, tmp_path):
    from siren_lightning.metrics.per_clip import per_clip_scores

    captions = _folder(tmp_path / "gen", 1)
    _folder(tmp_path / "ref", 2)
    evaluator = Evaluator(PRESETS["tiny"], backbone, None, backbone, resamples=0)
    gen = evaluator.features(audio_files(tmp_path / "gen"))
    ref = evaluator.features(audio_files(tmp_path / "ref"))
    metrics = evaluator.score(gen, ref, captions)["metrics"]
    rows = per_clip_scores(evaluator, gen, ref, captions)
    assert len(rows) == 12
    assert 100 * np.mean([r["clap_cosine"] for r in rows]) == pytest.approx(metrics["clap_score"])
    for key in ("kl", "kl_softmax", "kl_sigmoid"):
        assert np.mean([r[key] for r in rows]) == pytest.approx(metrics[key], rel=1e-9), key
