"""Audio I/O: read with soundfile, mix to mono, resample with torchaudio, crop and pad.

Letters: N audio samples, B batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# A clip whose peak stays below this is silence for our purposes (about -100 dBFS).
SILENCE_PEAK = 1e-5
# Clips shorter than this are skipped as too short by default: 0.1 s is 5 frames of a 50 Hz codec,
# too little for a prompt to be heard in, and usually a cut or conversion gone wrong.
MIN_SECONDS = 0.1


class AudioError(ValueError):
    """A clip that cannot be used: missing, unreadable, empty, silent or too short."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def audio_info(path: str | Path) -> tuple[int, int]:
    """Reads only the header. Returns (frames, sample_rate). Raises AudioError."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing file")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt headers
        raise AudioError(path, f"unreadable ({exc.__class__.__name__}: {exc})") from None
    return int(info.frames), int(info.samplerate)


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited sinc resampling (torchaudio). audio: [..., N] -> [..., N * new / orig]."""
    if orig_sr == new_sr:
        return audio
    return AF.resample(audio, orig_sr, new_sr)


def load_audio(
    path: str | Path,
    sample_rate: int,
    *,
    min_seconds: float = 0.0,
    allow_silent: bool = False,
) -> torch.Tensor:
    """Reads a clip as mono float32 at `sample_rate`.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, mp3).
        sample_rate: target rate; other rates are resampled.
        min_seconds: shorter clips raise AudioError.
        allow_silent: if False, an all-silent clip raises AudioError.

    Returns:
        audio: [N] float32.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"unreadable ({exc.__class__.__name__}: {exc})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "empty (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or inf samples")
    audio = torch.from_numpy(data.mean(axis=1))  # [N, C] -> [N]
    audio = resample(audio, sr, sample_rate)
    if audio.numel() < min_seconds * sample_rate:
        raise AudioError(path, f"too short ({audio.numel() / sample_rate:.2f} s < {min_seconds} s)")
    if not allow_silent and float(audio.abs().max()) < SILENCE_PEAK:
        raise AudioError(path, "silent")
    return audio.contiguous()


def crop_or_pad(
    audio: torch.Tensor, length: int, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cuts `length` samples from `start`, zero-padding the end when the clip is shorter.

    Args:
        audio: [N].
        length: output length.
        start: first sample kept (must leave no gap: 0 <= start <= max(N - length, 0)).

    Returns:
        (audio [length], mask [length] bool, True where the sample is real).
    """
    n = audio.numel()
    if not 0 <= start <= max(n - length, 0):
        raise ValueError(f"crop start {start} out of range for {n} samples and length {length}")
    piece = audio[start : start + length]
    mask = torch.zeros(length, dtype=torch.bool)
    mask[: piece.numel()] = True
    if piece.numel() < length:
        piece = torch.nn.functional.pad(piece, (0, length - piece.numel()))
    return piece, mask


def write_audio(path: str | Path, audio: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Writes mono 16-bit PCM WAV. audio: [N] (or [1, N]) float in [-1, 1]."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
