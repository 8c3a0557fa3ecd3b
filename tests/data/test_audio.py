import numpy as np
import pytest
import soundfile as sf
import torch

from siren_lightning.data.audio import AudioError, crop_or_pad, load_audio, write_audio


def _sine(sr: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_load_mixes_stereo_to_mono_and_resamples(tmp_path):
    left = _sine(44_100, 1.0, 440.0)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 44_100)
    audio = load_audio(tmp_path / "s.flac", 16_000)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert audio.numel() == 16_000
    # mono = mean of channels: a 0.5 sine in one channel becomes a 0.25 sine
    assert abs(float(audio[1000:-1000].abs().max()) - 0.25) < 0.01
    spectrum = torch.fft.rfft(audio).abs()
    assert int(spectrum.argmax()) == 440  # 1 s at 16 kHz: bin index = Hz


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "missing file"),
        (lambda p: p.write_bytes(b"RIFF garbage that is not audio"), "unreadable"),
        (lambda p: sf.write(p, np.zeros((0,), np.float32), 16_000), "empty"),
        (lambda p: sf.write(p, np.zeros(16_000, np.float32), 16_000), "silent"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_path(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16_000)
    assert str(path) in str(info.value)
    assert info.value.reason.startswith(reason)


def test_too_short_raises(tmp_path):
    write_audio(tmp_path / "short.wav", _sine(16_000, 0.05), 16_000)
    with pytest.raises(AudioError, match="too short"):
        load_audio(tmp_path / "short.wav", 16_000, min_seconds=0.1)


def test_crop_or_pad():
    audio = torch.arange(10, dtype=torch.float32)
    piece, mask = crop_or_pad(audio, 4, start=3)
    assert piece.tolist() == [3, 4, 5, 6] and mask.all()
    piece, mask = crop_or_pad(audio, 13)
    assert piece[:10].tolist() == audio.tolist() and piece[10:].eq(0).all()
    assert mask.tolist() == [True] * 10 + [False] * 3
    with pytest.raises(ValueError):
        crop_or_pad(audio, 4, start=7)


def test_write_then_read_round_trip(tmp_path):
    x = _sine(16_000, 0.5)
    write_audio(tmp_path / "x.wav", torch.from_numpy(x), 16_000)
    y = load_audio(tmp_path / "x.wav", 16_000)
    assert torch.allclose(y, torch.from_numpy(x), atol=1 / 32768 + 1e-6)  # 16-bit PCM
