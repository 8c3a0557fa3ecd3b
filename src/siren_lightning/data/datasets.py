"""Map-style datasets for the three kinds of batch, and their collate functions.

- audio batches (codec stage): {"audio": [B, 1, N], "audio_mask": [B, N], "ids", "captions",
  "skipped": [(id, reason)]} (bad clips are left out of the tensors and listed in "skipped")
- code batches (pretraining): {"codes": [B, r, T] long, "mask": [B, T], "ids", "captions"}
  plus {"text_states": [B, L, Dt], "text_mask": [B, L]} when the cache holds caption states
- caption batches (alignment rollouts, generation): {"captions", "ids"}

Randomness (crops, caption choice): an item asked for by an `ItemKey` (what the training
sampler of `data.resumable` yields for manifests) draws from a generator seeded for that item, so
the batches depend only on (seed, epoch, clip) and a resumed or multi-process run sees the same
ones; an item asked for by a plain index draws from torch's global generator. Code batches for
training stream through `data.streaming`, which seeds `crop_codes` the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from siren_lightning.data.audio import AudioError, crop_or_pad, load_audio
from siren_lightning.data.manifest import Clip
from siren_lightning.data.resumable import item_generator

log = logging.getLogger(__name__)


def _choose(n: int, train: bool, generator: torch.Generator | None = None) -> int:
    """A random index in [0, n) when training, else 0."""
    return int(torch.randint(n, (), generator=generator)) if train and n > 1 else 0


class AudioClipDataset(Dataset):
    """Reads, crops and pads clips from a manifest. Bad clips come back as a skip record.

    Args:
        clips: manifest entries.
        sample_rate: rate the audio is resampled to.
        crop_samples: output length; shorter clips are zero-padded and masked.
        train: random crop and random caption; otherwise the clip's start and first caption.
        min_seconds: clips shorter than this are skipped as too short.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        sample_rate: int,
        crop_samples: int,
        train: bool,
        min_seconds: float = 0.0,
    ):
        self.clips = list(clips)
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples
        self.train = train
        self.min_seconds = min_seconds

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i, gen = item_generator(key)
        clip = self.clips[i]
        try:
            audio = load_audio(clip.audio, self.sample_rate, min_seconds=self.min_seconds)
        except AudioError as err:
            log.warning("skipping clip %s: %s", clip.id, err)
            return {"skipped": clip.id, "reason": err.reason}
        spare = max(audio.numel() - self.crop_samples, 0)
        start = int(torch.randint(spare + 1, (), generator=gen)) if self.train and spare else 0
        piece, mask = crop_or_pad(audio, self.crop_samples, start)
        caption = clip.captions[_choose(len(clip.captions), self.train, gen)]
        return {
            "id": clip.id,
            "audio": piece,
            "audio_mask": mask,
            "caption": caption,
            "attributes": dict(clip.attributes),
        }


