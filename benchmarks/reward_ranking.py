"""Does a reward rank a caption's generated samples the way the grader does? (issue 17)

GRPO only sees reward differences inside a group of samples of one caption, so what a stage-2
reward must get right is the order of those samples. This reads the generations of `siren
adherence --seeds ...` (one folder per seed: `<id>.wav` and the grader's `adherence.jsonl`), and
for each judged attribute counts, over the captions whose samples disagree on it, how often the
samples that have it right score higher on average under each reward. 0.5 is a reward blind to
the attribute. The grader (`measure_attributes`) only sorts the samples here; no reward saw it.

    PYTHONPATH=src python benchmarks/reward_ranking.py --generations runs/rw/hn_gen \\
      --manifest data/synthcaps_clean/test.jsonl --rewards tiny-clap-reward-clean tiny-clap-reward-faults
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf
import torch

from siren_lightning.align.rewards import build_reward
from siren_lightning.data.manifest import read_manifest
from siren_lightning.metrics.adherence import JUDGED


def ranking(scores: dict[str, list[float]], right: dict[str, list[dict[str, bool]]]) -> dict:
    """Per attribute: (captions where the reward sides with the grader, captions that disagree).

    scores[id]: one score per sample; right[id]: the grader's per-attribute verdict per sample.
    A tie counts half.
    """
    out = {}
    for key in JUDGED:
        agree, total = 0.0, 0
        for cid, rows in right.items():
            good = [s for s, r in zip(scores[cid], rows, strict=True) if r[key]]
            bad = [s for s, r in zip(scores[cid], rows, strict=True) if not r[key]]
            if not good or not bad:
                continue
            total += 1
            diff = sum(good) / len(good) - sum(bad) / len(bad)
            agree += 1.0 if diff > 0 else (0.5 if diff == 0 else 0.0)
        out[key] = (agree / max(total, 1), total)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generations", required=True, help="siren adherence --out folder")
    p.add_argument("--manifest", required=True)
    p.add_argument("--rewards", nargs="+", required=True, help="reward names (build_reward)")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    captions = {c.id: c.captions[0] for c in read_manifest(args.manifest)}
    folders = sorted(Path(args.generations).glob("seed*"))
    right: dict[str, list[dict[str, bool]]] = {}
    waves: dict[str, list] = {}
    for folder in folders:
        for line in (folder / "adherence.jsonl").read_text().splitlines():
            row = json.loads(line)
            right.setdefault(row["id"], []).append(row)
            waves.setdefault(row["id"], []).append(sf.read(folder / f"{row['id']}.wav"))
    print(f"{len(right)} captions x {len(folders)} seeds from {args.generations}")
    print("| reward | " + " | ".join(JUDGED) + " |")
    print("|---|" + "---|" * len(JUDGED))
    for name in args.rewards:
        reward = build_reward(name)
        scores = {}
        for cid, samples in waves.items():
            scores[cid] = [
                float(reward(torch.tensor(a, dtype=torch.float32)[None, None], sr, [captions[cid]]))
                for a, sr in samples
            ]
        table = ranking(scores, right)
        cells = [f"{table[k][0]:.2f} ({table[k][1]})" for k in JUDGED]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
