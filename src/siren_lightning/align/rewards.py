"""Rewards of the alignment stage behind one interface (DESIGN.md section 6).

Letters: B clips, N samples, E joint embedding width.

A `Reward` maps decoded audio and its captions to one number per clip:
``reward(audio [B, 1, N], sample_rate, captions) -> [B]`` (float32, on the audio's device, no
gradient). Rewards are plain objects, not `nn.Module`s, so their weights never enter a policy
checkpoint; `to(device)` moves whatever they hold.

- `TinyCLAPReward`: cosine x 100 with a bundled tiny CLAP (default `tiny-clap-reward`; the
  held-out evaluation uses the other one, `tiny-clap-eval`).
- `LaionCLAPReward`: cosine x 100 with LAION CLAP (`transformers.ClapModel`, local folder or hub
  id), loaded on first use through `metrics.backbones.LaionClap`.
- `EmbeddingCosineReward`: cosine x 100 between user-supplied audio and text embedding functions
  (ImageBind-style models); `mel-probe` is the one this project ships for SynthCaps
  (`align.probe_embedding`: fixed mel features, a ridge map into MiniLM's caption space).
- `CallableReward`: any Python function ``(audio, sample_rate, captions) -> [B]`` named by its
  dotted path in a YAML.
- `LoudnessReward`: RMS level in dB, a toy reward for tests.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class Reward(ABC):
    """Scores generated audio against its captions: ``(audio [B, 1, N], sr, captions) -> [B]``.

    `family` names the kind of model behind the score (e.g. "tiny-clap", "laion-clap"): a grader
    of the same family as the reward is not independent evidence that an alignment helped.
    """

    name: str = "reward"
    family: str = "custom"

    def __call__(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        if audio.ndim != 3 or audio.shape[1] != 1:
            raise ValueError(f"{self.name}: audio must be [B, 1, N], got {tuple(audio.shape)}")
        if len(captions) != audio.shape[0]:
            raise ValueError(f"{self.name}: {audio.shape[0]} clips but {len(captions)} captions")
        with torch.no_grad():
            out = self.score(audio[:, 0].float(), sample_rate, list(captions))
        out = torch.as_tensor(out, dtype=torch.float32, device=audio.device).reshape(-1)
        if out.shape[0] != audio.shape[0]:
            raise ValueError(
                f"{self.name}: returned {tuple(out.shape)} for {audio.shape[0]} clips; expected [B]"
            )
        return out

    @abstractmethod
    def score(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        """audio [B, N] float at `sample_rate`, B captions -> [B] rewards."""

    def to(self, device: torch.device | str) -> Reward:
        """Move the reward's networks (none by default)."""
        return self

    def provenance(self) -> dict[str, Any]:
        """What an aligned model records about the reward that trained it (JSON-able)."""
        return {"name": self.name, "family": self.family, "class": type(self).__name__}


