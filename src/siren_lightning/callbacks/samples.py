"""In-loop samples: every N validations, generate audio for fixed captions and log it."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from siren_lightning.callbacks.media import log_clips, tensorboard_writer
from siren_lightning.codec.base import seconds_to_frames
from siren_lightning.models.sampling import check_sampling


class AudioSamplesCallback(L.Callback):
    """Generates audio for a few captions with the module's sampler and logs it, with
    spectrograms, to TensorBoard (`samples/<i>`).

    The module must offer `sample_audio(captions, num_frames, seed, **sampling) -> [B, N]` and
    a `codec` with `sample_rate` and `hop_length` (`PretrainModule`).

    Args:
        captions: what to generate; by default the first caption of the first `num_captions`
            validation clips.
        num_captions: how many captions when `captions` is not given.
        seconds: length of each sample.
        every_n_validations: log at every N-th validation (sanity checks do not count).
        seed / sampling: passed to `sample_codes` (same seed each time: curves are comparable).
    """

    def __init__(
        self,
        captions: list[str] | None = None,
        num_captions: int = 4,
        seconds: float = 4.0,
        every_n_validations: int = 1,
        seed: int = 0,
        sampling: dict[str, Any] | None = None,
    ):
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        if seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        self.captions = list(captions) if captions else None
        self.num_captions = num_captions
        self.seconds = seconds
        self.every = every_n_validations
        self.seed = seed
        self.sampling = dict(sampling or {})
        check_sampling("AudioSamplesCallback: sampling", **self.sampling)
        self.validations = 0
        self.logged: list[int] = []  # global steps at which samples were logged

    def _default_captions(self, trainer: L.Trainer) -> list[str]:
        datasets = getattr(trainer.datamodule, "datasets", {})
        val = datasets.get("val")
        if val is None:
            raise ValueError(
                "AudioSamplesCallback: give `captions` or a datamodule with a val split"
            )
        out = []
        for i in range(min(self.num_captions, len(val))):
            item = val.items[i] if hasattr(val, "items") else val.clips[i]
            out.append(item["captions"][0] if isinstance(item, dict) else item.captions[0])
        return out

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.validations += 1
        if (self.validations - 1) % self.every:
            return
        writer = tensorboard_writer(trainer)
        codec = pl_module.codec
        if writer is None or codec is None:
            return
        if self.captions is None:
            self.captions = self._default_captions(trainer)
        frames = seconds_to_frames(self.seconds, codec.sample_rate, codec.hop_length)
        audio = pl_module.sample_audio(self.captions, frames, self.seed, **self.sampling)
        clips = {f"{i}: {c[:60]}": audio[i] for i, c in enumerate(self.captions)}
        log_clips(writer, "samples", clips, codec.sample_rate, trainer.global_step)
        self.logged.append(trainer.global_step)
