"""Where does a model lose its caption? Adherence with some codebooks given, not drawn.

Issue 23's diagnosis. Siren's teacher-forced CE beats the delay LM's, yet its generations follow
the caption less. This script asks which codes carry the attributes and which part of the
generation loses them, on held-out SynthCaps clips at their own durations:

- `codec:r'`: the true codes decoded with only the first r' codebooks (how much of pitch, count
  and envelope the coarse codes hold).
- `free`: ordinary generation; `free@r'`: the same codes decoded with only the first r'
  codebooks (do the finer codes that the later experts draw spoil the coarse ones?).
- `given:A-B`: codebooks A..B of every frame are the true codes, the rest are drawn (for Siren,
  `given:0-1` gives expert 0's codes: the later experts complete the true coarse frames).
- `drawn:A-B`: the complement: only codebooks A..B are drawn, every other codebook is the true
  code (for Siren `drawn:0-1`: expert 0 alone generates, reading true fine codes).

Every mode runs with the same seeds and sampling settings (the project's defaults).

    PYTHONPATH=src python benchmarks/where_text_is_lost.py --model assets/siren_tiny_reference \\
        --manifest data/synthcaps/test.jsonl --codes data/synthcaps/codes_litdata/test \\
        --limit 96 --seeds 0 1 --modes codec:2 codec:12 free free@2 given:0-1 drawn:0-1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from siren_lightning.data.code_cache import CodeCache
from siren_lightning.data.manifest import read_manifest
from siren_lightning.generate import load_generation_stack
from siren_lightning.metrics.adherence import JUDGED, adherence, mean_and_spread
from siren_lightning.models.sampling import DEFAULT_SAMPLING, Sampler, generate_for_captions


class GivenSampler:
    """A `Sampler` whose draws of codebooks `given` are replaced by the true codes.

    It relies on the order in which each model calls its sampler: Siren once per codebook of
    each frame in codebook order (logits [N, K]); the delay LM once per delay step for the
    active codebooks (logits [N, n, K]; codebook q of step s is frame s - q).
    """

    def __init__(self, sampler: Sampler, truth: Tensor, given: set[int], delay: bool) -> None:
        self.sampler, self.truth, self.given, self.delay = sampler, truth, given, delay
        self.calls = 0  # truth: [B, r, T]

    def __call__(self, logits: Tensor) -> Tensor:
        drawn = self.sampler(logits)
        r, frames = self.truth.shape[1], self.truth.shape[2]
        if self.delay:
            s = self.calls
            active = [q for q in range(r) if 0 <= s - q < frames]
            for i, q in enumerate(active):
                if q in self.given:
                    drawn[:, i] = self.truth[:, q, s - q]
        else:
            t, j = divmod(self.calls, r)
            if j in self.given:
                drawn = self.truth[:, j, t].clone()
        self.calls += 1
        return drawn


@torch.no_grad()
def generate_given(
    model,
    text_encoder,
    captions,
    truth: Tensor,
    lengths: list[int],
    given: set[int],
    seed: int,
    delay: bool,
):
    """[B, r, T] codes with codebooks `given` set to `truth` ([B, r, T]) and the rest drawn."""
    return generate_for_captions(
        model,
        text_encoder,
        captions,
        truth.shape[-1],
        total_frames=torch.tensor(lengths),
        generator=torch.Generator().manual_seed(seed),
        wrap_sampler=lambda sampler: GivenSampler(sampler, truth, given, delay),
        **DEFAULT_SAMPLING,
    )


def parse_range(text: str) -> set[int]:
    a, _, b = text.partition("-")
    return set(range(int(a), int(b or a) + 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--codes", required=True)
    p.add_argument("--limit", type=int, default=96)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--modes",
        nargs="+",
        default=["codec:2", "codec:12", "free", "free@2", "given:0-1", "drawn:0-1"],
    )
    p.add_argument("--out", help="report.json here")
    args = p.parse_args()
    torch.set_num_threads(1)

    model, codec, text_encoder = load_generation_stack(args.model)
    r = model.config.num_codebooks
    delay = type(model).__name__ == "DelayPatternLM"
    clips = [c for c in read_manifest(args.manifest) if c.captions][: args.limit]
    codes = CodeCache(args.codes).codes_of([c.id for c in clips])
    clips = sorted(clips, key=lambda c: (codes[c.id].shape[-1], c.id))
    attributes = [c.attributes for c in clips]
    hop = codec.hop_length

    def batches():
        for start in range(0, len(clips), args.batch_size):
            part = clips[start : start + args.batch_size]
            lengths = [codes[c.id].shape[-1] for c in part]
            frames = max(lengths)
            # pad shorter clips with their last frame (generated to the longest, cut per clip)
            truth = torch.stack(
                [
                    torch.cat([codes[c.id], codes[c.id][:, -1:].expand(-1, frames - n)], -1)
                    for c, n in zip(part, lengths)
                ]
            )
            yield part, lengths, truth

    def decode(batch_codes: Tensor, lengths: list[int], keep: int) -> list:
        audio = codec.decode(batch_codes[:, :keep])[:, 0]
        return [a[: n * hop].numpy() for a, n in zip(audio, lengths)]

    report = {}
    for mode in args.modes:
        kind, _, arg = mode.partition(":")
        per_seed = []
        started = time.perf_counter()
        seeds = [0] if kind == "codec" else args.seeds
        for seed in seeds:
            audios = []
            for part, lengths, truth in batches():
                if kind == "codec":
                    audios += decode(truth, lengths, int(arg))
                    continue
                keep = r
                if kind.startswith("free"):
                    given: set[int] = set()
                    if "@" in mode:
                        keep = int(mode.split("@")[1])
                elif kind == "given":
                    given = parse_range(arg)
                elif kind == "drawn":
                    given = set(range(r)) - parse_range(arg)
                else:
                    raise SystemExit(f"unknown mode {mode}")
                captions = [c.captions[0] for c in part]
                out = generate_given(
                    model, text_encoder, captions, truth, lengths, given, seed, delay
                )
                audios += decode(out, lengths, keep)
            per_seed.append(adherence(audios, attributes, codec.sample_rate))
        row = {}
        for key in (*JUDGED, "mean", "all"):
            m, s = mean_and_spread([x[key] for x in per_seed])
            row[key] = {"mean": round(m, 3), "spread": round(s, 3)}
        report[mode] = row
        cells = "  ".join(
            f"{k} {row[k]['mean']:.3f}±{row[k]['spread']:.3f}" for k in (*JUDGED, "mean")
        )
        print(f"{mode:<12} {cells}   ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "clips": len(clips), "report": report}, indent=2)
        )


if __name__ == "__main__":
    main()
