"""The codebook-0 codes a codec spells digital silence with.

`PretrainModule(transition_weight=...)` finds where events start and end by these codes (a frame
is silent when its codebook-0 code is one of them). They are a property of the codec, so they
are read off it: encode a stretch of digital silence and keep every codebook-0 code it gives,
the edge frames' codes included (a silence that starts or ends next to sound looks like them).

    siren silence-codes --codec assets/codec_tiny_clean
"""

from __future__ import annotations

import argparse
import collections
import json

import torch
from torch import nn


@torch.no_grad()
def silence_codes(codec: nn.Module, seconds: float = 2.0) -> dict[int, int]:
    """{code: frames} of codebook 0 over `seconds` of digital silence, in code order.

    Args:
        codec: any codec of this package (`encode(audio [B, 1, N]) -> codes [B, r, T]`).
    """
    if seconds <= 0:
        raise ValueError(f"silence_codes: seconds must be > 0, got {seconds}")
    audio = torch.zeros(1, 1, max(1, int(round(seconds * codec.sample_rate))))
    counts = collections.Counter(codec.encode(audio)[0, 0].tolist())  # codebook 0, [T] frames
    return dict(sorted(counts.items()))


def main(argv: list[str]) -> int:
    """Print the codebook-0 codes of digital silence for a codec (for `silence_codes:`)."""
    from siren_lightning.codec.checkpoint import load_codec

    p = argparse.ArgumentParser(prog="siren silence-codes", description=main.__doc__)
    p.add_argument("--codec", required=True, help="codec folder, CodecModule .ckpt, or dac:16khz")
    p.add_argument("--seconds", type=float, default=2.0, help="length of the silence encoded")
    args = p.parse_args(argv)
    counts = silence_codes(load_codec(args.codec), args.seconds)
    total = sum(counts.values())
    for code, n in counts.items():
        print(f"code {code}: {n} of {total} frames")
    print(f"silence_codes: {json.dumps(list(counts))}")
    return 0
