"""Where in a clip does the caption move the loss? Codebook 0's text gap by position.

Issue 23's diagnosis. The text gap averaged over a clip is small, but a SynthCaps clip's pitch
is decided once, where its first event starts: before it is background, after it the audio
repeats itself. This script splits codebook 0's teacher-forced text gap (CE under the caption of
a clip with another pitch band minus CE under the clip's own caption) by where the frame sits:
the background before the first onset, the first frames of the first event (`--window`), and
the rest. The onset is measured on the clip's own audio (the 10 ms RMS segments of
`measure_attributes`).

    PYTHONPATH=src python benchmarks/onset_text_gap.py --model assets/siren_tiny_reference \\
        --manifest data/synthcaps/test.jsonl --codes data/synthcaps/codes_litdata/test --limit 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from siren_lightning.data.code_cache import CodeCache
from siren_lightning.data.manifest import read_manifest
from siren_lightning.data.synthcaps import _frame_rms, _segments
from siren_lightning.generate import load_generation_stack


def first_onset_frame(path: Path, frame_rate: float) -> int | None:
    """The codec frame where the clip's first event starts (None: no event found)."""
    audio, sr = sf.read(path, dtype="float64")
    hop_s = 0.01
    segs = _segments(_frame_rms(audio, sr, hop_s=hop_s), hop_s)
    return int(segs[0][0] * hop_s * frame_rate) if segs else None


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--codes", required=True)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--window", type=int, default=4, help="frames from the onset on")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, codec, text_encoder = load_generation_stack(args.model)
    frame_rate = codec.sample_rate / codec.hop_length
    clips = [c for c in read_manifest(args.manifest) if c.captions][: args.limit]
    root = Path(args.manifest).parent
    codes = CodeCache(args.codes).codes_of([c.id for c in clips])
    sums = {"background": [], "onset": [], "rest": []}
    own_ce = {k: [] for k in sums}
    pitches = [c.attributes["pitch"] for c in clips]
    for i, clip in enumerate(clips):
        j = next(
            j % len(clips)
            for j in range(i + 1, i + len(clips))
            if pitches[j % len(clips)] != pitches[i]
        )
        onset = first_onset_frame(root / clip.audio, frame_rate)
        if onset is None:
            continue
        x = codes[clip.id][None]  # [1, r, T]
        ce = []
        for caption in (clip.captions[0], clips[j].captions[0]):
            text = text_encoder.encode([caption])
            out = model(x, text.states, text.mask)
            logits = out.logits[0, 0].float()  # codebook 0: [T, K]
            ce.append(F.cross_entropy(logits, x[0, 0], reduction="none"))
        gap = ce[1] - ce[0]
        t = gap.shape[0]
        parts = {
            "background": slice(0, min(onset, t)),
            "onset": slice(onset, min(onset + args.window, t)),
            "rest": slice(min(onset + args.window, t), t),
        }
        for name, s in parts.items():
            if s.stop > s.start:
                sums[name].append(gap[s].mean().item())
                own_ce[name].append(ce[0][s].mean().item())
    report = {
        name: {
            "gap": float(np.mean(v)),
            "gap_sem": float(np.std(v) / np.sqrt(len(v))),
            "own_ce": float(np.mean(own_ce[name])),
            "clips": len(v),
        }
        for name, v in sums.items()
    }
    for name, r in report.items():
        print(
            f"{name:<10} gap {r['gap']:+.3f} ± {r['gap_sem']:.3f} nats   own CE {r['own_ce']:.3f}"
            f"   ({r['clips']} clips)"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "report": report}, indent=2))


if __name__ == "__main__":
    main()
