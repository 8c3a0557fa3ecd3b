"""Encode / decode speed of the codecs as multiples of real time (higher is faster).

Rows: the embedded tiny codec (SpectralRVQCodec at the codec_tiny.yaml sizes) and the official
16 kHz DAC architecture (random weights: speed does not depend on them). Every number is measured
in this run, on this machine, side by side.

    PYTHONPATH=src python benchmarks/tokenization.py [--seconds 5] [--batch 4] [--repeats 3]
"""

from __future__ import annotations

import os
import sys

# This file's name shadows the standard library's `tokenize` (which `inspect` imports) when it
# runs as a script: drop its folder from the import path first.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from siren_lightning.codec.dac_codec import DACCodec, DACConfig  # noqa: E402
from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec  # noqa: E402


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str, codec, seconds: float, batch: int, repeats: int) -> dict:
    codec.eval()
    audio = torch.randn(batch, 1, int(seconds * codec.sample_rate)) * 0.1
    codes = codec.encode(audio)
    audio_seconds = batch * seconds
    t_enc = best_time(lambda: codec.encode(audio), repeats)
    t_dec = best_time(lambda: codec.decode(codes), repeats)
    params = sum(p.numel() for p in codec.parameters())
    return {
        "codec": name,
        "params_M": params / 1e6,
        "encode_xRT": audio_seconds / t_enc,
        "decode_xRT": audio_seconds / t_dec,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [
        measure(
            "tiny SpectralRVQCodec",
            SpectralRVQCodec(SpectralCodecConfig()),
            args.seconds,
            args.batch,
            args.repeats,
        ),
        measure(
            "DAC 16 kHz architecture", DACCodec(DACConfig()), args.seconds, args.batch, args.repeats
        ),
    ]
    print(
        f"device cpu, {args.threads} thread(s), batch {args.batch} x {args.seconds:g} s, best of "
        f"{args.repeats}; xRT = seconds of audio per second of compute"
    )
    print(f"{'codec':<26} {'params (M)':>10} {'encode xRT':>11} {'decode xRT':>11}")
    for r in rows:
        print(
            f"{r['codec']:<26} {r['params_M']:>10.2f} {r['encode_xRT']:>11.1f} {r['decode_xRT']:>11.1f}"
        )
    base = rows[1]
    print(
        f"ratio tiny/DAC: encode {rows[0]['encode_xRT'] / base['encode_xRT']:.1f}x, "
        f"decode {rows[0]['decode_xRT'] / base['decode_xRT']:.1f}x"
    )


if __name__ == "__main__":
    main()
