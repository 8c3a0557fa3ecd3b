"""What every codec shares: DAC's residual vector quantizer and the embedding path Siren reads.

Both codecs (`DACCodec`, `SpectralRVQCodec`) put a `dac.nn.quantize.ResidualVectorQuantize` between
an encoder and a decoder. Siren embeds a code through that quantizer's codebook and its `out_proj`,
exactly the vector the decoder sums, so those views live here once.

Letters: B batch, r codebooks, K codebook size, T frames, N audio samples, D latent width.
"""

from __future__ import annotations

import abc
import hashlib
import math

import torch
from dac.nn.quantize import ResidualVectorQuantize
from torch import nn


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """N = round(seconds x rate), at least 1: the length a generated clip is cut to."""
    return max(1, round(seconds * sample_rate))


def seconds_to_frames(seconds: float, sample_rate: int, hop_length: int) -> int:
    """T = ceil(N / hop) frames cover `seconds_to_samples(seconds)` samples: the one rule that
    turns a requested duration into codec frames (generation, callbacks, alignment)."""
    return math.ceil(seconds_to_samples(seconds, sample_rate) / hop_length)


class RVQCodec(nn.Module, abc.ABC):
    """Base for codecs built around DAC's `ResidualVectorQuantize` (attribute `quantizer`).

    Subclasses set `sample_rate`, `hop_length`, `quantizer` and implement `encode_latent` /
    `decode_latent`; this class provides `encode`, `decode` and the codebook views.
    """

    sample_rate: int
    hop_length: int
    quantizer: ResidualVectorQuantize

    @property
    def n_codebooks(self) -> int:
        """r, the number of RVQ codebooks."""
        return self.quantizer.n_codebooks

    @property
    def codebook_size(self) -> int:
        """K, the entries per codebook."""
        return self.quantizer.codebook_size

    @property
    def latent_dim(self) -> int:
        """D, the width of the latent the decoder consumes (out_proj's output)."""
        return self.quantizer.quantizers[0].out_proj.out_channels

    def num_frames(self, num_samples: int) -> int:
        """T = ceil(N / hop)."""
        return math.ceil(num_samples / self.hop_length)

    def _check_audio(self, audio: torch.Tensor) -> None:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__}: audio must be [B, 1, N] mono, got {tuple(audio.shape)}"
            )

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3 or codes.shape[1] > self.n_codebooks or codes.shape[1] < 1:
            raise ValueError(
                f"{type(self).__name__}: codes must be [B, r<={self.n_codebooks}, T], "
                f"got {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"{type(self).__name__}: codes must lie in [0, {self.codebook_size}), "
                f"got range [{int(codes.min())}, {int(codes.max())}]"
            )

    def pad_to_hop(self, audio: torch.Tensor) -> torch.Tensor:
        """Right-pad [B, 1, N] with zeros to [B, 1, T*hop]."""
        n = audio.shape[-1]
        return nn.functional.pad(audio, (0, self.num_frames(n) * self.hop_length - n))

    @abc.abstractmethod
    def encode_latent(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, T*hop] -> continuous latent z [B, D, T] (before quantization)."""

    @abc.abstractmethod
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Quantized latent [B, D, T] -> audio [B, 1, T*hop]."""

    def quantize(
        self, z: torch.Tensor, n_quantizers: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the RVQ on z [B, D, T].

        Returns:
            z_q [B, D, T], codes [B, r', T], commitment loss [], codebook loss [].
            In training mode DAC's quantizer dropout applies and `n_quantizers` is ignored; in
            eval mode only the first `n_quantizers` codebooks run (DESIGN.md section 9).
        """
        z_q, codes, _, commitment, codebook = self.quantizer(z, n_quantizers)
        return z_q, codes, commitment, codebook

    def maybe_quantize(
        self, z: torch.Tensor, quantize: bool, n_quantizers: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`quantize(z)`, or with quantize=False the bypass (autoencoder warm-up): z itself,
        no codes [B, 0, T] and zero VQ losses."""
        if quantize:
            return self.quantize(z, n_quantizers)
        zero = z.new_zeros(())
        return z, z.new_zeros(z.shape[0], 0, z.shape[-1]), zero, zero

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """Audio [B, 1, N] -> codes long [B, r, T], T = ceil(N / hop).

        Runs in eval mode (DAC's `n_quantizers` is ignored in training mode), then restores
        the previous mode.
        """
        self._check_audio(audio)
        was_training = self.training
        self.eval()
        try:
            z = self.encode_latent(self.pad_to_hop(audio))
            _, codes, _, _ = self.quantize(z, n_quantizers)
        finally:
            self.train(was_training)
        return codes.long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, r', T] (r' <= r: the first r' codebooks) -> audio [B, 1, T*hop]."""
        self._check_codes(codes)
        was_training = self.training
        self.eval()
        try:
            audio = self.decode_latent(self.frame_embeddings(codes))
        finally:
            self.train(was_training)
        return fit_length(audio, codes.shape[-1] * self.hop_length)

    def codebook_table(self) -> torch.Tensor:
        """Every codebook entry through its `out_proj`: [r, K, D].

        Row k of table j is exactly the vector the decoder sums when codebook j emits code k.
        """
        rows = []
        for vq in self.quantizer.quantizers:
            entries = vq.codebook.weight.t().unsqueeze(0)  # [K, d] -> [1, d, K]
            rows.append(vq.out_proj(entries)[0].t())  # [1, D, K] -> [K, D]
        return torch.stack(rows)

    def codebook_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, r', T] -> per-codebook decoder vectors [B, r', D, T]."""
        self._check_codes(codes)
        vectors = []
        for j in range(codes.shape[1]):
            vq = self.quantizer.quantizers[j]
            vectors.append(vq.out_proj(vq.decode_code(codes[:, j])))  # [B, d, T] -> [B, D, T]
        return torch.stack(vectors, dim=1)

    def frame_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, r', T] -> the latent the decoder consumes [B, D, T] (sum over codebooks)."""
        return self.codebook_vectors(codes).sum(dim=1)

    @abc.abstractmethod
    def spec(self) -> dict:
        """{"class_path", "config"}: what `from_spec` needs to rebuild this codec (random weights)."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: dict) -> RVQCodec:
        """A random-init codec of the sizes in `spec` (see `spec`)."""

    def sha256(self) -> str:
        """SHA-256 over the class name and the state dict (names, dtypes, shapes, bytes).

        Two codecs with the same weights share it; it keys code caches.
        """
        h = hashlib.sha256(type(self).__name__.encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or trim the last axis of audio [..., N'] to `length` samples."""
    n = audio.shape[-1]
    if n < length:
        return nn.functional.pad(audio, (0, length - n))
    return audio[..., :length]
