"""Tiny CLAP: a small audio-text contrastive model for the offline default (DESIGN.md section 4).

Audio: log-mel spectrogram -> strided 1-D convolutions -> a small transformer with a [CLS]
token (attention can count events, which mean pooling cannot) -> projection. Text: the frozen
MiniLM sentence embedding (mean of its token states, from `siren_lightning.text`) -> a trainable
two-layer projection. Both land L2-normalised in one space; the cosine is the score.

Two are trained with different seeds and sizes: `tiny-clap-reward` (stage-2 reward) and
`tiny-clap-eval` (CLAP score and an FD embedding in the `tiny` preset), so alignment is never
graded by its own reward. Letters: B clips, N samples, M mels, T frames, E embedding width.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from siren_lightning.data.audio import resample
from siren_lightning.metrics.backbones import AudioBackbone, BackboneOutput
from siren_lightning.metrics.weights import sha256_file

# Checkpoints the embedded default ships, each with the YAMLs that train it (assets/<name>/README.md
# says how each was made). The "-clean" pair is trained on SynthCaps clean by an overlay.
BUNDLED = {
    "tiny-clap-reward": ("tiny-clap-reward.yaml",),
    "tiny-clap-eval": ("tiny-clap-eval.yaml",),
    "tiny-clap-reward-clean": ("tiny-clap-reward.yaml", "tiny-clap-reward-clean.yaml"),
    "tiny-clap-eval-clean": ("tiny-clap-eval.yaml", "tiny-clap-eval-clean.yaml"),
    "tiny-clap-reward-faults": (
        "tiny-clap-reward.yaml",
        "tiny-clap-reward-clean.yaml",
        "tiny-clap-reward-faults.yaml",
    ),
}


def assets_dir() -> Path:
    """The project's assets/ folder (override with SIREN_ASSETS)."""
    return Path(os.environ.get("SIREN_ASSETS", Path(__file__).resolve().parents[3] / "assets"))


def tiny_clap_path(name_or_path: str | Path) -> Path:
    """Where a bundled name (`tiny-clap-eval`, `tiny-clap-reward`) lives; other paths as given."""
    return assets_dir() / str(name_or_path) if str(name_or_path) in BUNDLED else Path(name_or_path)


def _zero_key_part(grad: Tensor) -> Tensor:
    """Gradient hook of an `nn.MultiheadAttention` in_proj_bias [3D]: zero the keys' [D:2D]."""
    grad = grad.clone()
    width = grad.shape[0] // 3
    grad[width : 2 * width] = 0
    return grad


