"""`siren align-report`: before/after table of an alignment on held-out captions, over seeds.

    siren align-report --before assets/siren_tiny_reference --after runs/align_tiny/model \\
        --manifest data/synthcaps/test.jsonl --limit 200 --seeds 0 1 2 --out runs/align_tiny/report

For each model and each sampling seed, one clip per held-out caption is generated at its clip's
own duration with `siren generate`'s sampling (`text_following.score_model`, as `siren
adherence` does: the same seeds and batch size give the same clips; flags not given come from
the models' generation.json, which must agree, else the defaults), then graded by what did not
train the policy:
- adherence (`measure_attributes`: pitch band, onset count, envelope; signal processing, another
  family than any CLAP), per attribute, their mean and all-three-right;
- CLAP score and FD of the `tiny` preset (`tiny-clap-eval`, never the reward's checkpoint; the
  report says when it is of the reward's model family);
- and, for reference, the training reward of the clips (`--reward`).
Each metric is the mean and sample sd over the seeds. A difference counts as beyond the noise
when |after - before| > 2 x the larger of the two sds. The mean exact per-token KL of the
aligned experts' guided distributions to the `before` model's on the first `--kl-clips`
captions (2 s, seed 0) says how far the policy moved.

`report.json` and `report.md` record the reward that trained the `after` model (its sidecar's
`align` entry), the grader, the manifest and the clip ids.

With `--cache DIR`, each model's metrics of each seed are kept in `DIR/align_report/<key>.json`,
the key hashing the model's weights, the clip ids, the seed, sampling, batch size, grader (with
its weights' SHA-256) and reward: the `before` rows of one stage-1 model are computed once for
every report that compares with it, and seeds run as separate processes (`--seeds 0`,
`--seeds 1`, ...) add up.

Letters: B clips, N samples.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import nn

from siren_lightning.align.heldout import HeldoutClip, evaluate_policy
from siren_lightning.metrics.adherence import mean_and_spread
from siren_lightning.models.sampling import resolve_sampling

# (key, title, which way is better)
COLUMNS = (
    ("adherence_mean", "adherence, mean of 3", "higher"),
    ("adherence_pitch", "pitch", "higher"),
    ("adherence_count", "count", "higher"),
    ("adherence_envelope", "envelope", "higher"),
    ("adherence_all", "all three", "higher"),
    ("clap_score", "CLAP score (grader)", "higher"),
    ("fd", "FD (tiny preset)", "lower"),
    ("reward", "training reward", "higher"),
)
# A difference is beyond the noise when larger than this many seed sds.
NOISE_SDS = 2.0


def read_audio(path: str | Path) -> torch.Tensor:
    """A WAV file as float32 [N]."""
    return torch.from_numpy(sf.read(str(path), dtype="float32")[0])


def seed_metrics(
    model: nn.Module,
    text_encoder: Any,
    codec: Any,
    clips: Sequence[Any],
    out: Path,
    seeds: Sequence[int],
    *,
    reward: Any = None,
    evaluator: Any = None,
    sampling: dict[str, Any] | None = None,
    batch_size: int = 50,
    plan: Any = None,
) -> dict[str, list[float]]:
    """Per-seed metrics of one model: metric name -> one value per seed.

    Args:
        clips: manifest `Clip`s with SynthCaps `attributes`, a first caption, audio and duration.
        out: the WAVs go to `out/seed<S>/<id>.wav`.
        plan: a `stages.planner.CaptionPlan` (LMs with `control_dim` > 0): each clip is
            generated under its caption's planned curve at its own duration.
    """
    from siren_lightning.text_following import score_model

    controls = None
    if plan is not None:
        captions = [c.captions[0] for c in clips]
        curves = plan.curves_for_seconds(captions, [c.duration for c in clips], codec)
        controls = {c.id: curve[:, 0] for c, curve in zip(clips, curves, strict=True)}
    adherence = score_model(
        model,
        text_encoder,
        codec,
        list(clips),
        out,
        list(seeds),
        sampling,
        batch_size,
        controls=controls,
        control_guidance=None if plan is None else plan.guidance,
        control_scale=0.0 if plan is None else plan.scale,
    )["adherence"]
    values = {f"adherence_{k}": adherence[k]["per_seed"] for k in adherence}
    captions = {c.id: c.captions[0] for c in clips}
    for seed in seeds:
        files = {c.id: out / f"seed{seed}" / f"{c.id}.wav" for c in clips}
        if evaluator is not None:
            results = evaluator.evaluate(files, {c.id: Path(c.audio) for c in clips}, captions)
            for key in ("clap_score", "fd"):
                if results["metrics"].get(key) is not None:
                    values.setdefault(key, []).append(float(results["metrics"][key]))
        if reward is not None:  # one clip at a time: the clips differ in length
            scores = [
                float(reward(read_audio(files[i])[None, None], codec.sample_rate, [captions[i]]))
                for i in files
            ]
            values.setdefault("reward", []).append(sum(scores) / len(scores))
    return values


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def summarize(values: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """metric -> {"mean", "spread" (sample sd), "per_seed"}."""
    out = {}
    for key, per_seed in values.items():
        mean, spread = mean_and_spread(per_seed)
        out[key] = {"mean": mean, "spread": spread, "per_seed": per_seed}
    return out


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """after - before per metric, the noise threshold (2 x the larger sd) and the verdict:
    "better" / "worse" beyond the noise (by the metric's direction), else "within noise"; "-"
    for a metric without a direction, "one seed: no spread" when a row has a single seed."""
    better = {key: way for key, _, way in COLUMNS}
    out = {}
    for key in before.keys() & after.keys():
        delta = after[key]["mean"] - before[key]["mean"]
        noise = NOISE_SDS * max(before[key]["spread"], after[key]["spread"])
        verdict = "within noise"
        if key not in better:  # no better direction (the KL to the reference)
            verdict = "-"
        elif min(len(before[key]["per_seed"]), len(after[key]["per_seed"])) < 2:
            verdict = "one seed: no spread"
        elif abs(delta) > noise:
            up = delta > 0 if better.get(key, "higher") == "higher" else delta < 0
            verdict = "better" if up else "worse"
        out[key] = {"delta": delta, "noise": noise, "verdict": verdict}
    return out


def compare(
    models: dict[str, nn.Module],
    reference: nn.Module,
    policy_groups: Sequence[int],
    text_encoder: Any,
    codec: Any,
    clips: Sequence[Any],
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    reward: Any = None,
    evaluator: Any = None,
    sampling: dict[str, Any] | None = None,
    batch_size: int = 50,
    kl_clips: int = 32,
    kl_seconds: float = 2.0,
    trained_with: dict[str, Any] | None = None,
    grader: dict[str, Any] | None = None,
    cache: str | Path | None = None,
    sampling_from: dict[str, str] | None = None,
    plan: Any = None,
) -> dict[str, Any]:
    """Grade each model on the same held-out clips and seeds; write `report.json` / `report.md`.

    Args:
        models: row name -> eval-mode `SirenLM`, e.g. {"before": stage 1, "after": aligned};
            the first two are compared.
        reference: the model whose experts `policy_groups` are the KL reference.
        policy_groups: the aligned experts.
        clips: held-out manifest `Clip`s with attributes (never used in rollouts).
        seeds, reward, evaluator, sampling, batch_size: as `seed_metrics`.
        kl_clips, kl_seconds: captions (clips of kl_seconds, seed 0) for the KL to the
            reference (0: none).
        trained_with: the `after` model's `align` record (its training reward's provenance).
        grader: what grades (recorded as given).
        cache: folder of per-model metrics (see the module's docstring), or None.
        sampling_from: where each sampling setting came from (`ResolvedSampling.sources`),
            recorded as given.
        plan: a `stages.planner.CaptionPlan` both models generate under (LMs that follow a
            plan), or None.

    Returns:
        the report dict (also written as JSON).
    """
    out = Path(out)
    sampling = resolve_sampling("siren align-report", sampling).values
    ref_experts = {k: reference.experts[k] for k in policy_groups}
    plan_record = None
    if plan is not None:
        plan_record = {"planner": plan.source, "scale": plan.scale, "guidance": plan.guidance}
    rows, timing = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        digest = model_digest(model)
        per_seed: dict[int, dict[str, float]] = {}
        files: dict[int, Path] = {}
        for seed in seeds:
            key = {
                "model_sha256": digest,
                "clip_ids": [c.id for c in clips],
                "seed": seed,
                "sampling": sampling,
                "batch_size": batch_size,
                "grader": None if evaluator is None else evaluator.protocol.name,
                "grader_clap": (grader or {}).get("clap"),
                # a judge retrained under the same name must not reuse the old one's rows
                "grader_clap_sha256": (grader or {}).get("clap_sha256"),
                "reward": None if reward is None else reward.provenance(),
                "plan": plan_record,
            }
            name_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
            if cache is not None:
                files[seed] = Path(cache) / "align_report" / f"{name_hash}.json"
                if files[seed].is_file():
                    per_seed[seed] = json.loads(files[seed].read_text())["values"]
                    timing[f"{name}_seed{seed}_cached"] = str(files[seed])
        missing = [seed for seed in seeds if seed not in per_seed]
        if missing:
            values = seed_metrics(
                model,
                text_encoder,
                codec,
                clips,
                out / name,
                missing,
                reward=reward,
                evaluator=evaluator,
                sampling=sampling,
                batch_size=batch_size,
                plan=plan,
            )
            for i, seed in enumerate(missing):
                per_seed[seed] = {k: v[i] for k, v in values.items()}
                if seed in files:
                    files[seed].parent.mkdir(parents=True, exist_ok=True)
                    files[seed].write_text(json.dumps({"values": per_seed[seed]}) + "\n")
        values = {k: [per_seed[seed][k] for seed in seeds] for k in per_seed[seeds[0]]}
        rows[name] = summarize(values)
        if kl_clips and model is reference:  # KL of the reference to itself
            rows[name]["kl_ref"] = {"mean": 0.0, "spread": 0.0, "per_seed": [0.0]}
        elif kl_clips:
            short = [HeldoutClip(c.id, c.captions[0], Path(c.audio)) for c in clips[:kl_clips]]
            kl, _ = evaluate_policy(
                model,
                text_encoder,
                codec,
                short,
                out / name / "kl",
                reference=ref_experts,
                seconds=kl_seconds,
                sampling=sampling,
                seed=0,
                plan=plan,
            )
            rows[name]["kl_ref"] = {"mean": kl["kl_ref"], "spread": 0.0, "per_seed": [kl["kl_ref"]]}
        timing[name] = round(time.perf_counter() - start, 1)
    names = list(models)
    report = {
        "rows": rows,
        "differences": differences(rows[names[0]], rows[names[1]]) if len(names) > 1 else {},
        "noise_rule": f"|after - before| > {NOISE_SDS:g} x the larger seed sd",
        "clips": len(clips),
        "clip_ids": [c.id for c in clips],
        "seeds": list(seeds),
        "sampling": sampling,
        "sampling_from": sampling_from,
        "plan": plan_record,
        "batch_size": batch_size,
        "kl_clips": kl_clips,
        "kl_seconds": kl_seconds,
        "policy_groups": list(policy_groups),
        "trained_with": trained_with,
        "graded_by": grader,
        "report_reward": None if reward is None else reward.provenance(),
        "seconds": timing,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_table(report) + "\n")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per metric, mean ± sd per model, the
    difference and its verdict."""
    rows = report["rows"]
    names = list(rows)
    every = (*COLUMNS, ("kl_ref", "KL to reference (nats/token)", "-"))
    keys = [c for c in every if any(c[0] in r for r in rows.values())]
    lines = [
        "| metric | " + " | ".join(names) + " | after - before | beyond 2 sd? |",
        "| --- |" + " ---: |" * len(names) + " ---: | --- |",
    ]
    for key, title, way in keys:
        cells = []
        for name in names:
            s = rows[name].get(key)
            cells.append("-" if s is None else f"{s['mean']:.3f} ± {s['spread']:.3f}")
        d = report["differences"].get(key)
        diff = "-" if d is None else f"{d['delta']:+.3f}"
        verdict = "-" if d is None else d["verdict"]
        lines.append(f"| {title} ({way}) | " + " | ".join(cells) + f" | {diff} | {verdict} |")
    trained = (report.get("trained_with") or {}).get("reward") or {}
    graded = report.get("graded_by") or {}
    caveat = ""
    if graded.get("same_family"):
        caveat = ", the reward's family: its CLAP score is not independent evidence"
    lines += [
        "",
        f"{report['clips']} held-out clips at their own durations, mean ± sd over sampling seeds "
        f"{report['seeds']} (batch {report['batch_size']}), sampling {report['sampling']}; "
        f"noise rule: {report['noise_rule']}. KL over the codebooks of experts "
        f"{report['policy_groups']} on the first {report['kl_clips']} captions "
        f"({report['kl_seconds']:g} s, seed 0).",
        f"Trained with: {trained.get('name', 'unknown')} (family {trained.get('family', '?')}, "
        f"sha256 {trained.get('sha256', '-')}). Graded by: {graded.get('clap', '?')} "
        f"(family {graded.get('clap_family', '?')}{caveat}), adherence by signal processing.",
    ]
    plan = report.get("plan")
    if plan:
        lines.append(
            f"Both rows generated under the planner's curves ({plan['planner']}), control "
            f"guidance {plan['scale']:g} ({plan['guidance']} copy)."
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Compare a stage-1 model and its aligned copy on held-out captions, over sampling seeds."""
    from siren_lightning.align.rewards import build_reward
    from siren_lightning.codec.checkpoint import load_codec
    from siren_lightning.data.manifest import read_manifest
    from siren_lightning.export import ExportError, exported_codec, load_lm
    from siren_lightning.generation_config import (
        add_sampling_flags,
        given_sampling,
        model_plan,
        model_sampling,
    )
    from siren_lightning.metrics.adherence import has_attributes
    from siren_lightning.metrics.protocol import build_evaluator
    from siren_lightning.metrics.tiny_clap import tiny_clap_path
    from siren_lightning.metrics.weights import sha256_file
    from siren_lightning.stages.planner import CaptionPlan
    from siren_lightning.text import TextEncoder

    p = argparse.ArgumentParser(prog="siren align-report", description=main.__doc__)
    p.add_argument("--before", required=True, help="stage-1 model folder (`siren export`)")
    p.add_argument(
        "--after",
        help="aligned model folder (`siren export`); without it only --before is graded (with "
        "--cache: its rows for a later report, e.g. while the alignment trains)",
    )
    p.add_argument("--manifest", required=True, help="held-out JSONL manifest with attributes")
    p.add_argument("--limit", type=int, default=200, help="first N clips of the manifest")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    p.add_argument("--out", required=True, help="folder for report.json, report.md and WAVs")
    p.add_argument("--reward", default="tiny-clap-reward", help="reward spec (build_reward)")
    p.add_argument("--tiny-clap", default="tiny-clap-eval", help="evaluation tiny CLAP")
    p.add_argument("--cache", default=None, help="evaluator feature cache folder")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--kl-clips", type=int, default=32, help="captions for the KL (0: none)")
    add_sampling_flags(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    args = p.parse_args(argv)
    sampling = model_sampling(args.before, "siren align-report", given_sampling(args))
    if args.after:  # both rows at one setting: the report measures the alignment, not sampling
        after_sampling = model_sampling(args.after, "siren align-report", given_sampling(args))
        differ = {
            k: (v, after_sampling.values[k])
            for k, v in sampling.values.items()
            if v != after_sampling.values[k]
        }
        if differ:
            cells = ", ".join(f"{k} {a:g} vs {b:g}" for k, (a, b) in differ.items())
            raise ValueError(
                f"siren align-report: --before and --after sample differently ({cells}, from "
                "their generation.json); give the flags to grade both at one setting"
            )
    if args.limit < 1:
        raise ValueError(f"siren align-report: --limit must be >= 1, got {args.limit}")
    if args.batch_size < 1 or args.kl_clips < 0:
        raise ValueError("siren align-report: --batch-size must be >= 1 and --kl-clips >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        before, sidecar = load_lm(args.before, who="siren align-report: --before")
        after, after_sidecar = (
            load_lm(args.after, who="siren align-report: --after") if args.after else (None, {})
        )
    except (ExportError, FileNotFoundError) as err:
        print(err)
        return 1
    if args.reward.removeprefix("tiny-clap:") == args.tiny_clap:
        print(f"siren align-report: the reward and the evaluation both use {args.tiny_clap}")
        return 2
    trained_with = after_sidecar.get("align")
    trained_reward = (trained_with or {}).get("reward") or {}
    if trained_reward.get("checkpoint") == args.tiny_clap:
        print(
            f"siren align-report: {args.after} was trained with {args.tiny_clap}: it cannot grade"
        )
        return 2
    clips = [c for c in read_manifest(args.manifest) if c.captions][: args.limit]
    if not has_attributes([c.attributes for c in clips]):
        print(f"siren align-report: {args.manifest} has no SynthCaps attributes to grade by")
        return 2
    groups = after_sidecar.get("train_groups") or [0]
    codec_spec = exported_codec(sidecar, args.before)
    if after is not None:
        codec_spec = exported_codec(after_sidecar, args.after) or codec_spec
    codec = load_codec(codec_spec).eval()
    text_info = after_sidecar.get("text_encoder") or sidecar.get("text_encoder") or {}
    text_encoder = TextEncoder(
        text_info.get("backend", "minilm"),
        text_info.get("name_or_path"),
        max_length=text_info.get("max_length") or 64,
    )
    family = trained_reward.get("family")
    weights = tiny_clap_path(args.tiny_clap) / "model.safetensors"
    grader = {
        "preset": "tiny",
        "clap": args.tiny_clap,
        "clap_sha256": sha256_file(weights) if weights.is_file() else None,
        "clap_family": "tiny-clap",
        "same_family": family == "tiny-clap",
        "adherence": "measure_attributes (signal processing)",
    }
    plan = None
    if getattr(before.config, "control_dim", 0) > 0:
        found = model_plan(args.before)
        if found is None:
            print(
                f"siren align-report: {args.before} follows a per-frame plan (control_dim > 0) "
                "but its generation.json names no planner (`siren set-sampling --planner`)"
            )
            return 2
        try:
            plan = CaptionPlan.load(
                found.planner, text_encoder, found.control_scale, found.control_guidance
            )
        except ValueError as err:
            print(f"siren align-report: {err}")
            return 2
        print(
            f"plan: {found.planner} (--before's generation.json), control_scale "
            f"{found.control_scale:g}, control_guidance {found.control_guidance}; both rows"
        )
    models = {"before": before} if after is None else {"before": before, "after": after}
    print(sampling.describe())
    report = compare(
        models,
        before,
        groups,
        text_encoder,
        codec,
        clips,
        args.out,
        seeds=args.seeds,
        reward=build_reward(args.reward),
        evaluator=build_evaluator("tiny", tiny_clap=args.tiny_clap, cache_dir=args.cache),
        sampling=sampling.values,
        sampling_from=sampling.sources,
        batch_size=args.batch_size,
        kl_clips=args.kl_clips,
        trained_with=trained_with,
        grader=grader,
        cache=args.cache,
        plan=plan,
    )
    print(markdown_table(report))
    print(f"report: {Path(args.out) / 'report.json'}, {Path(args.out) / 'report.md'}")
    return 0
