"""The stable_audio_metrics preset on random weights: input, resampling and windowing rules,
shapes, the KL direction, the protocol record and the one error for missing weights.

Random weights give shapes and rules only; the preset's numbers need the real weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("hear21passt")

from siren_lightning.metrics.stable_audio import (  # noqa: E402
    OPENL3_HOP,
    OPENL3_WINDOW,
    OpenL3,
    PaSST,
    openl3_frames,
    passt_windows,
    stable_audio_input,
)


def test_input_rule_mono_resampled_peak_normalised_and_int16():
    sr = 16000
    t = torch.arange(sr) / sr
    stereo = torch.stack(
        [0.2 * torch.sin(2 * math.pi * 1000 * t), 0.1 * torch.sin(2 * math.pi * 1000 * t)]
    )
    x = stable_audio_input(stereo, sr, 48000)
    assert x.shape == (48000,)
    assert float(x.abs().max()) == pytest.approx(10 ** (-1 / 20), rel=1e-6)  # -1 dBFS
    # The channel mean of two in-phase sines is a sine: at 48 kHz it is the analytic one.
    t48 = torch.arange(48000) / 48000
    expected = 10 ** (-1 / 20) * torch.sin(2 * math.pi * 1000 * t48)
    torch.testing.assert_close(x[1000:-1000], expected[1000:-1000], atol=2e-3, rtol=0)
    assert torch.equal(stable_audio_input(torch.zeros(800), sr, sr), torch.zeros(800))
    # int16 round trip as numpy's astype(int16) (truncation toward zero) / 32767.
    y = stable_audio_input(stereo, sr, sr, int16=True)
    ref = (np.clip(stable_audio_input(stereo, sr, sr).numpy(), -1, 1) * 32767.0).astype(np.int16)
    np.testing.assert_array_equal(y.numpy(), (ref / 32767.0).astype(np.float32))


def _openl3_windows(n: int) -> int:
    """openl3's window count with center=True: 1 + ceil((n + w/2 - w) / hop), at least 1."""
    n += OPENL3_WINDOW // 2
    return 1 if n <= OPENL3_WINDOW else 1 + math.ceil((n - OPENL3_WINDOW) / OPENL3_HOP)


@pytest.mark.parametrize("n", [4800, 24000, 48000, 62400, 110400])
def test_openl3_windows_match_openl3_and_torchopenl3(n):
    pytest.importorskip("torchopenl3")  # installed with --no-deps (see setup.cfg)
    from torchopenl3.utils import preprocess_audio_batch

    audio = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    frames = openl3_frames(audio)
    assert frames.shape == (_openl3_windows(n), OPENL3_WINDOW)
    # The first window: half a window of zeros, then the clip's first 0.5 s (zero-padded).
    half = OPENL3_WINDOW // 2
    first = torch.zeros(OPENL3_WINDOW, dtype=torch.float64)
    first[half : half + min(n, half)] = audio[:half]
    assert torch.equal(frames[0], first)
    package = preprocess_audio_batch(audio[None], 48000, center=True, hop_size=0.5)[:, 0]
    assert torch.equal(frames, package)


def test_passt_windows_follow_passt_kld():
    def lengths(seconds: float) -> list[int]:
        return [w.shape[-1] for w in passt_windows(torch.zeros(int(seconds * 32000)))]

    assert lengths(1.0) == [32000]  # <= 1.5 s: kept short, not padded
    assert lengths(2.0) == [320000]  # padded to 10 s
    assert lengths(10.0) == [320000]
    assert lengths(12.0) == [320000, 320000]  # 0-10 s, 5-12 s padded
    assert lengths(15.0) == [320000, 320000]  # 0-10 s, 5-15 s
    assert lengths(16.0) == [320000] * 3  # 0-10 s, 5-15 s, 10-16 s padded
    audio = torch.arange(12 * 32000, dtype=torch.float32)
    second = passt_windows(audio)[1]
    assert torch.equal(second[: 7 * 32000], audio[5 * 32000 :]) and not second[7 * 32000 :].any()


def test_openl3_random_weights_frames_and_clip_mean():
    pytest.importorskip("torchopenl3")  # installed with --no-deps (see setup.cfg)
    torch.manual_seed(0)
    openl3 = OpenL3(pretrained=False)
    assert openl3.weights_sha256 is None and openl3.sample_rate == 48000
    audio = torch.randn(2, 62400) * 0.1  # 1.3 s: 3 windows each
    out = openl3(audio)
    assert [f.shape for f in out.frames] == [(3, 512), (3, 512)]
    torch.testing.assert_close(out.embedding, torch.stack([f.mean(0) for f in out.frames]))
    torch.testing.assert_close(out.frames[1], openl3.frame_embeddings(audio[1]))


