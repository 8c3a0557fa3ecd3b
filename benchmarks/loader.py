"""Training-loader throughput of the code cache: the hand-made loader vs litdata, side by side.

"before" is the project at `--before-rev` (safetensors shards + `ResumableSampler`), run from a
`git archive` of that revision; "after" is this tree (litdata `StreamingDataset` /
`StreamingDataLoader`). Both build `SirenDataModule(mode="codes", bucket_by_length=True)` the way
`siren fit` does and take `--batches` collated batches (what a training step receives), each in its
own process, alternating before/after for `--rounds` rounds. Caches:
- SynthCaps: `--synthcaps` (an old-format cache, read only) for before, and its conversion
  (`siren tokenize --convert`, into the scratch folder) for after: the same clips;
- synthetic: `--clips` random clips of `--codebooks` codebooks and 20..`--max-frames` frames
  (tiny codes, so the cache is small on disk), written in both formats; deleted at the end.

Figures: clips/s and real (unpadded) frames/s per second of the process's CPU time (one thread,
no loader workers: on a shared machine wall time mostly measures the other jobs), and the setup
time (data module setup + first batch). Medians over the rounds; the ratio is after / before.

    PYTHONPATH=src python benchmarks/loader.py --synthcaps data/synthcaps/codes/train \
        [--before-rev 67d2808] [--clips 100000] [--batches 300] [--rounds 3] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One measurement, run in a child process with PYTHONPATH at the tree being measured.
CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from siren_lightning.data.datamodule import SirenDataModule
cache, sr, hop, crop, batch, batches = sys.argv[1:7]
t0 = time.process_time()
dm = SirenDataModule(mode="codes", train_cache=cache, sample_rate=int(sr), hop_length=int(hop),
                     crop_seconds=float(crop), batch_size=int(batch), bucket_by_length=True, seed=0)
dm.setup("fit")
it = iter(dm.train_dataloader())
first = next(it)
setup = time.process_time() - t0
clips = frames = padded = 0
t1 = time.process_time()
for _ in range(int(batches)):
    try:
        b = next(it)
    except StopIteration:
        it = iter(dm.train_dataloader())
        b = next(it)
    clips += b["codes"].shape[0]
    frames += int(b["mask"].sum())
    padded += b["mask"].numel()
busy = time.process_time() - t1
print(json.dumps({"setup_s": setup, "cpu_s": busy, "clips": clips, "frames": frames,
                  "padded": padded}))
"""

# Writes a synthetic cache with the tree on PYTHONPATH: "old" (safetensors, the old writer) or
# "new" (litdata parts). Same clips for both (seeded).
WRITER = r"""
import json, sys
import torch
kind, root, n, r, max_frames, shard = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
from pathlib import Path
root = Path(root); root.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)
lengths = torch.randint(20, max_frames + 1, (n,), generator=g).tolist()
def clip(i):
    return {"id": f"s{i:06d}", "captions": [f"synthetic clip {i}"],
            "codes": torch.randint(1024, (r, lengths[i]), generator=g), "samples": lengths[i] * 320}
meta = {"codec_sha256": "synthetic", "sample_rate": 16000, "hop_length": 320,
        "n_codebooks": r, "codebook_size": 1024}
if kind == "old":
    from siren_lightning.data.code_cache import FORMAT, shard_name, write_index, write_shard
    shards = []
    for s in range(0, n, shard):
        part = [clip(i) for i in range(s, min(n, s + shard))]
        write_shard(root / shard_name(s // shard), part, "synthetic")
        shards.append({"file": shard_name(s // shard), "num_clips": len(part)})
    write_index(root, {"format": FORMAT, **meta, "num_clips": n, "shards": shards})
else:
    from siren_lightning.data.code_cache import finish_cache, read_part, write_part
    parts = []
    for s in range(0, n, shard):
        write_part(root, s // shard, [clip(i) for i in range(s, min(n, s + shard))],
                   {"codec_sha256": "synthetic"})
        parts.append(read_part(root, s // shard))
    finish_cache(root, parts, meta)
"""


