"""`siren adherence`: does an exported model follow its captions? (DESIGN.md section 4)

For the first N clips of a manifest with SynthCaps attributes, generate at each clip's own
duration (one run per sampling seed), score every generation with `measure_attributes`, and
report adherence per attribute, as the mean of the three and as all-three-right, with the mean
and spread over the seeds beside the chance level. With `--codes` (the split's code cache) it
also reports the text gap per codebook and the attribute gaps (one attribute's words swapped
at a time, and the empty caption: which words the model reads). The WAVs stay in
`<out>/seed<S>/` for `siren evaluate` (CLAP, FD) on the same generations. Sampling flags not
given come from the model's `generation.json`, else the defaults; the report records the
settings and where each came from.

    siren adherence --model runs/siren_tiny/model --manifest data/synthcaps/test.jsonl \\
        --codes data/synthcaps/codes_litdata/test --limit 200 --seeds 0 1 2 --out runs/siren_tiny/follow
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from siren_lightning.generate import (
    add_control_guidance_flags,
    generate_audio,
    load_generation_stack,
)
from siren_lightning.metrics.adherence import (
    CHANCE,
    GAP_ROWS,
    JUDGED,
    adherence,
    attribute_gaps,
    has_attributes,
    mean_and_spread,
    text_gap,
)
from siren_lightning.models.sampling import resolve_sampling

SCORES = (*JUDGED, "mean", "all")


def score_model(
    model: Any,
    text_encoder: Any,
    codec: Any,
    clips: list[Any],
    out: Path,
    seeds: list[int],
    sampling: dict[str, float] | None = None,
    batch_size: int = 16,
    codes: dict[str, torch.Tensor] | None = None,
    controls: dict[str, torch.Tensor] | None = None,
    control_guidance: str | None = None,
    control_scale: float = 0.0,
) -> dict[str, Any]:
    """Adherence over sampling seeds (and the text gap and attribute gaps when `codes` maps
    clip id -> [r, T]).

    Args:
        clips: manifest `Clip`s with `attributes` and a first caption; generated in order of
            duration, so a batch holds clips of similar length.
        controls: clip id -> [T] per-frame control curve (LMs with `control_dim` > 0): the
            original's loudness (`siren loudness`, an oracle plan) or a planner's.
        control_guidance, control_scale: control guidance (`generate_audio`).

    Returns:
        {"adherence": {score: {"mean", "spread", "per_seed"}}, "text_gap": ... or None,
        "attribute_gaps": ... or None (`attribute_gaps`, caption seed 0), "clips": n, "seeds",
        "sampling", "chance"}.
    """
    clips = sorted(clips, key=lambda c: (c.duration or 0.0, c.id))
    captions = [c.captions[0] for c in clips]
    attributes = [c.attributes for c in clips]
    per_seed = []
    for seed in seeds:
        folder = out / f"seed{seed}"
        records = generate_audio(
            model,
            text_encoder,
            codec,
            captions,
            folder,
            seconds=[c.duration for c in clips],
            seed=seed,
            batch_size=batch_size,
            sampling=sampling,
            ids=[c.id for c in clips],
            controls=None if controls is None else [controls[c.id] for c in clips],
            control_guidance=control_guidance,
            control_scale=control_scale,
        )
        audios = [sf.read(r["path"], dtype="float32")[0] for r in records]
        per_seed.append(adherence(audios, attributes, codec.sample_rate))
        per_clip = [{"id": c.id, **s} for c, s in zip(clips, per_seed[-1]["per_clip"], strict=True)]
        with open(folder / "adherence.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in per_clip)
    summary = {}
    for key in SCORES:
        values = [s[key] for s in per_seed]
        mean, spread = mean_and_spread(values)
        summary[key] = {"mean": mean, "spread": spread, "per_seed": values}
    gap = per_attribute = None
    if codes is not None:
        clip_codes = [codes[c.id] for c in clips]
        curves = None if controls is None else [controls[c.id] for c in clips]
        gap = text_gap(model, text_encoder, clip_codes, captions, attributes, controls=curves)
        per_attribute = attribute_gaps(model, text_encoder, clip_codes, attributes, controls=curves)
    return {
        "adherence": summary,
        "text_gap": gap,
        "attribute_gaps": per_attribute,
        "clips": len(clips),
        "seeds": list(seeds),
        "sampling": resolve_sampling("score_model", sampling).values,
        "chance": {**CHANCE, "mean": sum(CHANCE.values()) / 3},
    }


def format_report(report: dict[str, Any]) -> str:
    """The printed table: adherence mean ± seed spread beside chance, then the text gap and the
    attribute gaps (codebook 0 and the mean over codebooks)."""
    seeds = len(report["seeds"])
    lines = [f"adherence on {report['clips']} clips, mean ± sd over {seeds} sampling seed(s)"]
    for key in SCORES:
        s = report["adherence"][key]
        chance = report["chance"].get(key)
        tail = f"   (chance {chance:.2f})" if chance is not None else ""
        lines.append(f"  {key:<9} {s['mean']:.3f} ± {s['spread']:.3f}{tail}")
    gap = report.get("text_gap")
    if gap:
        cells = " ".join(f"{g:+.2f}" for g in gap["gap"])
        under = " (both under the --control curves)" if report.get("control") else ""
        lines.append(f"text gap (nats, CE other caption - own{under}) per codebook: {cells}")
    per_attribute = report.get("attribute_gaps")
    if per_attribute:
        first = per_attribute["codebooks"][0]
        lines.append("attribute gaps (nats, CE with one attribute's words swapped - own wording)")
        lines.append(f"  {'swapped':<9} {f'cb{first}':>7} {'mean':>7}")
        for row in GAP_ROWS:
            cells = per_attribute[row]
            lines.append(f"  {row:<9} {cells['gap'][0]:+7.3f} {cells['mean']:+7.3f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Adherence (and text gap) of an exported model on held-out captions with attributes."""
    from siren_lightning.data.code_cache import CodeCache, CodeCacheError
    from siren_lightning.data.manifest import read_manifest
    from siren_lightning.export import ExportError
    from siren_lightning.generation_config import (
        add_sampling_flags,
        given_sampling,
        model_plan,
        model_sampling,
        resolve_control,
    )

    p = argparse.ArgumentParser(prog="siren adherence", description=main.__doc__)
    p.add_argument("--model", required=True, help="folder written by `siren export`")
    p.add_argument("--manifest", required=True, help="JSONL manifest whose clips have attributes")
    p.add_argument(
        "--codes",
        help="the manifest's code cache (`siren tokenize`): adds the text gap (with --control, "
        "each clip's curve is the same under both captions)",
    )
    p.add_argument("--limit", type=int, default=200, help="the first N clips (default 200)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds")
    p.add_argument("--out", required=True, help="folder for the WAVs and report.json")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--control",
        help="per-frame control curves for an LM with control_dim > 0: a `siren loudness` file "
        "(the originals': an oracle plan) or a planner's, holding every clip's id (default: "
        "the planner the model's generation.json names plans each clip at its duration)",
    )
    add_control_guidance_flags(p, "--control")
    add_sampling_flags(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.limit < 1 or args.batch_size < 1:
        print("siren adherence: --limit and --batch-size must be >= 1")
        return 2
    try:  # a bad flag or generation.json fails here, before the model loads
        sampling = model_sampling(args.model, "siren adherence", given_sampling(args))
        plan = None if args.control else model_plan(args.model)
    except ValueError as err:
        print(err)
        return 2
    control_scale, control_guidance = resolve_control(args, plan)
    if control_scale and not (args.control or plan):
        print("siren adherence: --control-scale needs --control")
        return 2

    clips = [c for c in read_manifest(args.manifest) if c.captions][: args.limit]
    if not has_attributes([c.attributes for c in clips]):
        print(
            f"siren adherence: skipped: {args.manifest} has no SynthCaps attributes (pitch, "
            "count, envelope) to judge generations by"
        )
        return 0
    try:
        model, codec, text_encoder = load_generation_stack(args.model, args.device)
    except (ExportError, ValueError) as err:
        print(f"siren adherence: {err}")
        return 1
    codes = None
    if args.codes:
        try:
            codes = CodeCache(args.codes).codes_of([c.id for c in clips])
        except CodeCacheError as err:
            print(f"siren adherence: {err}")
            return 1
    controls = None
    if args.control:
        controls = torch.load(args.control, weights_only=True)
        missing = [c.id for c in clips if c.id not in controls]
        if missing:
            print(
                f"siren adherence: {args.control} has no curve for {len(missing)} clips, e.g. {missing[0]}"
            )
            return 1
    elif plan is not None:
        from siren_lightning.generate import planned_controls

        print(f"plan: {plan.planner} (the model's generation.json), each clip at its duration")
        try:
            curves = planned_controls(
                plan.planner,
                text_encoder,
                [c.captions[0] for c in clips],
                [c.duration for c in clips],
                codec,
                args.device,
            )
        except ValueError as err:
            print(f"siren adherence: {err}")
            return 1
        controls = {c.id: curve[:, 0] for c, curve in zip(clips, curves, strict=True)}
    out = Path(args.out)
    print(sampling.describe())
    report = score_model(
        model,
        text_encoder,
        codec,
        clips,
        out,
        args.seeds,
        sampling.values,
        args.batch_size,
        codes,
        controls,
        control_guidance,
        control_scale,
    )
    report["control"] = args.control or (str(plan.planner) if plan is not None else None)
    report["control_guidance"] = control_guidance if control_scale else None
    report["control_scale"] = control_scale
    report["sampling_from"] = sampling.sources
    report["model"] = str(Path(args.model).resolve())
    report["manifest"] = str(Path(args.manifest).resolve())
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    return 0
