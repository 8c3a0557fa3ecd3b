"""`siren prepare audiocaps|wavcaps|jsonl|synthcaps`: write JSONL manifests and a report.

Each importer keeps the clips whose audio exists and has a readable header, writes the manifest
and `<manifest>.report.json` (clips found, missing, unreadable, with their ids) and prints a line.
`jsonl` also decodes every file and leaves out the clips that training would skip (empty, silent,
NaN/inf samples, too short: "unusable" in the report), so its output is a cleaned manifest. No
usable clip at all is an error (exit 2), and no manifest is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from siren_lightning.data.audio import MIN_SECONDS
from siren_lightning.data.manifest import (
    Clip,
    ImportReport,
    ManifestError,
    check_audio,
    import_audiocaps,
    import_wavcaps,
    read_manifest,
    write_manifest,
)


def _write(
    clips: list[Clip], out: Path, source: str, *, full: bool = False, min_seconds: float = 0.0
) -> ImportReport:
    report = ImportReport(source=source)
    kept = check_audio(clips, report, full=full, min_seconds=min_seconds)
    report_path = out.with_name(out.name + ".report.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if not kept:
        # An empty manifest would only fail later (tokenize, fit), further from the cause.
        raise ManifestError(
            f"{report.summary()}: no usable clip, so no manifest written to {out} "
            f"(report: {report_path})"
        )
    write_manifest(out, kept)
    print(f"{report.summary()} -> {out} (report: {report_path})")
    return report


def select_clips(clips: list[Clip], where: list[str]) -> list[Clip]:
    """The clips whose attributes match every `KEY=VALUE` of `where` (all clips when empty)."""
    wanted = {}
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ManifestError(f"--where takes KEY=VALUE, got {item!r}")
        wanted[key] = value
    return [c for c in clips if all(str(c.attributes.get(k)) == v for k, v in wanted.items())]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siren prepare", description=__doc__)
    sub = p.add_subparsers(dest="source", required=True)

    ac = sub.add_parser("audiocaps", help="AudioCaps CSV -> JSONL")
    ac.add_argument("--csv", required=True, type=Path, help="train.csv, val.csv or test.csv")
    ac.add_argument("--audio-dir", required=True, type=Path)
    ac.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    ac.add_argument(
        "--audio-pattern",
        default="{youtube_id}.wav",
        help="file name from CSV columns, e.g. 'Y{youtube_id}.wav' (default: %(default)s)",
    )
    ac.add_argument("--id-field", default="youtube_id", choices=["youtube_id", "audiocap_id"])
    ac.add_argument("--split", default=None)

    wc = sub.add_parser("wavcaps", help="WavCaps JSON (one or more subsets) -> JSONL")
    wc.add_argument("--json", required=True, type=Path, nargs="+", help="subset JSON files")
    wc.add_argument(
        "--audio-dir", required=True, type=Path, nargs="+", help="one per --json, or one for all"
    )
    wc.add_argument("--out", required=True, type=Path)
    wc.add_argument("--audio-pattern", default="{basename}", help="from {id} and {basename}")
    wc.add_argument("--split", default=None)

    js = sub.add_parser(
        "jsonl",
        help="validate a JSONL manifest; write the usable clips (decodes every file: leaves out "
        "missing, unreadable, empty, silent, NaN and too-short clips)",
    )
    js.add_argument("--manifest", required=True, type=Path)
    js.add_argument("--out", required=True, type=Path)
    js.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_SECONDS,
        help="shorter clips are left out (default: %(default)s, as `siren tokenize` and the "
        "DataModule skip them)",
    )
    js.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only the clips whose attribute KEY is VALUE (repeatable: all must hold), "
        "e.g. --where source=tone for a one-source fine-tuning set",
    )

    sc = sub.add_parser("synthcaps", help="generate the embedded SynthCaps set")
    sc.add_argument("--out", required=True, type=Path)
    sc.add_argument("--train", type=int, default=2400)
    sc.add_argument("--val", type=int, default=200)
    sc.add_argument("--test", type=int, default=400)
    sc.add_argument("--min-seconds", type=float, default=1.0)
    sc.add_argument("--max-seconds", type=float, default=6.0)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument(
        "--background",
        type=float,
        default=0.003,
        help="RMS of the white-noise floor relative to each clip's peak (0: digital silence "
        "between events, for a codec that decodes silence as silence: experiments/codec_tiny_clean.yaml)",
    )
    sc.add_argument(
        "--render-envelope",
        default=None,
        help="render every clip with this envelope (steady, fade_in, fade_out) while its "
        "attributes and captions keep the stated one: a level-hiding copy of the same clips "
        "for PretrainModule(history_cache)",
    )
    sc.add_argument("--workers", type=int, default=None)
    sc.add_argument("--force", action="store_true", help="regenerate even if the set exists")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.source == "audiocaps":
            clips = import_audiocaps(
                args.csv,
                args.audio_dir,
                audio_pattern=args.audio_pattern,
                id_field=args.id_field,
                split=args.split,
            )
            _write(clips, args.out, f"audiocaps:{args.csv}")
        elif args.source == "wavcaps":
            dirs = (
                args.audio_dir
                if len(args.audio_dir) == len(args.json)
                else args.audio_dir * len(args.json)
            )
            if len(dirs) != len(args.json):
                raise SystemExit("siren prepare wavcaps: give one --audio-dir, or one per --json")
            clips = []
            for path, audio_dir in zip(args.json, dirs, strict=True):
                clips += import_wavcaps(
                    path, audio_dir, audio_pattern=args.audio_pattern, split=args.split
                )
            _write(clips, args.out, "wavcaps:" + ",".join(map(str, args.json)))
        elif args.source == "jsonl":
            _write(
                select_clips(read_manifest(args.manifest), args.where),
                args.out,
                f"jsonl:{args.manifest}",
                full=True,
                min_seconds=args.min_seconds,
            )
        else:
            return _synthcaps(args)
    except ManifestError as err:
        print(f"siren prepare: {err}", file=sys.stderr)
        return 2
    return 0


def _synthcaps(args: argparse.Namespace) -> int:
    from siren_lightning.data.synthcaps import SynthCapsConfig, generate

    cfg = SynthCapsConfig(
        train=args.train,
        val=args.val,
        test=args.test,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        seed=args.seed,
        background=args.background,
        render_envelope=args.render_envelope,
    )
    stamp = args.out / "config.json"
    # A set made before render_envelope existed keeps its stamp (no needless regeneration).
    fields = {k: v for k, v in cfg.__dict__.items() if not (k == "render_envelope" and v is None)}
    wanted = json.dumps(fields, sort_keys=True)
    done = all((args.out / f"{s}.jsonl").is_file() for s in ("train", "val", "test"))
    if done and stamp.is_file() and stamp.read_text() == wanted and not args.force:
        print(f"SynthCaps already at {args.out} (same config); --force regenerates it")
        return 0
    t0 = time.time()
    paths = generate(args.out, cfg, workers=args.workers)
    stamp.write_text(wanted)
    counts = {split: len(p.read_text().splitlines()) for split, p in paths.items()}
    print(f"SynthCaps: {counts} clips in {time.time() - t0:.1f} s -> {args.out}")
    return 0