def run_child(src: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"child failed ({src}):\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthcaps", type=Path, default=REPO / "data/synthcaps/codes/train")
    parser.add_argument("--before-rev", default="67d2808", help="revision of the old loader")
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--codebooks", type=int, default=2)
    parser.add_argument("--max-frames", type=int, default=150)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="siren_loader_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    before_src = scratch / "before"
    if not (before_src / "src").is_dir():
        before_src.mkdir(exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before_rev, "src"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive, check=True)
    src = {"before": before_src / "src", "after": REPO / "src"}

    caches: dict[str, dict[str, Path]] = {}
    settings: dict[str, tuple] = {}
    if args.synthcaps and (args.synthcaps / "index.json").is_file():
        converted = scratch / "synthcaps_litdata"
        if not (converted / "index.json").is_file():
            shutil.rmtree(converted, ignore_errors=True)
            code = "import sys; from siren_lightning.codec.tokenize import main; "
            code += "sys.exit(main(['--convert', sys.argv[1], '--out', sys.argv[2]]))"
            run_child(src["after"], code, args.synthcaps, converted)
        caches["SynthCaps"] = {"before": args.synthcaps, "after": converted}
        index = json.loads((args.synthcaps / "index.json").read_text())
        settings["SynthCaps"] = (index["sample_rate"], index["hop_length"], 6.0)
    synth = f"synthetic {args.clips // 1000}k"
    caches[synth] = {"before": scratch / "synthetic_old", "after": scratch / "synthetic_new"}
    for kind, when in (("old", "before"), ("new", "after")):
        if not (caches[synth][when] / "index.json").is_file():
            shutil.rmtree(caches[synth][when], ignore_errors=True)
            run_child(
                src[when],
                WRITER,
                kind,
                caches[synth][when],
                args.clips,
                args.codebooks,
                args.max_frames,
                256,
            )
    settings[synth] = (16000, 320, 2.0)  # 100-frame crops of 20..max-frames clips

    results: dict[str, dict[str, list[dict]]] = {
        name: {"before": [], "after": []} for name in caches
    }
    for _ in range(args.rounds):
        for name, pair in caches.items():
            for when in ("before", "after"):
                sr, hop, crop = settings[name]
                line = run_child(
                    src[when], CHILD, pair[when], sr, hop, crop, args.batch, args.batches
                )
                results[name][when].append(json.loads(line))

    print(
        f"\nLoader throughput, {args.batches} batches of {args.batch}, bucket_by_length, "
        f"median of {args.rounds} rounds (CPU time, one thread, no workers)\n"
    )
    print("| cache | disk before / after | loader | clips/s | frames/s | padding | setup s |")
    print("|---|---|---|---|---|---|---|")
    table = {}
    for name, pair in caches.items():
        disk = f"{du(pair['before']) / 1e6:.1f} / {du(pair['after']) / 1e6:.1f} MB"
        row = {}
        for when in ("before", "after"):
            runs = results[name][when]
            row[when] = {
                "clips_s": statistics.median(r["clips"] / r["cpu_s"] for r in runs),
                "frames_s": statistics.median(r["frames"] / r["cpu_s"] for r in runs),
                "padding": statistics.median(1 - r["frames"] / r["padded"] for r in runs),
                "setup_s": statistics.median(r["setup_s"] for r in runs),
            }
            v = row[when]
            print(
                f"| {name} | {disk} | {when} | {v['clips_s']:,.0f} | {v['frames_s']:,.0f} | "
                f"{v['padding']:.1%} | {v['setup_s']:.2f} |"
            )
        b, a = row["before"], row["after"]
        print(
            f"| {name} | | after / before | {a['clips_s'] / b['clips_s']:.2f}x | "
            f"{a['frames_s'] / b['frames_s']:.2f}x | | {a['setup_s'] / b['setup_s']:.2f}x |"
        )
        table[name] = row
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"scratch": str(scratch)},
                    "results": results,
                    "table": table,
                },
                default=str,
            )
        )
    for pair in caches.values():  # the synthetic caches and the conversion are scratch
        for path in pair.values():
            if scratch in path.parents:
                shutil.rmtree(path, ignore_errors=True)
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