def _tiny_passt():
    from hear21passt.models.passt import PaSST as PaSSTNet

    torch.manual_seed(0)
    return PaSSTNet(
        img_size=(128, 998),
        stride=(10, 10),
        embed_dim=24,
        depth=1,
        num_heads=2,
        distilled=True,
        num_classes=527,
    )


def test_passt_logits_are_the_mean_over_windows():
    passt = PaSST(pretrained=False, net=_tiny_passt())
    assert passt.embedding_dim == 24 and passt.num_classes == 527 and passt.sample_rate == 32000
    audio = torch.randn(1, 12 * 32000) * 0.1  # two windows
    out = passt(audio)
    assert out.logits.shape == (1, 527) and out.embedding.shape == (1, 24)
    per_window = [passt.window_outputs(w)[0] for w in passt_windows(audio[0])]
    torch.testing.assert_close(out.logits[0], torch.stack(per_window).mean(0))


def test_missing_weights_give_one_error_naming_every_file(tmp_path, monkeypatch):
    from siren_lightning.metrics.protocol import build_evaluator
    from siren_lightning.metrics.weights import WeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIREN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as err:
        build_evaluator("stable_audio_metrics")
    message = str(err.value)
    for name in (
        "torchopenl3_mel256_env_512.pth.tar",
        "passt-s-f128-p16-s10-ap.476-swa.pt",
        "laion/clap-htsat-fused",
        str(tmp_path / "weights"),
    ):
        assert name in message, name


def test_preset_scores_folders_and_records_its_protocol(tmp_path):
    pytest.importorskip("torchopenl3")  # installed with --no-deps (see setup.cfg)
    from clap_testing import tiny_laion_clap

    from siren_lightning.metrics.protocol import PRESETS, Evaluator, audio_files

    rng = np.random.default_rng(0)
    captions = {}
    for folder in ("gen", "ref"):
        (tmp_path / folder).mkdir()
        for i in range(6):
            n = int(16000 * rng.uniform(0.8, 1.6))
            f = rng.uniform(200, 3000)
            audio = 0.3 * np.sin(
                2 * math.pi * f * np.arange(n) / 16000
            ) + 0.01 * rng.standard_normal(n)
            sf.write(tmp_path / folder / f"c{i}.wav", audio.astype(np.float32), 16000)
            captions[f"c{i}"] = "a tone"
    torch.manual_seed(0)
    evaluator = Evaluator(
        PRESETS["stable_audio_metrics"],
        OpenL3(pretrained=False),
        None,
        tiny_laion_clap(),
        classifier_backbone=PaSST(pretrained=False, net=_tiny_passt()),
        resamples=20,
    )
    gen, ref = audio_files(tmp_path / "gen"), audio_files(tmp_path / "ref")
    gen_feats, ref_feats = evaluator.features(gen), evaluator.features(ref)
    results = evaluator.score(gen_feats, ref_feats, captions)
    assert results["preset"] == "stable_audio_metrics"
    protocol, backbones = results["protocol"], results["backbones"]
    assert protocol["kl_variant"] == "softmax_gen_ref" and "1 s windows" in protocol["fd_rule"]
    assert (
        backbones["fd"]["name"] == "openl3-mel256-env-512"
        and backbones["fd"]["sample_rate"] == 48000
    )
    assert backbones["classifier"]["name"] == "passt-s-swa-p16-128-ap476"
    assert backbones["classifier"]["sample_rate"] == 32000
    assert backbones["fd"]["weights_sha256"] == "random-init"
    # FD pools every OpenL3 frame: each clip of 0.8-1.6 s has 2 or 3 windows.
    frames = sum(f["fd_frames"].shape[0] for f in gen_feats.values())
    assert results["counts"]["fd_frames_generated"] == frames and 12 <= frames <= 18
    # KL(p_gen || p_ref), softmax, +1e-6 on the reference (passt_kld's direction).
    g = torch.stack([gen_feats[k]["logits"] for k in ref_feats]).double().softmax(1)
    r = torch.stack([ref_feats[k]["logits"] for k in ref_feats]).double().softmax(1)
    expected = float((g * (g.log() - (r + 1e-6).log())).sum(1).mean())
    assert results["metrics"]["kl"] == pytest.approx(expected, rel=1e-9)
    assert results["metrics"]["kl"] == results["metrics"]["kl_softmax_gen_ref"]
    assert {"fd", "kad", "kl", "clap_score"} <= set(results["intervals"])
