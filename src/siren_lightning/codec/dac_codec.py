"""DACCodec: the official Descript Audio Codec behind the codec interface.

Loads (a) a DAC weights file from a local path, (b) the official 16 kHz weights when online, or
(c) builds a DAC from a config (tiny sizes for tests). The network is `dac.DAC` itself.

Letters: B batch, r codebooks, T frames, N audio samples, D latent width.
"""

from __future__ import annotations

import inspect
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dac
import torch

from siren_lightning.codec.base import RVQCodec, fit_length

OFFICIAL_16KHZ_FILE = Path.home() / ".cache" / "descript" / "dac" / "weights_16khz_8kbps_0.0.5.pth"
OFFICIAL_16KHZ_URL = (
    "https://github.com/descriptinc/descript-audio-codec/releases/download/0.0.5/weights_16khz.pth"
)


class CodecLoadError(RuntimeError):
    """A codec checkpoint could not be found, read or downloaded."""


@dataclass
class DACConfig:
    """Arguments of `dac.DAC`; the defaults are the official 16 kHz model (conf/final/16khz.yml)."""

    encoder_dim: int = 64
    encoder_rates: list[int] = field(default_factory=lambda: [2, 4, 5, 8])
    latent_dim: int | None = None
    decoder_dim: int = 1536
    decoder_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    n_codebooks: int = 12
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 0.5
    sample_rate: int = 16000

    @classmethod
    def tiny(cls, **overrides) -> DACConfig:
        """A few-hundred-thousand-parameter DAC with the official layout (16 kHz, hop 320, r 12)."""
        base = {"encoder_dim": 8, "latent_dim": 64, "decoder_dim": 64}
        return cls(**{**base, **overrides})


class DACCodec(RVQCodec):
    """`dac.DAC` with the codec interface.

    Args:
        config: sizes of a DAC built from scratch (random weights). Ignored when `checkpoint`
            or `pretrained` is given.
        checkpoint: path to a DAC weights file (`{"metadata": {"kwargs": ...}, "state_dict": ...}`,
            the format of the official release and of `DAC.save(..., package=False)`).
        pretrained: "16khz" to use the official weights: the local cache file
            (`~/.cache/descript/dac/weights_16khz_8kbps_0.0.5.pth`) if present, else a download
            when online.
    """

    def __init__(
        self,
        config: DACConfig | None = None,
        checkpoint: str | Path | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if checkpoint is not None:
            self.model = load_dac_weights(Path(checkpoint))
        elif pretrained is not None:
            self.model = load_dac_weights(official_weights_path(pretrained))
        else:
            self.model = dac.DAC(**asdict(config or DACConfig()))
        self.sample_rate = int(self.model.sample_rate)
        self.hop_length = int(self.model.hop_length)

    @property
    def quantizer(self):
        """DAC's own `ResidualVectorQuantize` (a view: the state dict holds it once, under model)."""
        return self.model.quantizer

    def spec(self) -> dict:
        m = self.model
        config = DACConfig(
            encoder_dim=m.encoder_dim,
            encoder_rates=list(m.encoder_rates),
            latent_dim=m.latent_dim,
            decoder_dim=m.decoder_dim,
            decoder_rates=list(m.decoder_rates),
            n_codebooks=m.n_codebooks,
            codebook_size=m.codebook_size,
            codebook_dim=m.codebook_dim,
            quantizer_dropout=float(m.quantizer.quantizer_dropout),
            sample_rate=int(m.sample_rate),
        )
        return {"class_path": f"{__name__}.DACCodec", "config": asdict(config)}

    @classmethod
    def from_spec(cls, spec: dict) -> DACCodec:
        return cls(DACConfig(**spec["config"]))

    def encode_latent(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, T*hop] -> z [B, D, T]."""
        return self.model.encoder(audio)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """z_q [B, D, T] -> audio [B, 1, T*hop - 8] for the 16 kHz layout (callers pad)."""
        return self.model.decoder(z)

    def forward(
        self, audio: torch.Tensor, n_quantizers: int | None = None, quantize: bool = True
    ) -> dict:
        """Training pass: audio [B, 1, N] -> reconstruction and VQ losses.

        `quantize=False` bypasses the RVQ (autoencoder warm-up before k-means initialisation).

        Returns:
            dict with "audio" [B, 1, N] (decoder output padded/trimmed to N), "codes" [B, r, T],
            "vq/commitment_loss" [] and "vq/codebook_loss" [].
        """
        self._check_audio(audio)
        z = self.encode_latent(self.pad_to_hop(audio))
        z_q, codes, commitment, codebook = self.maybe_quantize(z, quantize, n_quantizers)
        recon = fit_length(self.decode_latent(z_q), audio.shape[-1])
        return {
            "audio": recon,
            "z": z,
            "codes": codes,
            "vq/commitment_loss": commitment,
            "vq/codebook_loss": codebook,
        }


def load_dac_weights(path: Path) -> dac.DAC:
    """Build a `dac.DAC` from a weights file, reading it with `weights_only=True`.

    Raises:
        CodecLoadError: naming the path when it is missing or not a DAC weights file.
    """
    if not path.is_file():
        raise CodecLoadError(
            f"DAC checkpoint not found: {path}. Place a DAC weights file there (for the official "
            f"16 kHz model: {OFFICIAL_16KHZ_URL})."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        kwargs = dict(blob["metadata"]["kwargs"])
        state = blob["state_dict"]
    except Exception as err:  # noqa: BLE001 - any failure here means: not a DAC weights file
        raise CodecLoadError(
            f"{path} is not a DAC weights file (expected a dict with 'metadata.kwargs' and "
            f"'state_dict'): {type(err).__name__}: {err}"
        ) from err
    known = set(inspect.signature(dac.DAC).parameters)
    model = dac.DAC(**{k: v for k, v in kwargs.items() if k in known})
    model.load_state_dict(state)
    return model


def official_weights_path(model_type: str = "16khz") -> Path:
    """Local path of the official DAC weights, downloading them when online.

    Raises:
        CodecLoadError: when the file is not in the local cache and downloading is not
            possible (HF_HUB_OFFLINE=1, no network, or the download fails), naming the file to place.
    """
    if model_type != "16khz":
        raise ValueError(
            f"only the 16 kHz DAC is supported (Siren's tokenizer), got {model_type!r}"
        )
    if OFFICIAL_16KHZ_FILE.is_file():
        return OFFICIAL_16KHZ_FILE
    hint = (
        f"Official DAC 16 kHz weights are not available offline. Download {OFFICIAL_16KHZ_URL} "
        f"and place it at {OFFICIAL_16KHZ_FILE} (or pass checkpoint=<path>)."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CodecLoadError(hint + " [HF_HUB_OFFLINE is set]")
    if not _github_reachable():
        raise CodecLoadError(hint + " [github.com is not reachable]")
    try:
        return Path(dac.utils.download(model_type="16khz"))
    except Exception as err:  # noqa: BLE001 - report any download failure with the hint
        raise CodecLoadError(hint + f" [download failed: {type(err).__name__}: {err}]") from err


def _github_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False