class TinyCLAP(nn.Module, PyTorchModelHubMixin):
    """Audio and text towers of a small CLAP. `save_pretrained` / `from_pretrained` come from
    `huggingface_hub` (config.json + model.safetensors, local folder or hub id).

    Args:
        sample_rate: rate `embed_audio` expects (use `embed` for any rate).
        n_mels / n_fft / hop_length: the log-mel front end.
        width: channels of the convolutions and the transformer.
        layers / heads: the transformer's depth and heads.
        embed_dim: E, the shared space.
        text_dim: width of the text encoder's pooled vector (MiniLM: 384).
        text_encoder: the `siren_lightning.text` backend whose pooled vector feeds the text tower.
        max_seconds: longest clip (sets the position table).
        log_floor: added to the mel power before the log. 1e-5 (the noisy-set CLAPs) lets a
            noise floor 66 dB down move the embedding; on SynthCaps clean, whose originals are
            digitally silent between events, a CLAP trained that way scores the originals 92
            and the same clips with noise at RMS 5e-4 added (the codec's own silence) 26. 0.1
            sits about 20 dB over that noise and 20 dB or more under the quietest event.
    """

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_mels: int = 64,
        n_fft: int = 1024,
        hop_length: int = 320,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        embed_dim: int = 128,
        text_dim: int = 384,
        text_encoder: str = "minilm",
        max_seconds: float = 12.0,
        log_floor: float = 1e-5,
    ):
        super().__init__()
        if log_floor <= 0:
            raise ValueError(f"TinyCLAP: log_floor must be > 0, got {log_floor}")
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.sample_rate, self.hop_length = sample_rate, hop_length
        self.text_encoder_name = text_encoder
        self.log_floor = log_floor
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=30.0
        )
        # The window and filterbank follow from the config: keep them out of checkpoints
        # (safetensors also refuses the window, a view of a larger storage).
        for module in self.mel.modules():
            for name, buf in list(module.named_buffers(recurse=False)):
                delattr(module, name)
                module.register_buffer(name, buf.clone(), persistent=False)
        self.norm = nn.BatchNorm1d(n_mels)
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, width, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            nn.GELU(),
        )
        max_tokens = math.ceil(max_seconds * sample_rate / hop_length / 4) + 2
        self.positions = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        block = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.1, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        # The key part of each attention input bias adds one score to every key of a query, which
        # softmax ignores: its true gradient is zero, and Adam would turn the float noise in it
        # into learning-rate-sized steps that differ between CPUs. Keep it exactly zero (the
        # bias stays, so the committed checkpoints load unchanged).
        for layer in self.transformer.layers:
            layer.self_attn.in_proj_bias.register_hook(_zero_key_part)
        self.audio_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.text_proj = nn.Sequential(
            nn.Linear(text_dim, 2 * embed_dim), nn.GELU(), nn.Linear(2 * embed_dim, embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def log_mel(self, audio: Tensor) -> Tensor:
        """audio: [B, N] -> [B, M, T] log mel power over `log_floor`."""
        return torch.log(self.mel(audio) + self.log_floor)

    def embed_audio(self, audio: Tensor, mask: Tensor | None = None) -> Tensor:
        """audio: [B, N] at `sample_rate`; mask: [B, N] True on real samples. Returns [B, E]."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be [B, N], got {tuple(audio.shape)}")
        x = self.convs(self.norm(self.log_mel(audio)))  # [B, D, T/4]
        x = x.transpose(1, 2)  # [B, T', D]
        t = x.shape[1]
        if t + 1 > self.positions.shape[0]:
            raise ValueError(f"clip too long: {t} tokens > {self.positions.shape[0] - 1}")
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.positions[: t + 1]
        pad = None
        if mask is not None:  # a token is real if any sample of its 4 hops is
            frames = mask[:, :: self.hop_length * 4][:, :t]
            frames = F.pad(frames, (0, t - frames.shape[1]), value=False)
            pad = ~torch.cat([torch.ones_like(frames[:, :1]), frames], dim=1)  # [B, 1 + T']
        x = self.transformer(x, src_key_padding_mask=pad)
        return F.normalize(self.audio_proj(x[:, 0]), dim=-1)

    def embed_text(self, pooled: Tensor) -> Tensor:
        """pooled: [B, text_dim] from the text encoder. Returns [B, E]."""
        return F.normalize(self.text_proj(pooled), dim=-1)

    def embed(self, audio: Tensor, sample_rate: int) -> Tensor:
        """audio: [B, N] at any rate. Returns [B, E]."""
        return self.embed_audio(resample(audio, sample_rate, self.sample_rate))


class CaptionEmbeddingCache:
    """Frozen text encoder + a dictionary caption -> pooled vector [Dt] (kept on the CPU).

    The text tower's input never changes for a caption, so each is encoded once. New captions
    are encoded `batch_size` at a time in order of length, so a batch pads little (thousands of
    captions in one padded batch cost about a quarter more time).
    """

    def __init__(
        self, backend: str = "minilm", name_or_path: str | None = None, batch_size: int = 64
    ):
        from siren_lightning.text import TextEncoder

        self.encoder = TextEncoder(backend, name_or_path)
        self.batch_size = batch_size
        self.vectors: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> Tensor:
        """captions: B strings. Returns [B, Dt]."""
        new = sorted({c for c in captions if c not in self.vectors}, key=lambda c: (len(c), c))
        for i in range(0, len(new), self.batch_size):
            chunk = sorted(new[i : i + self.batch_size])
            pooled = self.encoder.encode(chunk).pooled.float().cpu()
            self.vectors.update(zip(chunk, pooled, strict=True))
        return torch.stack([self.vectors[c] for c in captions])


def contrastive_loss(audio: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE over a batch of matched pairs. audio, text: [B, E] normalised."""
    logits = logit_scale.exp().clamp(max=100) * audio @ text.T  # [B, B]
    target = torch.arange(audio.shape[0], device=audio.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def retrieval_recall(
    text: Tensor, audio: Tensor, groups: list, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Text-to-audio recall@k.

    Args:
        text: [B, E] query embeddings; audio: [B, E] (row i of each is one clip).
        groups: B labels; a retrieved clip counts as a hit when its label equals the query's
            (clip ids for instance recall; attribute combinations for SynthCaps "combo" recall,
            since clips of one combination share their captions' meaning).

    Returns:
        {"R@k": fraction of queries with a hit among the top k}.
    """
    sims = text @ audio.T  # [B, B]
    order = sims.argsort(dim=1, descending=True)
    labels = list(groups)
    out = {}
    for k in ks:
        hits = [
            any(labels[j] == labels[i] for j in order[i, :k].tolist()) for i in range(len(labels))
        ]
        out[f"R@{k}"] = sum(hits) / max(len(hits), 1)
    return out


def load_tiny_clap(name_or_path: str | Path) -> TinyCLAP:
    """A bundled name (`tiny-clap-eval`, `tiny-clap-reward`) or a saved folder / hub id."""
    path = tiny_clap_path(name_or_path)
    if str(name_or_path) in BUNDLED and not (path / "model.safetensors").is_file():
        configs = " ".join(f"--config experiments/{y}" for y in BUNDLED[str(name_or_path)])
        raise FileNotFoundError(
            f"{name_or_path}: no checkpoint at {path}. Train it with `siren fit {configs}` "
            f"(see {path}/README.md)."
        )
    if not path.exists() and os.environ.get("HF_HUB_OFFLINE", "0") == "1":
        raise FileNotFoundError(
            f"tiny CLAP {name_or_path!r}: no such folder, and the hub is off (HF_HUB_OFFLINE=1)"
        )
    model = TinyCLAP.from_pretrained(str(path))
    return model.eval()


class TinyCLAPBackbone(AudioBackbone):
    """A trained tiny CLAP as a metric backbone (the `tiny` preset).

    `forward` gives the joint-space audio embedding (FD, CLAP score) and, as class logits, the
    scaled cosine to each class prompt: zero-shot tagging that stands in for PANNs' AudioSet
    classes in KL and IS. `embed_text` gives caption embeddings for CLAP score.

    Args:
        model: the tiny CLAP.
        class_prompts: C captions, one per class (default: one per SynthCaps combination).
        text: the caption encoder (built from the model's `text_encoder_name` if None).
    """

    def __init__(
        self,
        model: TinyCLAP,
        class_prompts: list[str] | None = None,
        text: CaptionEmbeddingCache | None = None,
        name: str = "tiny-clap-eval",
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        from siren_lightning.data.synthcaps import class_prompts as synthcaps_prompts

        self.model = model.eval()
        self.text = text or CaptionEmbeddingCache(model.text_encoder_name)
        self.name = name
        self.sample_rate = model.sample_rate
        self.class_prompts = list(class_prompts or synthcaps_prompts())
        self.num_classes = len(self.class_prompts)
        self.weights_sha256 = weights_sha256
        prompt_emb = self.embed_text(self.class_prompts)
        self.embedding_dim = prompt_emb.shape[-1]
        self.register_buffer("prompt_emb", prompt_emb)  # [C, E]

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "tiny-clap-eval") -> TinyCLAPBackbone:
        """A bundled name or a `save_pretrained` folder; the weights' SHA-256 is recorded."""
        model = load_tiny_clap(name_or_path)
        folder = tiny_clap_path(name_or_path)
        sha = sha256_file(folder / "model.safetensors") if folder.is_dir() else None
        return cls(model, name=Path(str(name_or_path)).name, weights_sha256=sha)

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] at `sample_rate` -> embedding [B, E], logits [B, C] over the prompts."""
        emb = self.model.embed_audio(self._check(audio))
        scale = self.model.logit_scale.exp().clamp(max=100)
        return BackboneOutput(embedding=emb, logits=scale * emb @ self.prompt_emb.T)

    @torch.no_grad()
    def embed_text(self, captions: list[str]) -> Tensor:
        """captions: B strings -> [B, E] unit vectors."""
        device = self.model.logit_scale.device
        return self.model.embed_text(self.text(captions).to(device))
