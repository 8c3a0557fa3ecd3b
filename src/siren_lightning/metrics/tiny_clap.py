"""Tiny CLAP: a log-mel conv audio encoder and the frozen MiniLM text encoder, each with a
projection into one joint space (the offline reward and evaluation backbone, DESIGN.md §4).

Letters: B clips, N samples, M mel bins, T mel frames, D joint width, Dt text width (384).

The text encoder is frozen and not part of the saved weights: a checkpoint holds the config, the
audio encoder, both projections, the logit scale and the class prompts (the caption vocabulary
whose similarities serve as class logits for KL / IS in the `tiny` preset).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from siren_lightning.metrics.backbones import AudioBackbone, BackboneOutput
from siren_lightning.metrics.weights import WeightsError, sha256_file


@dataclass
class TinyCLAPConfig:
    """Sizes of a tiny CLAP.

    Attributes:
        sample_rate: audio rate.
        n_fft, hop_length, n_mels: log-mel front end (hop 320 = 50 frames/s at 16 kHz).
        channels: conv block widths; each block halves time and frequency.
        embed_dim: joint width D.
        text_dim: width Dt of the frozen text encoder's pooled output.
        text_backend: `siren_lightning.text.TextEncoder` backend.
        init_temperature: initial softmax temperature of the contrastive logits.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 64
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    embed_dim: int = 128
    text_dim: int = 384
    text_backend: str = "minilm"
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        assert self.n_mels % (2 ** len(self.channels)) == 0, "n_mels must survive the pooling"
        assert self.embed_dim > 0 and self.text_dim > 0

    @classmethod
    def from_name(cls, name: str, **overrides) -> TinyCLAPConfig:
        sizes = {
            "tiny": {},
            "test": {"channels": [4, 8], "n_mels": 16, "embed_dim": 16, "n_fft": 256},
        }
        if name not in sizes:
            raise ValueError(f"unknown TinyCLAP size {name!r}; choose from {sorted(sizes)}")
        return cls(**(sizes[name] | overrides))


