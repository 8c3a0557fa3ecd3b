"""SpectralRVQCodec: a fixed STFT front end, DAC's residual vector quantizer, Griffin-Lim back end.

The embedded default codec (DESIGN.md section 4, the documented alternative to a tiny DAC that
cannot learn pitch on 2 CPU cores): 16 kHz audio -> STFT (n_fft 1280, hop 320) -> log-magnitude ->
small learned conv encoder -> `dac.nn.quantize.ResidualVectorQuantize` (r x K, 8-d codebooks with
`out_proj`, so Siren's embedding path is the same as with DAC) -> small learned conv decoder ->
log-magnitude -> torchaudio Griffin-Lim (phase) -> audio.

Letters: B batch, r codebooks, K codebook size, T frames, F frequency bins, N samples, D latent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio
from dac.nn.quantize import ResidualVectorQuantize
from torch import nn

from siren_lightning.codec.base import RVQCodec, fit_length


@dataclass
class SpectralCodecConfig:
    """Sizes of a SpectralRVQCodec. The defaults are the embedded default codec."""

    sample_rate: int = 16000
    n_fft: int = 1280
    hop_length: int = 320
    hidden_dim: int = 256
    latent_dim: int = 128
    kernel_size: int = 3
    n_codebooks: int = 12
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 0.5
    griffin_lim_iters: int = 32
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        assert self.kernel_size % 2 == 1, "kernel_size must be odd (same-length convolutions)"
        assert self.n_fft >= self.hop_length, "n_fft must be at least hop_length"

    @classmethod
    def tiny(cls, **overrides) -> SpectralCodecConfig:
        """A test-sized codec (small widths, small codebooks, few Griffin-Lim iterations)."""
        base = {"hidden_dim": 32, "latent_dim": 16, "codebook_size": 64, "griffin_lim_iters": 4}
        return cls(**{**base, **overrides})


def _conv_stack(sizes: list[int], kernel_size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SpectralRVQCodec(RVQCodec):
    """STFT log-magnitude autoencoder with DAC's RVQ in the middle and Griffin-Lim phase."""

    def __init__(
        self, config: SpectralCodecConfig | None = None, checkpoint: str | None = None
    ) -> None:
        """Args:
        config: sizes (random init).
        checkpoint: a codec folder written by `save_codec` (e.g. assets/codec_tiny); its
            codec.json overrides `config` and its weights are loaded.
        """
        super().__init__()
        if checkpoint is not None:
            from siren_lightning.codec.checkpoint import load_codec

            loaded = load_codec(checkpoint)
            if not isinstance(loaded, SpectralRVQCodec):
                raise TypeError(
                    f"{checkpoint} holds a {type(loaded).__name__}, not a spectral codec"
                )
            config = loaded.config
        self.config = config = config or SpectralCodecConfig()
        self.sample_rate = config.sample_rate
        self.hop_length = config.hop_length
        self.n_freq = config.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        # Fixed normalisation of log-magnitudes to about [-1, 1] (log(1e-5) = -11.5).
        self.log_center, self.log_scale = -5.0, 5.0
        f, h, d, k = self.n_freq, config.hidden_dim, config.latent_dim, config.kernel_size
        # tanh bounds the latent, so the encoder cannot outgrow the codebooks (the VQ losses
        # stay on the scale k-means fixed).
        self.encoder = nn.Sequential(_conv_stack([f, h, h, d], k), nn.Tanh())
        self.quantizer = ResidualVectorQuantize(
            input_dim=d,
            n_codebooks=config.n_codebooks,
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim,
            quantizer_dropout=config.quantizer_dropout,
        )
        self.decoder = _conv_stack([d, h, h, f], k)
        if checkpoint is not None:
            self.load_state_dict(loaded.state_dict())

    def spec(self) -> dict:
        return {"class_path": f"{__name__}.SpectralRVQCodec", "config": asdict(self.config)}

    @classmethod
    def from_spec(cls, spec: dict) -> SpectralRVQCodec:
        return cls(SpectralCodecConfig(**spec["config"]))

    def log_magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised log-magnitude of audio [B, 1, T*hop] -> [B, F, T]."""
        spec = torch.stft(
            audio[:, 0],
            self.config.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # [B, F, T + 1]: centred frames at 0, hop, ..., T*hop
        log_mag = spec[..., :-1].abs().clamp_min(self.config.log_floor).log()
        return (log_mag - self.log_center) / self.log_scale

    def magnitude(self, log_mag: torch.Tensor) -> torch.Tensor:
        """Normalised log-magnitude [B, F, T] -> linear magnitude [B, F, T]."""
        return (log_mag * self.log_scale + self.log_center).exp()

    def encode_latent(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, T*hop] -> z [B, D, T]."""
        return self.encoder(self.log_magnitude(audio))

    def decode_log_magnitude(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q [B, D, T] -> predicted normalised log-magnitude [B, F, T]."""
        return self.decoder(z_q)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """z_q [B, D, T] -> audio [B, 1, T*hop] by Griffin-Lim (deterministic zero-phase start)."""
        mag = self.magnitude(self.decode_log_magnitude(z))
        return self.griffin_lim(mag)

    def griffin_lim(self, mag: torch.Tensor) -> torch.Tensor:
        """Linear magnitude [B, F, T] -> audio [B, 1, T*hop]."""
        t = mag.shape[-1]
        # Griffin-Lim's own STFT reflect-pads by n_fft/2: very short clips get silent frames.
        t_gl = max(t, self.config.n_fft // (2 * self.hop_length) + 1)
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # [B, F, T + 1]: the frame at T*hop
        mag = nn.functional.pad(mag, (0, t_gl - t))  # [B, F, T_gl + 1]
        audio = torchaudio.functional.griffinlim(
            mag,
            self.window,
            n_fft=self.config.n_fft,
            hop_length=self.hop_length,
            win_length=self.config.n_fft,
            power=1.0,
            n_iter=self.config.griffin_lim_iters,
            momentum=0.99,
            length=t_gl * self.hop_length,
            rand_init=False,
        )[..., : t * self.hop_length]
        return audio.unsqueeze(1)

    def forward(
        self, audio: torch.Tensor, n_quantizers: int | None = None, quantize: bool = True
    ) -> dict:
        """Training pass on audio [B, 1, N]; no waveform (Griffin-Lim is not in the graph).

        Args:
            audio: [B, 1, N].
            n_quantizers: codebooks used in eval mode (training uses quantizer dropout).
            quantize: False bypasses the RVQ (autoencoder warm-up before k-means).

        Returns:
            dict with "log_mag" (prediction) and "log_mag_target", both [B, F, T]; "z" [B, D, T];
            "codes" [B, r, T] (empty when not quantizing); "vq/commitment_loss", "vq/codebook_loss".
        """
        self._check_audio(audio)
        target = self.log_magnitude(self.pad_to_hop(audio))
        z = self.encoder(target)
        z_q, codes, commitment, codebook = self.maybe_quantize(z, quantize, n_quantizers)
        return {
            "log_mag": self.decode_log_magnitude(z_q),
            "log_mag_target": target,
            "z": z,
            "codes": codes,
            "vq/commitment_loss": commitment,
            "vq/codebook_loss": codebook,
        }

    @torch.no_grad()
    def resynthesize_true_magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """Griffin-Lim from the input's own magnitudes (the codec's phase ceiling): [B,1,N] -> same."""
        log_mag = self.log_magnitude(self.pad_to_hop(audio))
        return fit_length(self.griffin_lim(self.magnitude(log_mag)), audio.shape[-1])


@torch.no_grad()
def kmeans_init_quantizer(
    quantizer: ResidualVectorQuantize, z: torch.Tensor, iters: int = 10, seed: int = 0
) -> list[float]:
    """Initialise every VQ of a DAC `ResidualVectorQuantize` from latent frames, residual by residual.

    For VQ j: `in_proj` / `out_proj` become the top principal directions of the current residual
    (out_proj(in_proj(x)) projects onto them), the codebook is k-means on the projected residual
    with DAC's own assignment rule (cosine on l2-normalised vectors) and centroids = means of the
    raw projected vectors; the residual then loses the quantized vector, as in the RVQ forward.

    Args:
        quantizer: the RVQ to initialise in place.
        z: latent frames [M, D] (M >= K preferred; sampled with replacement otherwise).
        iters: Lloyd iterations per codebook.
        seed: seed of the initial centroid draw.

    Returns:
        The residual's mean squared norm after each codebook (r values, should fall).
    """
    g = torch.Generator().manual_seed(seed)
    residual = z.detach().float().cpu().clone()  # [M, D]
    history = []
    for vq in quantizer.quantizers:
        k, d = vq.codebook.weight.shape
        # Uncentred PCA: the leading right singular vectors of the residual.
        _, _, vh = torch.linalg.svd(residual, full_matrices=False)
        basis = vh[:d]  # [d, D]
        _set_conv1x1(vq.in_proj, basis, torch.zeros(d))
        _set_conv1x1(vq.out_proj, basis.t(), torch.zeros(basis.shape[1]))
        x = residual @ basis.t()  # [M, d]
        pick = torch.randint(0, x.shape[0], (k,), generator=g)
        centroids = x[pick].clone()
        for _ in range(iters):
            assign = _cosine_assign(x, centroids)
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).float()
            used = counts > 0
            centroids[used] = sums[used] / counts[used, None]
            # Dead centroids restart on random points.
            dead = (~used).nonzero().flatten()
            if len(dead):
                centroids[dead] = x[torch.randint(0, x.shape[0], (len(dead),), generator=g)]
        assign = _cosine_assign(x, centroids)
        vq.codebook.weight.copy_(centroids.to(vq.codebook.weight))
        residual = residual - centroids[assign] @ basis
        history.append(float(residual.pow(2).sum(1).mean()))
    return history


def _cosine_assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid by cosine (DAC's lookup rule): [M, d], [K, d] -> [M]."""
    xn = nn.functional.normalize(x, dim=1)
    cn = nn.functional.normalize(centroids, dim=1)
    return (xn @ cn.t()).argmax(dim=1)


def _set_conv1x1(conv: nn.Conv1d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Set a (weight-normed) 1x1 Conv1d to the matrix weight [out, in] and bias [out]."""
    w = weight.to(conv.bias)[:, :, None]  # [out, in] -> [out, in, 1]
    if hasattr(conv, "weight_v"):  # torch.nn.utils.weight_norm (what dac uses), dim 0
        conv.weight_v.copy_(w)
        conv.weight_g.copy_(w.norm(dim=(1, 2), keepdim=True))
    else:
        conv.weight.copy_(w)
    conv.bias.copy_(bias.to(conv.bias))
