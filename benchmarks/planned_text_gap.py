"""The text gap of a planned system: the caption enters twice, through its plan and directly.

For each held-out clip, teacher-forced CE of its true codes under (own caption, the planner's
curve for it) against (a caption of another attribute combination, the planner's curve for that
caption at this clip's length), per codebook: the text gap of `siren adherence --codes` for an
LM that follows a plan drawn from its caption. Also the gap with the plan held at the own
caption's (what the caption says beyond its plan; `siren adherence --codes --control` measures
the same).

    PYTHONPATH=src python benchmarks/planned_text_gap.py --model M \\
      --planner runs/planner_clean/checkpoints/epoch=19-step=1500.ckpt \\
      --manifest data/synthcaps_clean/test.jsonl --codes data/synthcaps_clean/codes_litdata/test
"""

from __future__ import annotations

import argparse

import torch

from siren_lightning.data.code_cache import CodeCache
from siren_lightning.data.manifest import read_manifest
from siren_lightning.generate import load_generation_stack
from siren_lightning.metrics.adherence import caption_ce, mismatched_partners
from siren_lightning.stages.planner import load_planner, plan_curves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export of an LM with control_dim 1")
    p.add_argument("--planner", required=True, help="PlannerModule checkpoint")
    p.add_argument("--manifest", required=True, help="clips with attributes")
    p.add_argument("--codes", required=True, help="the manifest's code cache")
    p.add_argument("--limit", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _, encoder = load_generation_stack(args.model)
    planner = load_planner(args.planner)
    clips = [c for c in read_manifest(args.manifest) if c.captions][: args.limit]
    codes = CodeCache(args.codes).codes_of([c.id for c in clips])
    own = [c.captions[0] for c in clips]
    other = [own[j] for j in mismatched_partners([c.attributes for c in clips])]
    clip_codes = [codes[c.id] for c in clips]
    frames = [x.shape[-1] for x in clip_codes]
    with torch.no_grad():
        own_plan = plan_curves(planner, encoder, own, frames)
        other_plan = plan_curves(planner, encoder, other, frames)
    ce, _ = caption_ce(
        model,
        encoder,
        clip_codes,
        [own, other, other],
        control_sets=[own_plan, other_plan, own_plan],
    )  # [3, n]
    keys = ("own", "other caption and its plan", "other caption, own plan")
    rows = dict(zip(keys, ce, strict=True))
    print(f"{len(clips)} clips; CE of the true codes (nats) per codebook")
    for key, row in rows.items():
        print(f"  {key:<33}" + " ".join(f"{v:5.2f}" for v in row.tolist()))
    for key in list(rows)[1:]:
        gap = rows[key] - rows["own"]
        print(f"  {'gap: ' + key:<33}" + " ".join(f"{v:+5.2f}" for v in gap.tolist()))


if __name__ == "__main__":
    main()