def collate_audio(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks the good clips; skip records travel on as `skipped`: [(id, reason)]."""
    good = [it for it in items if "skipped" not in it]
    skipped = [(it["skipped"], it["reason"]) for it in items if "skipped" in it]
    batch: dict[str, Any] = {"skipped": skipped, "ids": [it["id"] for it in good]}
    batch["captions"] = [it["caption"] for it in good]
    batch["attributes"] = [it.get("attributes", {}) for it in good]  # SynthCaps: the clip's own
    if good:
        batch["audio"] = torch.stack([it["audio"] for it in good]).unsqueeze(1)  # [B, 1, N]
        batch["audio_mask"] = torch.stack([it["audio_mask"] for it in good])  # [B, N]
    else:
        batch["audio"] = torch.zeros(0, 1, 0)
        batch["audio_mask"] = torch.zeros(0, 0, dtype=torch.bool)
    return batch


def crop_codes(
    item: dict[str, Any], crop_frames: int, train: bool, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """A window of a pre-tokenized clip and one of its captions.

    Args:
        item: {"id", "codes" [r, T], "captions"} and optionally "text_states" (one [L, Dt]
            tensor per caption).
        crop_frames: the longest window returned (300 frames = 6 s at 50 frames/s).
        train: a random window and caption (drawn from `generator`); otherwise the first window
            and first caption.

    Returns:
        {"id", "codes" long [r, <=crop_frames], "caption", "frame_offset", "total_frames"} and
        "text_states" float [L, Dt] of the chosen caption when the item has them.
    """
    codes = torch.as_tensor(item["codes"]).long()  # [r, T]
    spare = max(codes.shape[-1] - crop_frames, 0)
    start = int(torch.randint(spare + 1, (), generator=generator)) if train and spare else 0
    captions = item["captions"]
    which = _choose(len(captions), train, generator)
    out = {
        "id": item["id"],
        "codes": codes[:, start : start + crop_frames],
        "caption": captions[which],
        "frame_offset": start,  # where the window sits in its clip (timing conditioning)
        "total_frames": codes.shape[-1],
    }
    if item.get("text_states") is not None:  # one [L, Dt] tensor per caption
        out["text_states"] = torch.as_tensor(item["text_states"][which]).float()
    return out


class CodeClipDataset(Dataset):
    """Map-style windows of pre-tokenized clips (evaluation; training streams `data.streaming`).

    Args:
        items: any sequence of {"id", "codes" [r, T], "captions"} items, e.g. a `CodeCache`.
        crop_frames: the longest window returned.
        train: random window and random caption; otherwise the first window and first caption.
    """

    def __init__(self, items: Sequence[dict[str, Any]], crop_frames: int, train: bool):
        self.items = items
        self.crop_frames = crop_frames
        self.train = train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i, gen = item_generator(key)
        return crop_codes(self.items[i], self.crop_frames, self.train, gen)


def collate_codes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pads codes to the longest clip of the batch; `mask` is True on real frames."""
    r = items[0]["codes"].shape[0]
    t_max = max(it["codes"].shape[-1] for it in items)
    codes = torch.zeros(len(items), r, t_max, dtype=torch.long)
    mask = torch.zeros(len(items), t_max, dtype=torch.bool)
    for b, it in enumerate(items):
        t = it["codes"].shape[-1]
        codes[b, :, :t] = it["codes"]
        mask[b, :t] = True
    batch: dict[str, Any] = {
        "codes": codes,  # [B, r, T]
        "mask": mask,  # [B, T]
        "ids": [it["id"] for it in items],
        "captions": [it["caption"] for it in items],
    }
    if all("total_frames" in it for it in items):  # [B] each: the window's place in its clip
        batch["frame_offset"] = torch.tensor([it["frame_offset"] for it in items])
        batch["total_frames"] = torch.tensor([it["total_frames"] for it in items])
    if all("text_states" in it for it in items):
        l_max = max(it["text_states"].shape[0] for it in items)
        dim = items[0]["text_states"].shape[-1]
        states = torch.zeros(len(items), l_max, dim)
        text_mask = torch.zeros(len(items), l_max, dtype=torch.bool)
        for b, it in enumerate(items):
            n = it["text_states"].shape[0]
            states[b, :n] = it["text_states"]
            text_mask[b, :n] = True
        batch["text_states"], batch["text_mask"] = states, text_mask  # [B, L, Dt], [B, L]
    return batch


class CaptionDataset(Dataset):
    """One caption per clip: random among the clip's captions when training, else the first."""

    def __init__(self, clips: Sequence[Clip], train: bool):
        self.clips = list(clips)
        self.train = train

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i, gen = item_generator(key)
        clip = self.clips[i]
        caption = clip.captions[_choose(len(clip.captions), self.train, gen)]
        return {"id": clip.id, "caption": caption, "seconds": clip.duration}


def collate_captions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """captions, ids and each clip's duration in seconds (None where the manifest has none)."""
    return {
        "captions": [it["caption"] for it in items],
        "ids": [it["id"] for it in items],
        "seconds": [it["seconds"] for it in items],
    }
