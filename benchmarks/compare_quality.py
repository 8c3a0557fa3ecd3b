"""The miniature replication: Siren vs the delay-pattern baseline at equal parameters and data.

Both LMs are trained by the same `PretrainModule` on the same SynthCaps code cache, with the same
seed (so the same batches in the same order), steps, crop, optimiser and caption dropout; only
`network` differs (read from `experiments/siren_tiny.yaml` and `experiments/baseline_tiny.yaml`).
Then, for each:
- per-codebook teacher-forced accuracy and cross-entropy on the val split (held-out clips of seen
  attribute combinations) and on the test split (unseen combinations);
- generation for held-out test captions (KV cache, CFG, top-k, fixed seed), decoded by the codec:
  SynthCaps attribute adherence measured by signal processing (`measure_attributes`), and, when the
  metrics stage is installed, CLAP score (`tiny-clap-eval`) and FD with the `tiny` preset;
- a codec-ceiling row: the same metrics on the reference clips resynthesized by the codec.

    PYTHONPATH=src python benchmarks/compare_quality.py --codec assets/codec_tiny \\
        --data data/synthcaps --out runs/compare_tiny --steps 1500

Generation runs at every (guidance scale, temperature) pair given, with `--gen-seeds` sampling
seeds each (metrics averaged, spreads recorded), and prints each model at its own best setting:
the two models' best settings differ (RESULTS.md, session 4), so one shared setting favours one
of them. E.g. `--cfg-scales 1 2 3 5 --temperatures 0.85 1 --gen-seeds 3`.

Code caches are written once into `<out>/codes/{train,val,test}` (resumable). Prints a table and
writes `<out>/compare.json`; each trained LM is exported to `<out>/<model>/export` (`siren export`
format: `rvq_analysis.py --model` reads the baseline's for paper Fig. 2b). While no trained codec
exists, `--codec kmeans-spectral` (see `bench_codecs.py`) gives codes with real data structure
for the LM comparison; its decoder is untrained, so its audio metrics are not quality figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import soundfile as sf
import torch
import yaml

from bench_codecs import build_codec
from siren_lightning.data.datamodule import SirenDataModule
from siren_lightning.data.manifest import read_manifest, write_manifest
from siren_lightning.data.synthcaps import attribute_agreement, measure_attributes
from siren_lightning.export import export_checkpoint
from siren_lightning.models.siren import count_parameters
from siren_lightning.stages.chassis import network_from_spec
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text.encoder import TextEncoder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "siren": ROOT / "experiments" / "siren_tiny.yaml",
    "baseline": ROOT / "experiments" / "baseline_tiny.yaml",
}


def code_caches(
    codec: Any, encoder: TextEncoder, data: Path, out: Path, limit: int | None
) -> dict[str, Path]:
    """Tokenize the SynthCaps splits once (with MiniLM caption states) into out/codes/<split>.

    Args:
        limit: use only the first `limit` clips of each split (a manifest subset under out/).
    """
    from siren_lightning.codec.tokenize import tokenize_manifest

    caches = {}
    for split in ("train", "val", "test"):
        manifest = data / f"{split}.jsonl"
        if limit is not None:
            subset = out / "manifests" / f"{split}.jsonl"
            write_manifest(subset, read_manifest(manifest)[:limit])
            manifest = subset
        caches[split] = out / "codes" / split
        tokenize_manifest(
            manifest,
            codec,
            caches[split],
            text_encoder=encoder,
            text_encoder_name="minilm",
            progress=False,
        )
    return caches


def build_module(name: str, codec: Any, encoder: TextEncoder, steps: int) -> PretrainModule:
    """The network and optimiser settings of the experiment YAML, with the codec's table."""
    config = yaml.safe_load(CONFIGS[name].read_text())["model"]["init_args"]
    network = network_from_spec(config["network"])  # as `siren fit` builds it
    with torch.no_grad():
        network.set_codebook_table(codec.codebook_table().detach().float())
    return PretrainModule(
        network,
        text_encoder=encoder,
        codec=codec,
        optimizer=config.get("optimizer") or {},
        warmup_steps=min(config.get("warmup_steps", 100), max(1, steps // 10)),
        total_steps=steps,
        caption_dropout=config.get("caption_dropout", 0.1),
    )


def teacher_forced(module: PretrainModule, data: SirenDataModule, split: str) -> dict[str, float]:
    """Per-codebook accuracy / CE over a split's full clips (the module's validation step)."""
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    (metrics,) = trainer.validate(module, dataloaders=loader, verbose=False)
    return {k.replace("val/", f"{split}/"): float(v) for k, v in metrics.items()}


@torch.no_grad()
def write_generations(
    module: PretrainModule,
    codec: Any,
    clips: list,
    folder: Path,
    seconds: float,
    seed: int,
    sampling: dict[str, Any],
) -> float:
    """Generate one clip per held-out caption, named by the reference clip's id; return seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * codec.sample_rate / codec.hop_length)
    start = time.perf_counter()
    for i in range(0, len(clips), 8):
        batch = clips[i : i + 8]
        codes = module.sample_codes(
            [c.captions[0] for c in batch], frames, seed=seed + i, **sampling
        )
        audio = codec.decode(codes).float()  # [B, 1, N]
        for clip, wav in zip(batch, audio):
            sf.write(str(folder / f"{clip.id}.wav"), wav[0].numpy(), codec.sample_rate)
    return time.perf_counter() - start


@torch.no_grad()
def write_resynthesis(codec: Any, clips: list, folder: Path, seconds: float) -> None:
    """The codec ceiling: reference clips (cropped to `seconds`) encoded and decoded."""
    from siren_lightning.data.audio import load_audio

    folder.mkdir(parents=True, exist_ok=True)
    n = round(seconds * codec.sample_rate)
    for clip in clips:
        audio = load_audio(clip.audio, codec.sample_rate)[:n]
        out = codec.decode(codec.encode(audio[None, None]))[0, 0, : audio.numel()]
        sf.write(str(folder / f"{clip.id}.wav"), out.numpy(), codec.sample_rate)


def adherence(clips: list, folder: Path) -> dict[str, float]:
    """Fraction of generated clips whose measured attributes match the caption's stated ones.

    Only the attributes `attribute_agreement` judges (pitch band, count, envelope; the source is
    not measured from audio) count; "all" is the fraction matching on every one of them.
    """
    hits: dict[str, int] = {}
    for clip in clips:
        audio, sr = sf.read(str(folder / f"{clip.id}.wav"), dtype="float32")
        agree = attribute_agreement(measure_attributes(audio, sr), clip.attributes)
        for a, ok in agree.items():
            hits[a] = hits.get(a, 0) + bool(ok)
    out = {f"adherence/{a}": n / len(clips) for a, n in hits.items()}
    judged = [v for k, v in out.items() if k != "adherence/all"]
    out["adherence/mean"] = sum(judged) / len(judged)
    return out


def audio_metrics(clips: list, folder: Path, tiny_clap: str | None) -> dict[str, float]:
    """CLAP score and FD with the `tiny` preset, if the metrics stage is installed."""
    try:
        from siren_lightning.metrics.protocol import build_evaluator
    except ImportError:
        return {}
    evaluator = build_evaluator("tiny", tiny_clap=tiny_clap)
    generated = {c.id: folder / f"{c.id}.wav" for c in clips}
    reference = {c.id: Path(c.audio) for c in clips}
    captions = {c.id: c.captions[0] for c in clips}
    results = evaluator.evaluate(generated, reference, captions)
    # Metrics the preset cannot compute (FAD offline, IS on < 10 clips) are None, with a reason.
    return {f"tiny/{k}": float(v) for k, v in results["metrics"].items() if v is not None}


def mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the sampling seeds (and its spread, max - min, when several)."""
    out = {}
    for key in per_seed[0]:
        values = [m[key] for m in per_seed if key in m]
        out[key] = sum(values) / len(values)
        if len(values) > 1:
            out[f"{key}_spread"] = max(values) - min(values)
    return out


def print_sweep(rows: dict[str, dict[str, Any]], models: list[str], seeds: int) -> None:
    """Every model's generation metrics at every setting, then each model at its best."""
    keys = ("tiny/clap_score", "tiny/fd", "tiny/kl", "tiny/is_mean", "adherence/mean")
    print(f"\ngeneration per setting (means over {seeds} sampling seed(s)):")
    print("| model | setting | CLAP | FD | KL | IS | adherence |")
    print("|---|---|---|---|---|---|---|")
    for name in models:
        for setting, metrics in rows[name]["generation"].items():
            cells = " | ".join("-" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in keys)
            print(f"| {name} | {setting} | {cells} |")
    print("\neach model at its best setting (higher CLAP / IS / adherence, lower FD / KL):")
    for name in models:
        generation = rows[name]["generation"]
        best = []
        labels = ("CLAP", "FD", "KL", "IS", "adherence")
        for key, label, sign in zip(keys, labels, (1, -1, -1, 1, 1), strict=True):
            scored = [(sign * m[key], s) for s, m in generation.items() if m.get(key) is not None]
            if scored:
                value, setting = max(scored)
                best.append(f"{label} {sign * value:.3f} ({setting})")
        print(f"  {name}: " + ", ".join(best))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--codec", required=True, help="load_codec spec, kmeans-spectral or random-spectral"
    )
    parser.add_argument("--data", required=True, help="SynthCaps folder ({train,val,test}.jsonl)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="+", default=["siren", "baseline"], choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop-seconds", type=float, default=6.0)
    parser.add_argument("--eval-clips", type=int, default=64, help="held-out captions generated")
    parser.add_argument("--gen-seconds", type=float, default=4.0)
    parser.add_argument(
        "--cfg-scale",
        "--cfg-scales",
        dest="cfg_scales",
        type=float,
        nargs="+",
        default=[3.0],
        help="guidance scales to generate with (a sweep when several)",
    )
    parser.add_argument("--top-k", type=int, default=250)
    parser.add_argument(
        "--temperature",
        "--temperatures",
        dest="temperatures",
        type=float,
        nargs="+",
        default=[1.0],
        help="sampling temperatures to generate with (a sweep when several)",
    )
    parser.add_argument(
        "--gen-seeds", type=int, default=1, help="sampling seeds per setting (metrics averaged)"
    )
    parser.add_argument("--tiny-clap", help="tiny-clap-eval checkpoint (metrics stage default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--clips", type=int, help="use only the first N clips of each split")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)

    codec, codec_desc = build_codec(args.codec, str(data / "train.jsonl"))
    encoder = TextEncoder("minilm")
    started = time.perf_counter()
    caches = code_caches(codec, encoder, data, out, args.clips)
    tokenize_s = time.perf_counter() - started
    test_clips = read_manifest(data / "test.jsonl")[: args.eval_clips]
    # Every (guidance scale, temperature) pair: the models' best settings differ, so a fair
    # comparison sweeps both and compares each model at its own best (RESULTS.md, session 4).
    settings = {
        f"cfg{c:g}_t{t:g}": {"temperature": t, "top_k": args.top_k, "cfg_scale": c}
        for c in args.cfg_scales
        for t in args.temperatures
    }
    rows: dict[str, dict[str, Any]] = {}

    if not args.skip_generation:
        ceiling = out / "codec_resynthesis"
        write_resynthesis(codec, test_clips, ceiling, args.gen_seconds)
        rows["codec ceiling"] = {
            **adherence(test_clips, ceiling),
            **audio_metrics(test_clips, ceiling, args.tiny_clap),
        }

    for name in args.models:
        L.seed_everything(args.seed, verbose=False)
        module = build_module(name, codec, encoder, args.steps)
        if args.codec not in ("random-spectral", "kmeans-spectral"):
            module.codec_spec = args.codec  # recorded in the export: `siren generate` finds it
        datamodule = SirenDataModule(
            mode="codes",
            train_cache=str(caches["train"]),
            val_cache=str(caches["val"]),
            test_cache=str(caches["test"]),
            sample_rate=codec.sample_rate,
            hop_length=codec.hop_length,
            crop_seconds=args.crop_seconds,
            batch_size=args.batch,
            codec_sha256=codec.sha256(),
        )
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=args.steps,
            limit_val_batches=0,
            gradient_clip_val=1.0,
            logger=L.pytorch.loggers.CSVLogger(out, name=name),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=10,
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        train_s = time.perf_counter() - start
        checkpoint = out / name / "last.ckpt"
        trainer.save_checkpoint(checkpoint, weights_only=True)
        export_checkpoint(checkpoint, out / name / "export")
        checkpoint.unlink()
        row: dict[str, Any] = {
            "params": count_parameters(module.network),
            "train_s": train_s,
            "train/loss_last": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        }
        datamodule.setup("test")
        row |= teacher_forced(module, datamodule, "val")
        row |= teacher_forced(module, datamodule, "test")
        if not args.skip_generation:
            row["generation"] = {}
            for setting, sampling in settings.items():
                per_seed = []
                for k in range(args.gen_seeds):
                    seed = args.seed + 1000 * k
                    folder = out / name / "samples" / f"{setting}_s{seed}"
                    seconds = write_generations(
                        module, codec, test_clips, folder, args.gen_seconds, seed, sampling
                    )
                    per_seed.append(
                        {
                            "generate_s": seconds,
                            **adherence(test_clips, folder),
                            **audio_metrics(test_clips, folder, args.tiny_clap),
                        }
                    )
                row["generation"][setting] = mean_over_seeds(per_seed)
            # The first setting's metrics also at the top level (the summary table's columns).
            row |= next(iter(row["generation"].values()))
        rows[name] = row
        scalars = {k: round(v, 4) for k, v in row.items() if isinstance(v, float | int)}
        print(f"{name}: {json.dumps(scalars)}", flush=True)

    r = codec.n_codebooks
    summary = {
        "codec": codec_desc,
        "data": str(data),
        "steps": args.steps,
        "batch": args.batch,
        "crop_seconds": args.crop_seconds,
        "frames_trained_per_model": args.steps
        * args.batch
        * round(args.crop_seconds * codec.sample_rate / codec.hop_length),
        "eval_clips": len(test_clips),
        "gen_seconds": args.gen_seconds,
        "sampling": {"settings": settings, "seed": args.seed, "gen_seeds": args.gen_seeds},
        "tokenize_s": tokenize_s,
        "rows": rows,
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\ncodec: {codec_desc}; {args.steps} steps x batch {args.batch} x {args.crop_seconds} s")
    print(
        "| model | params | train s | val loss | test loss | test acc (mean) | adherence | "
        "CLAP (tiny) | FD (tiny) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        accs = [row.get(f"test/acc_cb{q:02d}") for q in range(r)]
        mean_acc = sum(accs) / r if all(a is not None for a in accs) else None

        def fmt(value: Any, spec: str = ".3f") -> str:
            return "-" if value is None else format(value, spec)

        print(
            f"| {name} | {fmt(row.get('params'), ',')} | {fmt(row.get('train_s'), '.0f')} | "
            f"{fmt(row.get('val/loss'))} | {fmt(row.get('test/loss'))} | {fmt(mean_acc)} | "
            f"{fmt(row.get('adherence/mean'))} | {fmt(row.get('tiny/clap_score'), '.2f')} | "
            f"{fmt(row.get('tiny/fd'), '.2f')} |"
        )
    print("\nper-codebook test accuracy (teacher forcing):")
    print("| model | " + " | ".join(f"cb{q:02d}" for q in range(r)) + " |")
    print("|---|" + "---|" * r)
    for name in args.models:
        accs = [rows[name].get(f"test/acc_cb{q:02d}", float("nan")) for q in range(r)]
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    if not args.skip_generation and len(settings) * args.gen_seeds > 1:
        print_sweep(rows, args.models, args.gen_seeds)
    print(f"wrote {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
