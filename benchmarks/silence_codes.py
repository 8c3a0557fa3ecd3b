"""How the codec spells silence, and whether the LM times its events: issue 23's third diagnosis.

SynthCaps clips are silent (a white-noise floor 50 dB down) before their first event and between
events. This script measures three things:

1. **the data**: codebook 0 on silent frames (20 ms RMS below -35 dB re the clip's peak, from
   the source audio) against sounding frames: how many codes each uses, how many cover 90% of
   them, and their empirical entropy. A noise floor spelled by hundreds of codes makes every
   silent frame cost ~log(#codes) nats that no caption can explain;
2. **the codec**: digital silence and noise floors at SynthCaps levels, encoded then decoded:
   how many codebook-0 codes a second of each uses, and the decoded RMS (a codec that never saw
   digital silence may decode it loud);
3. **the LM** (`--model`): teacher-forced probability of a *sounding* code (one seen on sounding
   frames at least 9 times in 10) on the background frames before the first onset, by where the
   frame sits in the clip, beside the data's onset rate per background frame there. A model that
   times its events puts ~0 there until the caption's slot starts; a flat leak starts events at
   random.

    PYTHONPATH=src python benchmarks/silence_codes.py --manifest data/synthcaps/train.jsonl \\
        --codes data/synthcaps/codes_litdata/train --limit 480 \\
        --model assets/siren_tiny_reference --eval-manifest data/synthcaps/test.jsonl \\
        --eval-codes data/synthcaps/codes_litdata/test --eval-limit 100
"""

from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from siren_lightning.data.code_cache import CodeCache
from siren_lightning.data.manifest import read_manifest
from siren_lightning.models.sampling import encode_captions

SILENT_DB = -35.0
POSITION_BINS = (0.0, 0.1, 0.2, 0.3)


def frame_levels(path: Path, frames: int, hop: int) -> np.ndarray:
    """[frames] RMS of each codec frame of the source audio, in dB re the clip's loudest frame."""
    audio, _ = sf.read(path, dtype="float64")
    audio = np.pad(audio, (0, max(0, frames * hop - audio.size)))[: frames * hop]
    rms = np.sqrt((audio.reshape(frames, hop) ** 2).mean(1))
    return 20 * np.log10(rms / max(rms.max(), 1e-12) + 1e-12)


def entropy(counts: collections.Counter) -> float:
    """Empirical entropy (nats) of a code histogram."""
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values() if c)


def codes_covering(counts: collections.Counter, share: float) -> int:
    """How many of the most frequent codes it takes to cover `share` of the occurrences."""
    total, run = sum(counts.values()), 0
    for k, (_, c) in enumerate(counts.most_common(), 1):
        run += c
        if run >= share * total:
            return k
    return len(counts)


def data_statistics(manifest: str, codes: str, limit: int, hop: int) -> dict:
    clips = read_manifest(manifest)[:limit]
    root = Path(manifest).parent
    cache = CodeCache(codes).codes_of([c.id for c in clips])
    silent, sounding = collections.Counter(), collections.Counter()
    for clip in clips:
        cb0 = cache[clip.id][0].tolist()
        levels = frame_levels(root / clip.audio, len(cb0), hop)
        for code, db in zip(cb0, levels, strict=True):
            (silent if db < SILENT_DB else sounding)[code] += 1
    return {
        "clips": len(clips),
        "silent_frames": sum(silent.values()),
        "sounding_frames": sum(sounding.values()),
        "silent_codes": len(silent),
        "silent_codes_for_90pct": codes_covering(silent, 0.9),
        "silent_entropy_nats": entropy(silent),
        "sounding_codes": len(sounding),
        "sounding_codes_for_90pct": codes_covering(sounding, 0.9),
        "sounding_entropy_nats": entropy(sounding),
        "sounding_code_ids": sorted(k for k in sounding if sounding[k] >= 9 * silent[k]),
    }


@torch.no_grad()
def codec_statistics(codec) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for level in (0.0, 1e-4, 1e-3, 2e-3):
        audio = level * torch.randn(1, 1, codec.sample_rate, generator=gen)
        codes = codec.encode(audio)
        decoded = codec.decode(codes).float()
        rows.append(
            {
                "noise_rms": level,
                "codebook0_codes_per_second": len(set(codes[0, 0, 2:].tolist())),
                "decoded_rms": float(decoded.pow(2).mean().sqrt()),
            }
        )
    return rows


@torch.no_grad()
def model_leak(model, encoder, manifest: str, codes: str, limit: int, hop: int, loud) -> dict:
    """P(sounding code) on background frames before the first onset, by clip position."""
    clips = [c for c in read_manifest(manifest) if c.captions][:limit]
    root = Path(manifest).parent
    cache = CodeCache(codes).codes_of([c.id for c in clips])
    loud = torch.tensor(loud)
    leak = collections.defaultdict(list)
    onsets = collections.Counter()
    frames_at = collections.Counter()
    for clip in clips:
        seq = cache[clip.id].long()[None]  # [1, r, T]
        t = seq.shape[-1]
        silent = frame_levels(root / clip.audio, t, hop) < SILENT_DB
        first = int(np.argmax(~silent)) if (~silent).any() else t
        text = encode_captions(encoder, [clip.captions[0]])
        logits = model(seq, text["text_states"], text["text_mask"], groups=[0]).logits[0, 0]
        p_loud = logits.float().softmax(-1)[:, loud].sum(-1)  # [T]
        for i in range(min(first + 1, t)):
            bin_ = int(np.searchsorted(POSITION_BINS, i / t, side="right")) - 1
            key = f"{POSITION_BINS[bin_]:.1f}+"
            if i < first:
                leak[key].append(float(p_loud[i]))
                frames_at[key] += 1
            else:
                onsets[key] += 1
    return {
        key: {
            "background_frames": frames_at[key],
            "model_p_sounding": float(np.mean(leak[key])),
            "data_onset_rate": onsets[key] / (frames_at[key] + onsets[key]),
        }
        for key in sorted(frames_at)
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="clips whose codes are counted (train)")
    p.add_argument("--codes", required=True)
    p.add_argument("--limit", type=int, default=480)
    p.add_argument("--codec", default="assets/codec_tiny")
    p.add_argument("--model", help="exported LM whose background leak is measured")
    p.add_argument("--eval-manifest", help="held-out clips for the leak (default --manifest)")
    p.add_argument("--eval-codes")
    p.add_argument("--eval-limit", type=int, default=100)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(1)
    from siren_lightning.generate import _load_codec, load_generation_stack

    codec = _load_codec(args.codec).eval()
    data = data_statistics(args.manifest, args.codes, args.limit, codec.hop_length)
    report = {"data": {k: v for k, v in data.items() if k != "sounding_code_ids"}}
    report["codec"] = codec_statistics(codec)
    if args.model:
        model, _, encoder = load_generation_stack(args.model)
        report["leak"] = model_leak(
            model.float(),
            encoder,
            args.eval_manifest or args.manifest,
            args.eval_codes or args.codes,
            args.eval_limit,
            codec.hop_length,
            data["sounding_code_ids"],
        )
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
