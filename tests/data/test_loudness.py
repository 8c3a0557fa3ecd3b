"""Per-frame loudness curves (`siren loudness`): hand-computed levels, windows of a batch."""

import math

import numpy as np
import pytest
import torch

from siren_lightning.data.loudness import frame_loudness, guidance_curve, window_control


def test_frame_loudness_by_hand():
    hop = 100
    square = np.tile([1.0, -1.0], 125)  # 250 samples: 2.5 frames at full scale
    out = frame_loudness(square, hop)
    assert out.shape == (3,)
    # RMS 1 is 0 dB -> 1; the last frame is half zeros: RMS 1/sqrt(2), -3.01 dB.
    np.testing.assert_allclose(out, [1.0, 1.0, (60 - 10 * math.log10(2)) / 60], rtol=1e-6)
    t = np.arange(400)
    sine = 0.1 * np.sin(2 * np.pi * t / 20)  # whole periods per frame: RMS 0.1 / sqrt(2)
    level = 20 * math.log10(0.1 / math.sqrt(2))  # -23.01 dB
    np.testing.assert_allclose(frame_loudness(sine, hop), [(60 + level) / 60] * 4, rtol=1e-6)
    assert frame_loudness(np.zeros(300), hop).tolist() == [0.0, 0.0, 0.0]  # clipped at -60 dB
    assert frame_loudness(1e-4 * square[:200], hop, floor_db=-100.0)[0] == pytest.approx(0.2)


def test_window_control_cuts_each_clips_window_and_pads():
    curves = {"a": torch.arange(10.0), "b": torch.arange(3.0) + 100}
    out = window_control(curves, ["a", "b"], torch.tensor([4, 0]), 5)
    assert out.shape == (2, 5, 1)
    assert out[0, :, 0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert out[1, :, 0].tolist() == [100.0, 101.0, 102.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="clip c has no loudness curve"):
        window_control(curves, ["c"], None, 5)


def test_read_curves_merges_a_folders_files_and_names_an_empty_one(tmp_path):
    from siren_lightning.data.loudness import read_curves

    with pytest.raises(FileNotFoundError, match="Stage control_cache: no loudness curves"):
        read_curves(tmp_path, "Stage control_cache")
    torch.save({"a": torch.ones(3)}, tmp_path / "train.pt")
    torch.save({"b": torch.zeros(2)}, tmp_path / "val.pt")
    curves = read_curves(tmp_path, "Stage")
    assert sorted(curves) == ["a", "b"] and curves["a"].tolist() == [1.0, 1.0, 1.0]


def test_pad_curves_takes_one_or_more_channels():
    from siren_lightning.data.loudness import pad_curves

    out = pad_curves([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0])], 2)
    assert out.shape == (2, 2, 1) and out[..., 0].tolist() == [[1.0, 2.0], [4.0, 0.0]]
    two = pad_curves([torch.arange(6.0).view(3, 2)], 4)
    assert two[0].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [0.0, 0.0]]


def test_guidance_curve_by_hand():
    curve = torch.tensor([0.0, 0.0, 0.5, 0.6, 0.7, 0.1, 0.9, 0.8, 0.0])
    steady = guidance_curve(curve, "steady")  # runs >= 0.35: frames 2-4 and 6-7
    torch.testing.assert_close(steady, torch.tensor([0, 0, 0.6, 0.6, 0.6, 0.1, 0.85, 0.85, 0]))
    torch.testing.assert_close(guidance_curve(curve, "flat"), torch.full((9,), 3.6 / 9))
    ends_loud = torch.tensor([0.5, 0.7, 0.0, 0.9])  # a run at either end is closed too
    torch.testing.assert_close(
        guidance_curve(ends_loud, "steady"), torch.tensor([0.6, 0.6, 0, 0.9])
    )
    two = torch.stack([curve, torch.arange(9.0)], dim=1)  # [T, C]: runs of the first feature
    torch.testing.assert_close(
        guidance_curve(two, "steady")[:, 1], torch.tensor([0, 1, 3, 3, 3, 5, 6.5, 6.5, 8])
    )
    reversed_ = guidance_curve(curve, "reversed")  # each run backwards, the rest as it was
    torch.testing.assert_close(reversed_, torch.tensor([0, 0, 0.7, 0.6, 0.5, 0.1, 0.8, 0.9, 0]))
    assert torch.equal(curve, torch.tensor([0.0, 0.0, 0.5, 0.6, 0.7, 0.1, 0.9, 0.8, 0.0]))
    with pytest.raises(ValueError, match="not one of"):
        guidance_curve(curve, "loud")
