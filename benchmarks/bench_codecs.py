"""Codecs for the benchmark scripts: a trained one by spec, or a stand-in while none is trained.

- any `siren_lightning.codec.checkpoint.load_codec` spec (`assets/codec_tiny`, a `.ckpt`,
  `dac:16khz`): the real thing;
- `random-spectral`: `SpectralRVQCodec` with random weights (pipeline checks only);
- `kmeans-spectral`: the same random encoder (fixed STFT log-magnitude, random convolutions,
  tanh), but its RVQ initialised by the codec stage's own `kmeans_init_quantizer` on latent frames
  of the given clips, residual by residual. Its codes are a real residual quantization of the
  clips (so the LM and RVQ analyses see data structure), its decoder is untrained: no audio
  metric of it is a quality figure.
"""

from __future__ import annotations

from typing import Any

import torch

from siren_lightning.data.audio import load_audio
from siren_lightning.data.manifest import read_manifest


@torch.no_grad()
def build_codec(spec: str, manifest: str | None = None, clips: int = 400) -> tuple[Any, str]:
    """(codec in eval mode, a description naming the weights)."""
    if spec in ("random-spectral", "kmeans-spectral"):
        from siren_lightning.codec.spectral_codec import (
            SpectralCodecConfig,
            SpectralRVQCodec,
            kmeans_init_quantizer,
        )

        torch.manual_seed(0)
        codec = SpectralRVQCodec(SpectralCodecConfig()).eval()
        if spec == "random-spectral":
            return codec, "random-init SpectralRVQCodec (seed 0)"
        if manifest is None:
            raise ValueError("kmeans-spectral needs a manifest to fit the codebooks on")
        latents = []
        for clip in read_manifest(manifest)[:clips]:
            audio = load_audio(clip.audio, codec.sample_rate)[None, None]  # [1, 1, N]
            z = codec.encode_latent(codec.pad_to_hop(audio))  # [1, D, T]
            latents.append(z[0].t())
        kmeans_init_quantizer(codec.quantizer, torch.cat(latents))
        return codec, (
            f"SpectralRVQCodec, random encoder/decoder (seed 0), RVQ k-means-initialised on "
            f"{len(latents)} clips of {manifest} (decoder untrained)"
        )
    from siren_lightning.codec.checkpoint import load_codec

    codec = load_codec(spec)
    return codec, f"{spec} (sha256 {codec.sha256()})"
