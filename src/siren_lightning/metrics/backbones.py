"""Frozen audio backbones of the metrics behind one interface.

Letters: B clips, N samples, D embedding width, C classes, F frames of one clip.

Every backbone is an `AudioBackbone`: ``forward(audio [B, N])`` at its own ``sample_rate`` returns
a `BackboneOutput` (clip embedding, optional class logits, optional per-frame embeddings);
``embed(audio, sr)`` resamples first. Model code comes from installed packages: PANNs Cnn14_16k
from `frechet_audio_distance`, VGGish from `torchvggish`, LAION CLAP from `transformers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from siren_lightning.metrics.weights import (
    DEFAULT_CLAP_CHECKPOINT,
    PANNS_CNN14_16K,
    VGGISH,
    checkpoint_sha256,
    resolve_hf_checkpoint,
    resolve_weights,
)


@dataclass
class BackboneOutput:
    """What a backbone returns for a batch.

    Attributes:
        embedding: clip embeddings, [B, D].
        logits: class logits, [B, C], for classifier backbones.
        frames: per-clip frame embeddings, B tensors [F, D], for frame-level backbones.
    """

    embedding: Tensor
    logits: Tensor | None = None
    frames: list[Tensor] | None = None


class AudioBackbone(nn.Module):
    """A frozen audio network that never leaves eval mode.

    Attributes:
        name: stable name written into results.
        sample_rate: the rate ``forward`` expects.
        embedding_dim: D.
        num_classes: C (0 when there are no class logits).
        weights_sha256: SHA-256 of the loaded weights, or None for random initialisation.
    """

    name: str = "backbone"
    sample_rate: int = 16000
    embedding_dim: int = 0
    num_classes: int = 0
    weights_sha256: str | None = None

    def train(self, mode: bool = True) -> AudioBackbone:
        return super().train(False)

    def resample(self, audio: Tensor, sr: int) -> Tensor:
        """[B, N] at ``sr`` -> [B, N'] at ``self.sample_rate`` (torchaudio windowed sinc)."""
        if sr == self.sample_rate:
            return audio
        return torchaudio.functional.resample(audio, orig_freq=sr, new_freq=self.sample_rate)

    def _check(self, audio: Tensor) -> Tensor:
        if audio.ndim != 2:
            raise ValueError(f"{self.name} expects audio [B, N], got {tuple(audio.shape)}")
        return audio.to(torch.float32)

    @torch.no_grad()
    def embed(self, audio: Tensor, sr: int) -> Tensor:
        """Clip embeddings [B, D] of audio [B, N] at rate ``sr``."""
        return self(self.resample(self._check(audio), sr)).embedding

    @torch.no_grad()
    def logits(self, audio: Tensor, sr: int) -> Tensor:
        """Class logits [B, C] of audio [B, N] at rate ``sr``."""
        out = self(self.resample(self._check(audio), sr)).logits
        if out is None:
            raise ValueError(f"backbone {self.name} has no class outputs")
        return out


class PannsCnn14(AudioBackbone):
    """PANNs Cnn14_16k (window 512, hop 160, 64 mels, 50-8000 Hz): 2048-d ReLU(fc1), 527 logits.

    Args:
        weights: a ``Cnn14_16k_mAP=0.438.pth`` file or its folder; None looks in the weights
            folder, then downloads when online.
        pretrained: False keeps the random initialisation (tests; never quality figures).
        expected_sha256: pin the file's hash.
    """

    name = "panns-cnn14-16k"
    sample_rate = 16000
    embedding_dim = 2048
    num_classes = 527

    def __init__(
        self,
        weights: str | Path | None = None,
        pretrained: bool = True,
        expected_sha256: str | None = None,
    ) -> None:
        super().__init__()
        from siren_lightning.offline import import_offline

        # Importing the package pulls in laion_clap, which retries the hub for minutes offline.
        pann = import_offline("frechet_audio_distance.models.pann")
        self.model = pann.Cnn14_16k(
            sample_rate=16000,
            window_size=512,
            hop_size=160,
            mel_bins=64,
            fmin=50,
            fmax=8000,
            classes_num=527,
        )
        if pretrained:
            path, self.weights_sha256 = resolve_weights(PANNS_CNN14_16K, weights, expected_sha256)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(checkpoint.get("model", checkpoint))
        self.eval()

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] at 16 kHz -> embedding [B, 2048], logits [B, 527]."""
        out = self.model(self._check(audio))
        embedding = out["embedding"]  # ReLU(fc1(x)); dropout is off in eval mode
        # The package's forward returns sigmoid(logits) only; the logits are its last layer.
        return BackboneOutput(embedding=embedding, logits=self.model.fc_audioset(embedding))


class VGGish(AudioBackbone):
    """VGGish (`torchvggish`), ``postprocess=False``: the 128-d embedding before the last ReLU,
    one per non-overlapping 0.96 s frame; the clip embedding is the frames' mean.

    Args:
        weights: a ``vggish-10086976.pth`` file or its folder (see `PannsCnn14`).
        pretrained: False keeps the random initialisation.
    """

    name = "vggish"
    sample_rate = 16000
    embedding_dim = 128

    def __init__(
        self,
        weights: str | Path | None = None,
        pretrained: bool = True,
        expected_sha256: str | None = None,
    ) -> None:
        super().__init__()
        try:
            from torchvggish import vggish_input
            from torchvggish.torchvggish import VGG, make_layers
        except ImportError as err:
            raise ImportError(
                "the VGGish backbone needs the `torchvggish` package (pip install torchvggish==0.2)"
            ) from err
        self._examples = vggish_input.waveform_to_examples
        self.model = VGG(make_layers(), postprocess=False)
        if pretrained:
            path, self.weights_sha256 = resolve_weights(VGGISH, weights, expected_sha256)
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # FAD uses the embedding before the final ReLU (audioldm_eval's use_activation=False).
        self.model.embeddings = nn.Sequential(*list(self.model.embeddings.children())[:-1])
        self.eval()

    def frame_embeddings(self, audio: Tensor) -> Tensor:
        """One clip [N] at 16 kHz -> frame embeddings [F, 128] (F = whole 0.96 s frames)."""
        examples = self._examples(audio.detach().cpu().double().numpy(), self.sample_rate)
        examples = examples.detach().to(next(self.model.parameters()).device)
        if examples.shape[0] == 0:
            return torch.zeros(0, self.embedding_dim)
        return self.model(examples)

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] at 16 kHz -> frames (B x [F, 128]) and their per-clip mean [B, 128]."""
        frames = [self.frame_embeddings(clip) for clip in self._check(audio)]
        empty = [i for i, f in enumerate(frames) if f.shape[0] == 0]
        if empty:
            raise ValueError(f"VGGish needs >= 0.96 s of audio; clips {empty} are shorter")
        return BackboneOutput(embedding=torch.stack([f.mean(0) for f in frames]), frames=frames)