def cosine_x100(audio_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Row-wise cosine x 100 of [B, E] and [B, E] -> [B]."""
    return 100.0 * F.cosine_similarity(audio_emb.float(), text_emb.float(), dim=-1, eps=1e-8)


class TinyCLAPReward(Reward):
    """Cosine x 100 between a tiny CLAP's audio and caption embeddings.

    Args:
        checkpoint: a bundled name (`tiny-clap-reward`, `tiny-clap-eval`) or a saved folder.
    """

    family = "tiny-clap"

    def __init__(self, checkpoint: str = "tiny-clap-reward") -> None:
        from siren_lightning.metrics.tiny_clap import (
            CaptionEmbeddingCache,
            load_tiny_clap,
            tiny_clap_path,
        )

        self.checkpoint = str(checkpoint)
        self.path = tiny_clap_path(checkpoint)
        self.name = f"tiny-clap:{Path(self.checkpoint).name}"
        self.model = load_tiny_clap(checkpoint)
        self.captions = CaptionEmbeddingCache(self.model.text_encoder_name)

    def to(self, device: torch.device | str) -> TinyCLAPReward:
        self.model.to(device)
        return self

    def provenance(self) -> dict[str, Any]:
        weights = Path(self.path) / "model.safetensors"
        sha = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
        return {**super().provenance(), "checkpoint": self.checkpoint, "sha256": sha}

    def score(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        device = self.model.logit_scale.device
        audio_emb = self.model.embed(audio.to(device), sample_rate)  # [B, E]
        text_emb = self.model.embed_text(self.captions(captions).to(device))  # [B, E]
        return cosine_x100(audio_emb, text_emb)


class LaionCLAPReward(Reward):
    """Cosine x 100 with LAION CLAP (`transformers.ClapModel` at 48 kHz), loaded on first use.

    Args:
        checkpoint: a local folder or a hub id (downloaded only when the hub is on).
        backbone: an already built `metrics.backbones.LaionClap` (tests); skips loading.

    Raises:
        metrics.weights.WeightsError: at the first call, naming the checkpoint, when its weights
            are neither local nor downloadable.
    """

    family = "laion-clap"

    def __init__(self, checkpoint: str = "laion/clap-htsat-unfused", backbone: Any = None):
        self.checkpoint = checkpoint
        self.name = f"laion-clap:{checkpoint}"
        self._backbone = backbone
        self._device: torch.device | str = "cpu"

    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from siren_lightning.metrics.backbones import LaionClap

            self._backbone = LaionClap(self.checkpoint).to(self._device)
        return self._backbone

    def to(self, device: torch.device | str) -> LaionCLAPReward:
        self._device = device
        if self._backbone is not None:
            self._backbone.to(device)
        return self

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "checkpoint": self.checkpoint}

    def score(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        audio_emb = self.backbone.embed(audio, sample_rate)  # [B, E]
        text_emb = self.backbone.embed_text(captions).to(audio_emb.device)  # [B, E]
        return cosine_x100(audio_emb, text_emb)


def resolve_callable(spec: str | Callable) -> Callable:
    """A callable, or one named `package.module.function` / `package.module:function`."""
    if callable(spec):
        return spec
    module_name, sep, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not module_name:
        raise ValueError(f"reward: {spec!r} is not a dotted path like 'package.module.function'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward: cannot import {spec!r}: {err}") from err
    if not callable(obj):
        raise ValueError(f"reward: {spec!r} is not callable")
    return obj


class EmbeddingCosineReward(Reward):
    """Cosine x 100 between user-supplied audio and text embeddings (ImageBind-style hook).

    Args:
        embed_audio: ``(audio [B, N], sample_rate) -> [B, E]`` (a callable or its dotted path).
        embed_text: ``(captions) -> [B, E]`` (a callable or its dotted path).
        family: the embedding model's family, recorded with every model it trains (e.g.
            "imagebind"); "embedding-cosine" when not given.

    An `embed_audio` that carries a ``provenance()`` attribute (a function returning a JSON-able
    dict, e.g. its checkpoint and SHA-256) has it merged into this reward's provenance.
    """

    def __init__(
        self,
        embed_audio: str | Callable,
        embed_text: str | Callable,
        family: str = "embedding-cosine",
    ) -> None:
        self.embed_audio = resolve_callable(embed_audio)
        self.embed_text = resolve_callable(embed_text)
        self.family = family
        self.name = f"embedding-cosine:{getattr(self.embed_audio, '__name__', 'audio')}"
        self._paths = [embed_audio, embed_text]

    def provenance(self) -> dict[str, Any]:
        paths = [
            p if isinstance(p, str) else getattr(p, "__qualname__", repr(p)) for p in self._paths
        ]
        extra = getattr(self.embed_audio, "provenance", None)
        return {
            **super().provenance(),
            "embed_audio": paths[0],
            "embed_text": paths[1],
            **(extra() if callable(extra) else {}),
        }

    def score(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        audio_emb = torch.as_tensor(self.embed_audio(audio, sample_rate))
        text_emb = torch.as_tensor(self.embed_text(captions)).to(audio_emb.device)
        if audio_emb.shape != text_emb.shape or audio_emb.ndim != 2:
            raise ValueError(
                f"{self.name}: audio and text embeddings must both be [B, E], got "
                f"{tuple(audio_emb.shape)} and {tuple(text_emb.shape)}"
            )
        return cosine_x100(audio_emb, text_emb)


class CallableReward(Reward):
    """Any function ``(audio [B, 1, N], sample_rate, captions) -> [B]``.

    Args:
        function: the callable or its dotted path (`package.module.function`).
        kwargs: extra keyword arguments passed on each call.
    """

    def __init__(self, function: str | Callable, kwargs: dict[str, Any] | None = None) -> None:
        self.function = resolve_callable(function)
        self.kwargs = dict(kwargs or {})
        self.name = f"callable:{getattr(self.function, '__name__', str(function))}"
        self.family = "callable"

    def score(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        return torch.as_tensor(self.function(audio[:, None], sample_rate, captions, **self.kwargs))


class LoudnessReward(Reward):
    """RMS level in dB (20 log10 RMS, floored at `floor_db`); ignores the captions. A toy."""

    name = "loudness-db"
    family = "loudness"

    def __init__(self, floor_db: float = -100.0) -> None:
        self.floor_db = floor_db

    def score(self, audio: Tensor, sample_rate: int, captions: list[str]) -> Tensor:
        rms = audio.pow(2).mean(dim=-1).sqrt()  # [B]
        return (20.0 * torch.log10(rms.clamp_min(1e-12))).clamp_min(self.floor_db)


def build_reward(spec: str) -> Reward:
    """A reward from a short spec (command-line tools).

    `loudness`; `tiny-clap:<name or folder>` or a bundled tiny CLAP name; `laion:<folder or hub
    id>`; `callable:<dotted path>`; `embedding-cosine:<audio fn>,<text fn>` (dotted paths);
    `mel-probe` (the committed `assets/mel-probe-reward`, family "mel-probe").
    """
    from siren_lightning.metrics.tiny_clap import BUNDLED

    kind, _, arg = spec.partition(":")
    if spec == "loudness":
        return LoudnessReward()
    if spec in BUNDLED:
        return TinyCLAPReward(spec)
    if kind == "tiny-clap" and arg:
        return TinyCLAPReward(arg)
    if kind == "laion":
        return LaionCLAPReward(arg or "laion/clap-htsat-unfused")
    if spec == "mel-probe":
        probe = "siren_lightning.align.probe_embedding"
        return EmbeddingCosineReward(
            f"{probe}.embed_audio", f"{probe}.embed_text", family="mel-probe"
        )
    if kind == "callable" and arg:
        return CallableReward(arg)
    if kind == "embedding-cosine" and arg.count(",") == 1:
        embed_audio, embed_text = arg.split(",")
        return EmbeddingCosineReward(embed_audio, embed_text)
    raise ValueError(
        f"unknown reward spec {spec!r}; use loudness, tiny-clap-reward, tiny-clap:<folder>, "
        "mel-probe, "
        "laion:<folder or hub id>, callable:<package.module.function> or "
        "embedding-cosine:<audio function>,<text function>"
    )