class LogMelConvEncoder(nn.Module):
    """Audio [B, N] -> log-mel [B, 1, M, T] -> conv blocks -> masked time pooling -> [B, C]."""

    def __init__(self, config: TinyCLAPConfig) -> None:
        super().__init__()
        c = config
        self.hop_length = c.hop_length
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels
        )
        self.norm = nn.BatchNorm2d(c.n_mels)  # per mel bin, as PANNs' bn0
        blocks, width = [], 1
        for out in c.channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(width, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(out, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                    nn.AvgPool2d(2),
                )
            )
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = 2 * width  # mean and max over time
        self.stride = 2 ** len(c.channels)

    def forward(self, audio: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: audio [B, N]; mask [B, N] bool (True = real sample) or None. Returns [B, 2C]."""
        x = torch.log(self.mel(audio) + 1e-5).unsqueeze(1)  # [B, 1, M, T]
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.blocks(x).mean(dim=2)  # [B, C, T']
        t = x.shape[-1]
        if mask is None:
            valid = torch.ones(x.shape[0], t, dtype=torch.bool, device=x.device)
        else:
            frames = mask[:, :: self.hop_length][:, : t * self.stride]  # [B, ~T]
            frames = F.pad(frames.float(), (0, t * self.stride - frames.shape[1]))
            valid = frames.view(frames.shape[0], t, self.stride).amax(-1) > 0  # [B, T']
            valid[:, 0] = True
        w = valid.unsqueeze(1).float()  # [B, 1, T']
        mean = (x * w).sum(-1) / w.sum(-1)
        peak = x.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(-1)
        return torch.cat([mean, peak], dim=1)


class TinyCLAP(nn.Module):
    """Audio and caption embeddings in one L2-normalised space.

    Args:
        config: sizes.
        text_encoder: a frozen `siren_lightning.text.TextEncoder` (built from the config when
            None); it is not saved with the weights.
    """

    def __init__(self, config: TinyCLAPConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = LogMelConvEncoder(config)
        self.audio_proj = nn.Sequential(
            nn.Linear(self.audio_encoder.out_dim, config.embed_dim),
            nn.ReLU(),
            nn.Linear(config.embed_dim, config.embed_dim),
        )
        self.text_proj = nn.Sequential(
            nn.Linear(config.text_dim, config.embed_dim),
            nn.ReLU(),
            nn.Linear(config.embed_dim, config.embed_dim),
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        if text_encoder is None:
            from siren_lightning.text import TextEncoder

            text_encoder = TextEncoder(config.text_backend)
        # Kept outside the module tree: frozen, shared, never in state_dict or the optimizer.
        self._text = [text_encoder]
        self._text_cache: dict[str, Tensor] = {}

    @property
    def text_encoder(self) -> nn.Module:
        return self._text[0]

    def encode_audio(self, audio: Tensor, mask: Tensor | None = None) -> Tensor:
        """audio [B, N] (or [B, 1, N]), mask [B, N] -> normalised embeddings [B, D]."""
        if audio.ndim == 3:
            audio = audio[:, 0]
        if audio.ndim != 2:
            raise ValueError(f"TinyCLAP expects audio [B, N] or [B, 1, N], got {audio.shape}")
        return F.normalize(self.audio_proj(self.audio_encoder(audio, mask)), dim=-1)

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> Tensor:
        """Frozen pooled text states [B, Dt], memoised per caption."""
        missing = sorted({c for c in captions if c not in self._text_cache})
        if missing:
            pooled = self.text_encoder.encode(missing).pooled.float().cpu()
            self._text_cache.update(zip(missing, pooled))
        device = self.logit_scale.device
        return torch.stack([self._text_cache[c] for c in captions]).to(device)

    def encode_text(self, captions: list[str]) -> Tensor:
        """Captions -> normalised embeddings [B, D] (gradient flows into the projection)."""
        return F.normalize(self.text_proj(self.text_features(captions)), dim=-1)

    def forward(self, audio: Tensor, captions: list[str], mask: Tensor | None = None) -> Tensor:
        """Contrastive logits [B, B]: row i = audio i against every caption."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * self.encode_audio(audio, mask) @ self.encode_text(captions).T


def save_tiny_clap(model: TinyCLAP, path: str | Path, class_prompts: list[str]) -> str:
    """Save config, trainable weights and class prompts; returns the file's SHA-256."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"config": asdict(model.config), "state_dict": state, "prompts": class_prompts}, path
    )
    return sha256_file(path)


def load_tiny_clap(
    path: str | Path, text_encoder: nn.Module | None = None
) -> tuple[TinyCLAP, list[str], str]:
    """Load a `save_tiny_clap` file -> (model in eval mode, class prompts, SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"tiny CLAP checkpoint {path} not found; train one with `siren fit --config "
            "experiments/tiny_clap_eval.yaml` or place the file there"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyCLAP(TinyCLAPConfig(**blob["config"]), text_encoder)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), list(blob["prompts"]), sha256_file(path)


class TinyCLAPBackbone(AudioBackbone):
    """A trained tiny CLAP as a metric backbone.

    ``forward`` gives the joint-space audio embedding and, as class logits, the scaled cosine
    similarity to each class prompt (zero-shot tagging over the caption vocabulary).
    """

    def __init__(
        self,
        model: TinyCLAP,
        class_prompts: list[str],
        name: str = "tiny-clap-eval",
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.sample_rate = model.config.sample_rate
        self.embedding_dim = model.config.embed_dim
        self.num_classes = len(class_prompts)
        self.class_prompts = list(class_prompts)
        self.weights_sha256 = weights_sha256
        self.eval()
        with torch.no_grad():
            self.register_buffer("prompt_emb", model.encode_text(self.class_prompts))

    @classmethod
    def from_file(cls, path: str | Path, name: str = "tiny-clap-eval") -> TinyCLAPBackbone:
        model, prompts, sha = load_tiny_clap(path)
        return cls(model, prompts, name=name, weights_sha256=sha)

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] -> embedding [B, D], logits [B, C] over the class prompts."""
        emb = self.model.encode_audio(self._check(audio))
        scale = self.model.logit_scale.clamp(max=math.log(100.0)).exp()
        return BackboneOutput(embedding=emb, logits=scale * emb @ self.prompt_emb.T)

    @torch.no_grad()
    def embed_text(self, captions: list[str]) -> Tensor:
        return self.model.encode_text(captions)
