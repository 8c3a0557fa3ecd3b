"""Infilling seams on the reference tiny models (issue 18, item 2).

For held-out SynthCaps test clips (at least 3 s long) it regenerates seconds [1, 2) of each clip
with its own first caption, a few seeds each, two ways through `editing.infill`:
- naive continuation: one candidate from the audio before the span, the clip's audio after the
  span pasted back unread (candidates 1);
- best of N: N candidates, the one under which the model finds the clip's true audio after the
  span most likely (teacher-forced log-probability) kept.
The seam measure at each boundary (1 s and 2 s): `editing.seam_jump`, the L1 distance between
the mean log-mel spectra of the 0.2 s before and after it, in the edited clip minus the same in
the original clip's codec resynthesis (the edited clip is a codec decoding too). 0 means the
boundary changes the spectrum as much as the original does there; larger means an audible seam.
Mean ± standard error over clips x seeds, per model, signed and absolute.

    PYTHONPATH=src python benchmarks/infill_seams.py   # CPU, 1 thread, about 10 min
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from siren_lightning.editing import encode_prompt, infill, seam_jump
from siren_lightning.generate import load_generation_stack
from siren_lightning.models.sampling import DEFAULT_SAMPLING, encode_captions

ROOT = Path(__file__).resolve().parents[1]


def mean_se(values: list[float]) -> str:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{m:.3f} ± {se:.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", default=str(ROOT / "data/synthcaps/test.jsonl"))
    p.add_argument(
        "--models",
        nargs="+",
        default=[
            str(ROOT / "assets/siren_tiny_reference"),
            str(ROOT / "assets/delay_tiny_reference"),
        ],
    )
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--span", type=float, nargs=2, default=[1.0, 2.0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = Path(args.manifest)
    clips = [json.loads(line) for line in manifest.read_text().splitlines()]
    clips = [c for c in clips if c["duration"] >= args.span[1] + 1.0][: args.clips]
    print(
        f"{len(clips)} clips of {manifest} (>= {args.span[1] + 1:g} s), span {args.span}, "
        f"{args.seeds} seeds, best of {args.candidates} vs naive; sampling {DEFAULT_SAMPLING}"
    )
    rows = []
    for model_dir in args.models:
        model, codec, encoder = load_generation_stack(model_dir)
        hop = codec.hop_length / codec.sample_rate
        start, end = round(args.span[0] / hop), round(args.span[1] / hop)
        seams = {"naive": {"A": [], "B": []}, "best": {"A": [], "B": []}}
        spent = {"naive": 0.0, "best": 0.0}
        for clip in clips:
            codes = encode_prompt(codec, manifest.parent / clip["audio"])  # [1, r, T]
            original = codec.decode(codes)[0, 0]
            text = encode_captions(encoder, clip["captions"][:1])
            reference = [seam_jump(original, codec.sample_rate, s) for s in args.span]
            for seed in range(args.seeds):
                for way, n in (("naive", 1), ("best", args.candidates)):
                    generator = torch.Generator().manual_seed(seed)
                    t0 = time.process_time()
                    result = infill(
                        model,
                        codes=codes,
                        start=start,
                        end=end,
                        candidates=n,
                        generator=generator,
                        **text,
                        **DEFAULT_SAMPLING,
                    )
                    spent[way] += time.process_time() - t0
                    audio = codec.decode(result.codes)[0, 0]
                    for key, s, ref in zip("AB", args.span, reference):
                        seams[way][key].append(seam_jump(audio, codec.sample_rate, s) - ref)
        name = Path(model_dir).name
        for way in ("naive", "best"):
            label = "naive continuation" if way == "naive" else f"best of {args.candidates}"
            cells = [mean_se(seams[way][k]) for k in "AB"]
            cells += [mean_se([abs(x) for x in seams[way][k]]) for k in "AB"]
            rows.append(
                f"| {name} | {label} | {' | '.join(cells)} "
                f"| {spent[way] / (len(clips) * args.seeds):.1f} |"
            )
        print(f"done {name}", flush=True)
    print(
        "| model | method | excess at A | excess at B | abs. excess at A | abs. excess at B "
        "| CPU s per edit |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
