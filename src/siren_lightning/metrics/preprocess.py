"""Audio preparation rules of the evaluation protocol, one function per rule.

Letters: C channels, N samples.

- `audioldm_panns_input`: what audioldm_eval feeds PANNs (its `WaveDataset`): first channel, mean
  removed, `torchaudio.functional.resample` to 16 kHz (default windowed-sinc), zero-padded at the
  end to at least 2 s, whole clip.
- `audioldm_vggish_input`: what its FAD feeds VGGish: the file read as int16 / 32768, channels
  averaged, `resampy.resample` to 16 kHz, no padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

PROTOCOL_SAMPLE_RATE = 16000
MIN_SECONDS = 2.0

PANNS_INPUT_RULE = (
    "first channel; mean removed; torchaudio.functional.resample (sinc_interp_hann, width 6, "
    "rolloff 0.99) to 16000 Hz; zero-pad at the end to >= 2 s; whole clip"
)
VGGISH_INPUT_RULE = (
    "soundfile int16 / 32768; channel mean; resampy.resample (kaiser_best) to 16000 Hz; no pad; "
    "non-overlapping 0.96 s frames, statistics over all frames of all files"
)


def _as_channels(audio: Tensor) -> Tensor:
    if audio.ndim == 1:
        return audio[None]
    if audio.ndim != 2:
        raise ValueError(f"expected audio [N] or [C, N], got {tuple(audio.shape)}")
    return audio


def audioldm_panns_input(
    audio: Tensor, sample_rate: int, target_rate: int = PROTOCOL_SAMPLE_RATE
) -> Tensor:
    """audioldm_eval's PANNs input.

    Args:
        audio: [N] or [C, N] float waveform.
        sample_rate: its rate.
        target_rate: the backbone's rate (16 kHz).

    Returns:
        [N'] float32 with N' >= 2 s at ``target_rate``.
    """
    x = _as_channels(audio)[0:1].to(torch.float32)
    if x.shape[-1] == 0:
        raise ValueError("empty audio")
    x = x - x.mean()
    if sample_rate != target_rate:
        x = torchaudio.functional.resample(x, orig_freq=sample_rate, new_freq=target_rate)
    min_samples = int(MIN_SECONDS * target_rate)
    if x.shape[-1] < min_samples:
        x = torch.nn.functional.pad(x, (0, min_samples - x.shape[-1]))
    return x[0]


def read_panns_input(path: str | Path, target_rate: int = PROTOCOL_SAMPLE_RATE) -> Tensor:
    """Read a file (float, all channels) and apply `audioldm_panns_input`."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    return audioldm_panns_input(torch.from_numpy(data.T.copy()), sr, target_rate)


def audioldm_vggish_input(
    audio: np.ndarray, sample_rate: int, target_rate: int = PROTOCOL_SAMPLE_RATE
) -> np.ndarray:
    """audioldm_eval's VGGish input from an array already scaled to [-1, 1].

    Args:
        audio: [N] or [N, C] (soundfile layout) float64 waveform.

    Returns:
        [N'] float64 at ``target_rate``.
    """
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sample_rate != target_rate:
        import resampy

        audio = resampy.resample(audio, sample_rate, target_rate)
    return audio


def read_vggish_input(path: str | Path, target_rate: int = PROTOCOL_SAMPLE_RATE) -> np.ndarray:
    """Read a file as audioldm_eval's FAD does (int16 / 32768) and apply `audioldm_vggish_input`."""
    data, sr = sf.read(str(path), dtype="int16")
    return audioldm_vggish_input(data / 32768.0, sr, target_rate)
