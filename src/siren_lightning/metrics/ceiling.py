"""The codec ceiling: reference audio passed through the codec (encode, decode) and scored like
generated audio. No LM over the codec's codes can beat it by more than the metrics' noise.

Letters: B clips, r codebooks, T frames, N samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

CEILING_INPUT_RULE = (
    "reference file read mono (channel mean) at the codec rate, encoded and decoded whole, "
    "cropped to its input length; then the protocol's input rules as for generated audio"
)


@torch.no_grad()
def resynthesize(codec: nn.Module, audio: Tensor) -> Tensor:
    """audio [N] at ``codec.sample_rate`` -> its codec round trip [N] (decode(encode(audio)))."""
    n = audio.shape[-1]
    device = next(codec.parameters(), audio).device
    codes = codec.encode(audio.reshape(1, 1, n).to(device))  # [1, r, T], T = ceil(N / hop)
    out = codec.decode(codes).float().cpu()[0, 0]  # [T * hop] (or a few samples short)
    return torch.nn.functional.pad(out, (0, max(0, n - out.shape[-1])))[:n]


def resynthesize_files(
    codec: nn.Module, files: Mapping[str, Path], progress: bool = False
) -> dict[str, Tensor]:
    """clip id -> its codec round trip [N] at ``codec.sample_rate``."""
    from siren_lightning.data.audio import load_audio

    return {
        clip_id: resynthesize(codec, load_audio(path, codec.sample_rate, allow_silent=True))
        for clip_id, path in tqdm(files.items(), disable=not progress, desc="codec ceiling")
    }


def describe_codec(codec: nn.Module, spec: str | None = None) -> dict[str, Any]:
    """What a ceiling row records about the codec."""
    sha = codec.sha256() if hasattr(codec, "sha256") else None
    return {
        "codec": spec or type(codec).__name__,
        "codec_class": type(codec).__name__,
        "codec_sha256": sha,
        "sample_rate": int(codec.sample_rate),
        "input_rule": CEILING_INPUT_RULE,
    }


def codec_ceiling(
    evaluator: Any,
    codec: nn.Module,
    reference: Mapping[str, Path],
    captions: Mapping[str, str] | None = None,
    reference_features: Mapping[str, dict[str, Tensor]] | None = None,
    spec: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The ceiling row: ``{"codec": ..., "metrics": ..., "counts": ...}``.

    Args:
        evaluator: a `metrics.protocol.Evaluator`.
        codec: `encode(audio [B, 1, N]) -> codes [B, r, T]`, `decode(codes) -> [B, 1, N']`.
        reference: clip id -> reference file (resynthesized and scored against itself).
        captions: clip id -> caption (CLAP score).
        reference_features: the references' features when already computed.
        spec: how the codec was named (path or `dac:16khz`), recorded as is.
    """
    ref = reference_features or evaluator.features(reference, progress)
    resynth = resynthesize_files(codec, reference, progress)
    feats = evaluator.audio_features(resynth, codec.sample_rate)
    results = evaluator.score(feats, ref, captions)
    return {
        **describe_codec(codec, spec),
        "metrics": results["metrics"],
        "intervals": results.get("intervals", {}),
        "counts": results["counts"],
    }
