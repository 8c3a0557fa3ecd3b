"""Parity with the reference implementations on the same random-initialised backbone weights.

audioldm_eval 0.0.3 (test-only dependency): its PANNs Cnn14, its WaveDataset preprocessing and its
calculate_fid / calculate_kl / calculate_isc; frechet_audio_distance's calculate_frechet_distance.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from siren_lightning.metrics.backbones import PannsCnn14
from siren_lightning.metrics.frechet import FrechetDistance
from siren_lightning.metrics.inception import InceptionScore
from siren_lightning.metrics.kl import KLDivergence, pair_by_id
from siren_lightning.metrics.preprocess import read_panns_input

os.environ.setdefault("HF_HUB_OFFLINE", "1")
audioldm_eval = pytest.importorskip("audioldm_eval")
panns_models = pytest.importorskip("audioldm_eval.feature_extractors.panns.models")
load_mel = pytest.importorskip("audioldm_eval.datasets.load_mel")

REL = 1e-4


def _write_clips(folder, seed: int, n: int = 12) -> None:
    """n synthetic clips (tones + noise, 0.7-2.6 s; one at 22.05 kHz and one stereo)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        sr = 22050 if i == 3 else 16000
        t = np.arange(int(sr * (0.7 + 1.9 * rng.random()))) / sr
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(
            len(t)
        )
        x = x + 0.1 * rng.random()  # a DC offset that the protocol removes
        if i == 5:
            x = np.stack([x, 0.5 * x[::-1]], axis=1)
        sf.write(folder / f"clip{i:02d}.wav", x.astype(np.float32), sr, subtype="FLOAT")


def _torchaudio_load(path):
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), sr


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Features of a generated and a reference folder through ours and audioldm_eval's path."""
    root = tmp_path_factory.mktemp("parity")
    _write_clips(root / "gen", seed=1)
    _write_clips(root / "ref", seed=2)
    torch.manual_seed(0)
    ours = PannsCnn14(pretrained=False)
    # Xavier-initialised logits barely differ between clips (every KL ~ 0, all rounding); a
    # larger random last layer spreads the class outputs so that the comparison means something.
    with torch.no_grad():
        ours.model.fc_audioset.weight.mul_(300.0)
    state = ours.model.state_dict()

    # audioldm_eval's Cnn14 loads a checkpoint in __init__; hand it our random weights instead.
    mp = pytest.MonkeyPatch()
    mp.setattr(panns_models.os.path, "exists", lambda p: True)
    mp.setattr(panns_models.torch, "load", lambda *a, **k: {"model": state})
    theirs = panns_models.Cnn14(
        features_list=["2048", "logits"],
        sample_rate=16000,
        window_size=512,
        hop_size=160,
        mel_bins=64,
        fmin=50,
        fmax=8000,
        classes_num=527,
    ).eval()
    mp.undo()
    # torchaudio.load needs torchcodec here; read with soundfile (same float32 samples).
    mp.setattr(load_mel.torchaudio, "load", _torchaudio_load)
    out = {}
    for side in ("gen", "ref"):
        dataset = load_mel.WaveDataset(str(root / side), 16000)
        names, ref_feats, our_emb, our_logits = [], {"2048": [], "logits": []}, [], []
        for i in range(len(dataset)):
            wave, name = dataset[i]
            with torch.no_grad():
                got = theirs(wave.float())
            ref_feats["2048"].append(got["2048"])
            ref_feats["logits"].append(got["logits"])
            names.append(name)
            x = read_panns_input(root / side / name)
            torch.testing.assert_close(x, wave[0].float(), rtol=0, atol=1e-6)
            with torch.no_grad():
                mine = ours(x[None])
            our_emb.append(mine.embedding)
            our_logits.append(mine.logits)
        out[side] = {
            "theirs": {k: torch.cat(v) for k, v in ref_feats.items()} | {"file_path_": names},
            "emb": torch.cat(our_emb),
            "logits": torch.cat(our_logits),
            "ids": [n.rsplit(".", 1)[0] for n in names],
        }
    mp.undo()
    return out


@pytest.mark.slow
def test_backbone_outputs_match(features):
    for side in ("gen", "ref"):
        torch.testing.assert_close(features[side]["emb"], features[side]["theirs"]["2048"])
        torch.testing.assert_close(features[side]["logits"], features[side]["theirs"]["logits"])


@pytest.mark.slow
def test_frechet_distance_matches_audioldm_eval(features):
    expected = audioldm_eval.calculate_fid(
        features["gen"]["theirs"], features["ref"]["theirs"], feat_layer_name="2048"
    )["frechet_distance"]
    fd = FrechetDistance(2048)
    fd.update(features["gen"]["emb"], real=False)
    fd.update(features["ref"]["emb"], real=True)
    with pytest.warns(UserWarning, match="rank-deficient"):
        got = float(fd.compute())
    print(f"FD ours {got!r} audioldm_eval {expected!r}")
    assert got == pytest.approx(expected, rel=REL)


@pytest.mark.slow
def test_kl_both_variants_match_audioldm_eval(features):
    expected, _, _ = audioldm_eval.calculate_kl(
        features["gen"]["theirs"], features["ref"]["theirs"], "logits", same_name=True
    )
    gen = dict(zip(features["gen"]["ids"], features["gen"]["logits"]))
    # Reference ids in another order: pairing goes by id, not position.
    ref = dict(zip(features["ref"]["ids"][::-1], features["ref"]["logits"].flip(0)))
    _, g, r = pair_by_id(gen, ref)
    for variant in ("softmax", "sigmoid"):
        kl = KLDivergence(variant)
        kl.update(g, r)
        want = expected[f"kullback_leibler_divergence_{variant}"]
        print(f"KL {variant} ours {float(kl.compute())!r} audioldm_eval {want!r}")
        assert float(kl.compute()) == pytest.approx(want, rel=REL), variant


@pytest.mark.slow
def test_inception_score_matches_audioldm_eval(features):
    expected = audioldm_eval.calculate_isc(
        features["gen"]["theirs"], "logits", rng_seed=2020, samples_shuffle=True, splits=10
    )
    metric = InceptionScore()
    metric.update(features["gen"]["logits"])
    mean, std = metric.compute()
    print(f"IS ours {float(mean)!r} {float(std)!r} audioldm_eval {expected}")
    assert float(mean) == pytest.approx(expected["inception_score_mean"], rel=REL)
    assert float(std) == pytest.approx(expected["inception_score_std"], rel=REL)


def test_frechet_distance_matches_frechet_audio_distance_math():
    from frechet_audio_distance.fad import FrechetAudioDistance

    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 32, generator=g, dtype=torch.float64)
    mix = torch.randn(32, 32, generator=g, dtype=torch.float64)
    y = torch.randn(300, 32, generator=g, dtype=torch.float64) @ mix
    fd = FrechetDistance(32)
    fd.update(x, real=True)
    fd.update(y + 0.2, real=False)
    # calculate_frechet_distance does not use `self`; the constructor would fetch VGGish.
    xn, yn = x.numpy(), (y + 0.2).numpy()
    expected = FrechetAudioDistance.calculate_frechet_distance(
        None, yn.mean(0), np.cov(yn, rowvar=False), xn.mean(0), np.cov(xn, rowvar=False)
    )
    assert float(fd.compute()) == pytest.approx(float(expected), rel=1e-9)