class LaionClap(AudioBackbone):
    """LAION CLAP through `transformers.ClapModel` at 48 kHz; embeddings are L2-normalised.

    Args:
        checkpoint: a local folder or a hub id (``laion/clap-htsat-unfused``).
        model, tokenizer, feature_extractor: already built parts (tests); override loading.
    """

    sample_rate = 48000

    def __init__(
        self,
        checkpoint: str = DEFAULT_CLAP_CHECKPOINT,
        model: nn.Module | None = None,
        tokenizer=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        self.name = f"laion-clap:{checkpoint}"
        if model is None:
            folder = resolve_hf_checkpoint(checkpoint)
            model = ClapModel.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            feature_extractor = ClapFeatureExtractor.from_pretrained(folder)
            self.weights_sha256 = checkpoint_sha256(folder)
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.embedding_dim = model.config.projection_dim
        self.eval()

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] at 48 kHz -> normalised audio embeddings [B, D]."""
        clips = [clip.cpu().numpy() for clip in self._check(audio)]
        inputs = self.feature_extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return BackboneOutput(embedding=self.model.get_audio_features(**inputs).pooler_output)

    @torch.no_grad()
    def embed_text(self, captions: list[str]) -> Tensor:
        """Captions -> normalised text embeddings [B, D]."""
        inputs = self.tokenizer(captions, padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {
            k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")
        }
        return self.model.get_text_features(**inputs).pooler_output
