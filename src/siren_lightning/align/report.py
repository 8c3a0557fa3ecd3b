"""`siren align-report`: before/after table of an alignment on held-out captions.

`siren align-report --before runs/siren_tiny/model --after runs/align_tiny/model
--manifest data/synthcaps/val.jsonl --limit 64 --out runs/align_tiny/report` generates one clip
per held-out caption with each model (same seed, `siren generate`'s sampling), and writes
`report.json` and `report.md` with, per model: the training reward, the held-out CLAP score
(`tiny-clap-eval`, never the reward model), FD in the `tiny` preset against the clips' reference
audio, and the mean exact per-token KL to the reference (the `before` model's experts) on the
aligned experts' codebooks.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from siren_lightning.align.heldout import EVAL_SAMPLING, HeldoutClip, evaluate_policy

COLUMNS = (
    ("reward", "reward (train scorer)", "higher"),
    ("clap_score", "CLAP score (tiny-clap-eval)", "higher"),
    ("fd", "FD (tiny preset)", "lower"),
    ("kl_ref", "KL to reference (nats/token)", "-"),
)


def compare(
    models: dict[str, nn.Module],
    reference: nn.Module,
    policy_groups: Sequence[int],
    text_encoder: Any,
    codec: Any,
    clips: Sequence[HeldoutClip],
    out: str | Path,
    *,
    reward: Any = None,
    evaluator: Any = None,
    seconds: float = 2.0,
    sampling: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate each model on the same held-out clips and write `report.json` / `report.md`.

    Args:
        models: row name -> eval-mode `SirenLM` (e.g. {"before": stage 1, "after": aligned}).
        reference: the model whose experts `policy_groups` are the KL reference.
        policy_groups: the aligned experts.
        clips, reward, evaluator, seconds, sampling, seed: as `align.heldout.evaluate_policy`.

    Returns:
        the report dict (also written as JSON).
    """
    out = Path(out)
    ref_experts = {k: reference.experts[k] for k in policy_groups}
    rows = {}
    for name, model in models.items():
        start = time.perf_counter()
        metrics, _ = evaluate_policy(
            model,
            text_encoder,
            codec,
            clips,
            out / name,
            reward=reward,
            evaluator=evaluator,
            reference=ref_experts,
            seconds=seconds,
            sampling=sampling,
            seed=seed,
        )
        rows[name] = {**metrics, "seconds": round(time.perf_counter() - start, 1)}
    report = {
        "rows": rows,
        "clips": len(clips),
        "clip_ids": [c.id for c in clips],
        "seconds_per_clip": seconds,
        "sampling": {**EVAL_SAMPLING, **(sampling or {})},
        "seed": seed,
        "policy_groups": list(policy_groups),
        "reward": getattr(reward, "name", None),
        "evaluator": None if evaluator is None else evaluator.protocol.name,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_table(report) + "\n")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report's rows as a markdown table (missing metrics shown as '-')."""
    names = [c for c in COLUMNS if any(c[0] in row for row in report["rows"].values())]
    header = "| model | " + " | ".join(f"{title} ({better})" for _, title, better in names) + " |"
    lines = [header, "| --- |" + " ---: |" * len(names)]
    for model, row in report["rows"].items():
        cells = [f"{row[key]:.3f}" if key in row else "-" for key, _, _ in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{report['clips']} held-out clips of {report['seconds_per_clip']:g} s, seed "
        f"{report['seed']}, sampling {report['sampling']}; reward {report['reward']}; "
        f"evaluation preset {report['evaluator']}; KL over the codebooks of experts "
        f"{report['policy_groups']}."
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Compare a stage-1 model and its aligned copy on held-out captions."""
    import torch

    from siren_lightning.align.heldout import heldout_clips
    from siren_lightning.align.rewards import build_reward
    from siren_lightning.codec.checkpoint import load_codec
    from siren_lightning.data.manifest import read_manifest
    from siren_lightning.export import ExportError, exported_codec, load_exported
    from siren_lightning.metrics.protocol import build_evaluator
    from siren_lightning.models.sampling import check_sampling
    from siren_lightning.text import TextEncoder

    p = argparse.ArgumentParser(prog="siren align-report", description=main.__doc__)
    p.add_argument("--before", required=True, help="stage-1 model folder (`siren export`)")
    p.add_argument("--after", required=True, help="aligned model folder (`siren export`)")
    p.add_argument("--manifest", required=True, help="held-out JSONL manifest (e.g. val)")
    p.add_argument("--limit", type=int, default=64, help="first N clips of the manifest")
    p.add_argument("--out", required=True, help="folder for report.json, report.md and WAVs")
    p.add_argument("--reward", default="tiny-clap-reward", help="reward spec (build_reward)")
    p.add_argument("--tiny-clap", default="tiny-clap-eval", help="evaluation tiny CLAP")
    p.add_argument("--cache", default=None, help="evaluator feature cache folder")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=EVAL_SAMPLING["cfg_scale"])
    p.add_argument("--top-k", type=int, default=EVAL_SAMPLING["top_k"])
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    args = p.parse_args(argv)
    check_sampling("siren align-report", top_k=args.top_k, cfg_scale=args.cfg_scale)
    if args.limit < 1:
        raise ValueError(f"siren align-report: --limit must be >= 1, got {args.limit}")
    if not args.seconds > 0:
        raise ValueError(f"siren align-report: --seconds must be positive, got {args.seconds}")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        before, sidecar = load_exported(args.before)
        after, after_sidecar = load_exported(args.after)
    except ExportError as err:
        print(err)
        return 1
    if args.reward.removeprefix("tiny-clap:") == args.tiny_clap:
        print(f"siren align-report: the reward and the evaluation both use {args.tiny_clap}")
        return 2
    groups = after_sidecar.get("train_groups") or [0]
    codec_spec = exported_codec(after_sidecar, args.after) or exported_codec(sidecar, args.before)
    codec = load_codec(codec_spec).eval()
    text_info = after_sidecar.get("text_encoder") or sidecar.get("text_encoder") or {}
    text_encoder = TextEncoder(
        text_info.get("backend", "minilm"),
        text_info.get("name_or_path"),
        max_length=text_info.get("max_length") or 64,
    )
    clips = heldout_clips(read_manifest(args.manifest), args.limit)
    report = compare(
        {"before": before, "after": after},
        before,
        groups,
        text_encoder,
        codec,
        clips,
        args.out,
        reward=build_reward(args.reward),
        evaluator=build_evaluator("tiny", tiny_clap=args.tiny_clap, cache_dir=args.cache),
        seconds=args.seconds,
        sampling={"cfg_scale": args.cfg_scale, "top_k": args.top_k},
        seed=args.seed,
    )
    print(markdown_table(report))
    print(f"report: {Path(args.out) / 'report.json'}, {Path(args.out) / 'report.md'}")
    return 0
