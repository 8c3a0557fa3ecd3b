"""Audio and spectrograms for TensorBoard: one place that every stage logs media through."""

from __future__ import annotations

from typing import Any

import torch
import torchaudio


def spectrogram_figure(clips: dict[str, torch.Tensor], sample_rate: int) -> Any:
    """A matplotlib figure with one log-mel spectrogram per clip, stacked.

    Args:
        clips: title -> audio [N] (or [1, N]).
        sample_rate: their rate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80)
    fig, axes = plt.subplots(len(clips), 1, figsize=(6, 2 * len(clips)), squeeze=False)
    for ax, (title, x) in zip(axes[:, 0], clips.items(), strict=True):
        x = x.detach().reshape(-1).cpu().float()
        x = torch.nn.functional.pad(x, (0, max(0, 1024 - x.numel())))  # at least one window
        spec = mel(x).clamp_min(1e-5).log10()
        ax.imshow(spec.numpy(), origin="lower", aspect="auto")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def tensorboard_writer(trainer: Any) -> Any | None:
    """The SummaryWriter of the trainer's first TensorBoard logger, or None."""
    for logger in getattr(trainer, "loggers", []):
        writer = getattr(logger, "experiment", None)
        if writer is not None and hasattr(writer, "add_audio"):
            return writer
    return None


def log_clips(
    writer: Any, tag: str, clips: dict[str, torch.Tensor], sample_rate: int, step: int
) -> None:
    """Writes each clip as audio under `tag/<title>` and all of them as one spectrogram figure."""
    for title, x in clips.items():
        audio = x.detach().reshape(1, -1).cpu().float().clamp(-1, 1)
        writer.add_audio(f"{tag}/{title}", audio, step, sample_rate)
    writer.add_figure(f"{tag}/spectrograms", spectrogram_figure(clips, sample_rate), step)
