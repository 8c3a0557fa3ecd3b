"""In-loop and test-time evaluation with the pinned protocol (DESIGN.md section 7).

`EvaluationCallback` generates audio with the LightningModule (`sample_audio`: `sample_codes`
decoded by its codec, as `AudioSamplesCallback` does) and scores it with a protocol preset against the
reference audio of the same clips:

- during `fit`, every N validations, for a fixed set of validation clips: logs `val/fd`,
  `val/clap_score` (and any other metric named in `log_metrics`), a few clips and their
  spectrograms; the codec ceiling of those clips is logged once as `val_ceiling/*`;
- during `test` (`siren test --config ...`), for every clip of the test loader: writes
  `<out_dir>/results.json` (model metrics with bootstrap intervals, the codec-ceiling and
  ground-truth rows and the full protocol record), `<out_dir>/per_clip.jsonl` (one row of scores
  per clip), the generated WAVs (`<out_dir>/generated/<id>.wav`) and their
  `generations.jsonl`, and logs `test/fd`, `test/clap_score`, ...

Each generated clip is as long as its reference (frames = ceil(reference samples / hop), cropped
to the reference's length), unless `seconds` fixes one length for all. Reference audio comes from
a JSONL manifest: the `val_manifest` / `test_manifest` given here, else the DataModule's, else the
manifest recorded in the split's code cache index.

Letters: B clips, N samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import soundfile as sf
import torch
from torch import Tensor

from siren_lightning.callbacks.media import log_clips, tensorboard_writer
from siren_lightning.codec.base import seconds_to_samples
from siren_lightning.data.manifest import check_file_ids
from siren_lightning.models.sampling import resolve_sampling

# Seed offset between the generations of one clip when `test_seeds` > 1 (a prime far above
# any batch-index seed, so no two generations share a seed).
SEED_STRIDE = 1_000_003


def reference_clips(
    trainer: L.Trainer, split: str, path: str | None = None, owner: str = "evaluation"
) -> dict[str, Any]:
    """clip id -> `Clip` of a split's reference manifest: `path`, else the DataModule's
    `<split>_manifest`, else the manifest recorded in the split's code cache index."""
    from siren_lightning.data.code_cache import CodeCacheError, is_remote, read_index
    from siren_lightning.data.manifest import read_manifest

    datamodule = getattr(trainer, "datamodule", None)
    hparams = getattr(datamodule, "hparams", {}) or {}
    if path is None:
        path = hparams.get(f"{split}_manifest")
    cache = hparams.get(f"{split}_cache")
    if path is None and cache and not is_remote(cache):
        try:
            recorded = read_index(cache).get("manifest")
        except CodeCacheError:
            recorded = None
        if recorded and Path(recorded).is_file():
            path = recorded
    if path is None:
        raise ValueError(
            f"{owner}: no {split} reference audio; set `{split}_manifest` on the callback or the "
            "DataModule"
        )
    return {clip.id: clip for clip in read_manifest(path) if clip.captions}


class EvaluationCallback(L.Callback):
    """FD, CLAP score (and FAD, KL, IS as the preset gives them) of generated audio.

    Args:
        preset: evaluation protocol preset, `tiny` (offline, `tiny-clap-eval`),
            `audioldm_eval` (PANNs, VGGish, LAION CLAP) or `stable_audio_metrics` (OpenL3,
            PaSST, LAION CLAP 630k-fusion); the last two need their weights present.
        backbones: keyword arguments of `metrics.protocol.build_evaluator` (`tiny_clap`,
            `panns_weights`, `vggish_weights`, `clap_checkpoint`, `cache_dir`,
            `openl3_weights`, `passt_weights`).
        val_manifest / test_manifest: reference clips (JSONL); see the module docstring.
        num_clips: validation clips scored in the loop (the first ones of the manifest).
        every_n_validations: evaluate at every N-th validation (sanity checks do not count).
        seconds: one fixed length for every generated clip; None: each reference's length.
        seed: generation seed (the same at every evaluation, so curves are comparable).
        sampling: `temperature`, `top_k`, `top_p`, `cfg_scale` (default: `siren generate`'s).
        batch_size: captions generated together.
        log_audio: how many generated clips to log as audio at each evaluation.
        log_metrics: metrics logged in the loop (`fd`, `clap_score`, `kl`, `is_mean`, `fad`...).
        codec_ceiling: also score the references resynthesized through the codec.
        out_dir: where `siren test` writes results.json and the generated audio
            (default `<trainer.default_root_dir>/test`).
        save_audio: write the generated test clips as WAVs.
        per_clip: write `<out_dir>/per_clip.jsonl`, one row of scores per test clip
            (`metrics.per_clip`; attribute adherence needs `save_audio`).
        test_seeds: generate every test clip with this many seeds (the batch's seed plus
            k x 1,000,003): the results give the seed mean, each seed's metrics and the seed
            spread; WAVs and per-clip rows are those of the first seed.
    """

    def __init__(
        self,
        preset: str = "tiny",
        backbones: dict[str, Any] | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        num_clips: int = 16,
        every_n_validations: int = 1,
        seconds: float | None = None,
        seed: int = 0,
        sampling: dict[str, Any] | None = None,
        batch_size: int = 8,
        log_audio: int = 4,
        log_metrics: list[str] | None = None,
        codec_ceiling: bool = True,
        out_dir: str | None = None,
        save_audio: bool = True,
        per_clip: bool = True,
        test_seeds: int = 1,
    ) -> None:
        from siren_lightning.metrics.protocol import get_preset

        for name, value in (
            ("num_clips", num_clips),
            ("every_n_validations", every_n_validations),
            ("batch_size", batch_size),
            ("test_seeds", test_seeds),
        ):
            if value < 1:
                raise ValueError(f"EvaluationCallback: {name} must be >= 1, got {value}")
        if seconds is not None and seconds <= 0:
            raise ValueError(f"EvaluationCallback: seconds must be positive, got {seconds}")
        self.protocol = get_preset(preset)
        self.backbones = dict(backbones or {})
        self.manifests = {"val": val_manifest, "test": test_manifest}
        self.num_clips = num_clips
        self.every = every_n_validations
        self.seconds = seconds
        self.seed = seed
        # The global defaults: the model in training has no export folder, no generation.json.
        self.sampling = resolve_sampling("EvaluationCallback: sampling", sampling).values
        self.batch_size = batch_size
        self.log_audio = log_audio
        self.log_metrics = list(log_metrics or ["fd", "clap_score"])
        self.codec_ceiling = codec_ceiling
        self.out_dir = out_dir
        self.save_audio = save_audio
        self.per_clip = per_clip
        self.test_seeds = test_seeds
        self.evaluator: Any = None  # built on first use (tests may set their own)
        self.validations = 0
        self.history: list[dict[str, Any]] = []  # {"step", "metrics"} of each in-loop evaluation
        self.results: dict[str, Any] | None = None  # the last test results
        self._val: dict[str, Any] | None = None
        self._test: dict[str, Any] = {}

    # Shared pieces.

    def _evaluator(self, device: torch.device) -> Any:
        if self.evaluator is None:
            from siren_lightning.metrics.protocol import build_evaluator

            self.evaluator = build_evaluator(self.protocol.name, **self.backbones)
        for backbone in (
            self.evaluator.fd_backbone,
            self.evaluator.fad_backbone,
            self.evaluator.clap_backbone,
            getattr(self.evaluator, "classifier_backbone", None),
        ):
            if backbone is not None:
                backbone.to(device)
        return self.evaluator

    def _clips(self, trainer: L.Trainer, split: str) -> dict[str, Any]:
        """clip id -> `Clip` of the split's reference manifest."""
        return reference_clips(trainer, split, self.manifests[split], type(self).__name__)

    def _samples(self, pl_module: L.LightningModule, path: Path) -> int:
        """The length a generated clip gets, in samples at the codec rate."""
        sr = pl_module.codec.sample_rate
        if self.seconds is not None:
            return seconds_to_samples(self.seconds, sr)
        info = sf.info(str(path))
        return max(1, math.ceil(info.frames * sr / info.samplerate))

    def _generate(
        self, pl_module: L.LightningModule, captions: list[str], lengths: list[int], seed: int
    ) -> list[Tensor]:
        """One waveform [N_i] per caption, N_i = lengths[i] samples at the codec rate."""
        hop = pl_module.codec.hop_length
        clip_frames = [max(1, math.ceil(n / hop)) for n in lengths]
        # Generated to the longest clip and cut; each clip is told its own length.
        sampling = {
            **self.sampling,
            "total_frames": torch.tensor(clip_frames, device=pl_module.device),
        }
        audio = pl_module.sample_audio(captions, max(clip_frames), seed, **sampling)  # [B, N]
        return [audio[i, :n] for i, n in enumerate(lengths)]

    def _ceiling_features(
        self, pl_module: L.LightningModule, files: dict[str, Path]
    ) -> dict[str, dict]:
        from siren_lightning.metrics.ceiling import resynthesize_files

        codec = pl_module.codec
        return self.evaluator.audio_features(resynthesize_files(codec, files), codec.sample_rate)

    def _describe_codec(self, pl_module: L.LightningModule) -> dict[str, Any]:
        from siren_lightning.metrics.ceiling import describe_codec

        return describe_codec(pl_module.codec, getattr(pl_module, "codec_spec", None))

    def _log(self, trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        """Writes to every logger and to `callback_metrics` (monitorable), from rank 0 only."""
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)

    # In-loop evaluation.

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.validations += 1
        if (self.validations - 1) % self.every or pl_module.codec is None:
            return
        evaluator = self._evaluator(pl_module.device)
        step = trainer.global_step
        if self._val is None:
            clips = list(self._clips(trainer, "val").values())[: self.num_clips]
            files = {c.id: Path(c.audio) for c in clips}
            self._val = {
                "captions": {c.id: c.captions[0] for c in clips},
                "lengths": {k: self._samples(pl_module, p) for k, p in files.items()},
                "reference": evaluator.features(files),
            }
            if self.codec_ceiling:
                ceiling = evaluator.score(
                    self._ceiling_features(pl_module, files),
                    self._val["reference"],
                    self._val["captions"],
                    resamples=0,  # in the loop: the values only
                )
                self._log(trainer, self._pick("val_ceiling", ceiling["metrics"]), step)
        val = self._val
        ids = sorted(val["captions"], key=lambda k: val["lengths"][k])  # similar lengths batch
        generated = {}
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            audio = self._generate(
                pl_module,
                [val["captions"][k] for k in batch],
                [val["lengths"][k] for k in batch],
                self.seed + start,
            )
            generated.update(zip(batch, audio, strict=True))
        sr = pl_module.codec.sample_rate
        feats = evaluator.audio_features(generated, sr)
        results = evaluator.score(feats, val["reference"], val["captions"], resamples=0)
        metrics = self._pick("val", results["metrics"])
        self._log(trainer, metrics, step)
        self.history.append({"step": step, "metrics": results["metrics"]})
        writer = tensorboard_writer(trainer)
        if writer is not None and self.log_audio > 0:
            shown = list(val["captions"])[: self.log_audio]
            clips = {f"{k}: {val['captions'][k][:50]}": generated[k] for k in shown}
            log_clips(writer, "eval", clips, sr, step)

    def _pick(self, prefix: str, metrics: dict[str, float | None]) -> dict[str, float]:
        return {
            f"{prefix}/{k}": float(metrics[k])
            for k in self.log_metrics
            if metrics.get(k) is not None
        }

    # Test-time evaluation.

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.codec is None:
            raise ValueError("EvaluationCallback: the module has no codec to decode audio with")
        clips = self._clips(trainer, "test")
        if self.save_audio:  # ids become file names under out_dir: refuse `../x` before any work
            check_file_ids(list(clips), "EvaluationCallback (test)")
        self._evaluator(pl_module.device)
        out = Path(self.out_dir or Path(trainer.default_root_dir) / "test")
        self._test = {
            "clips": clips,
            "out": out,
            "generated": {},
            "reference": {},
            "ceiling": {},
            "captions": {},
            "records": [],
            **{f"generated@{k}": {} for k in range(1, self.test_seeds)},
        }
        if self.save_audio:
            (out / "generated").mkdir(parents=True, exist_ok=True)

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        state, evaluator = self._test, self.evaluator
        ids, captions = list(batch["ids"]), list(batch["captions"])
        unknown = [k for k in ids if k not in state["clips"]]
        if unknown:
            raise ValueError(
                f"EvaluationCallback: test clips {unknown[:3]} are not in the reference manifest"
            )
        files = {k: Path(state["clips"][k].audio) for k in ids}
        lengths = [self._samples(pl_module, files[k]) for k in ids]
        seed = self.seed + batch_idx * trainer.world_size + trainer.global_rank
        audio = self._generate(pl_module, captions, lengths, seed)
        sr = pl_module.codec.sample_rate
        state["generated"] |= evaluator.audio_features(dict(zip(ids, audio, strict=True)), sr)
        for extra in range(1, self.test_seeds):  # the same clips with other seeds: the spread
            other = self._generate(pl_module, captions, lengths, seed + extra * SEED_STRIDE)
            state[f"generated@{extra}"] |= evaluator.audio_features(
                dict(zip(ids, other, strict=True)), sr
            )
        state["reference"] |= evaluator.features(files)
        state["captions"] |= dict(zip(ids, captions, strict=True))
        if self.codec_ceiling:
            state["ceiling"] |= self._ceiling_features(pl_module, files)
        for k, caption, clip in zip(ids, captions, audio, strict=True):
            record = {"id": k, "caption": caption, "seed": seed, "samples": clip.shape[-1]}
            if self.save_audio:
                path = state["out"] / "generated" / f"{k}.wav"
                sf.write(str(path), clip.clamp(-1, 1).numpy(), sr, subtype="PCM_16")
                record["path"] = str(path.resolve())
            state["records"].append({**record, "sample_rate": sr, **self.sampling})

    def _write_per_clip(self, state: dict[str, Any], path: Path) -> None:
        """One row per test clip (`metrics.per_clip`); adherence from the saved WAVs."""
        from siren_lightning.metrics.per_clip import per_clip_scores, write_jsonl

        clips = state["clips"]
        audio = {r["id"]: Path(r["path"]) for r in state["records"] if "path" in r}
        rows = per_clip_scores(
            self.evaluator,
            state["generated"],
            state["reference"],
            state["captions"],
            {k: clips[k].attributes for k in state["generated"] if k in clips},
            audio,
        )
        write_jsonl(rows, path)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from siren_lightning.metrics.protocol import write_results

        extra = tuple(f"generated@{k}" for k in range(1, self.test_seeds))
        keys = ("generated", "reference", "ceiling", "captions", "records", *extra)
        state = _gather(self._test, keys)
        evaluator = self.evaluator
        seeds = [state["generated"], *(state[k] for k in extra)]
        labels = [f"seed offset {k * SEED_STRIDE}" for k in range(self.test_seeds)]
        results = evaluator.score_seeds(seeds, state["reference"], state["captions"], None, labels)
        results["ground_truth"] = evaluator.ground_truth(state["reference"], state["captions"])
        if self.codec_ceiling:
            ceiling = evaluator.score(state["ceiling"], state["reference"], state["captions"])
            results["codec_ceiling"] = {
                **self._describe_codec(pl_module),
                "metrics": ceiling["metrics"],
                "intervals": ceiling.get("intervals", {}),
                "counts": ceiling["counts"],
                "unavailable": ceiling.get("unavailable", {}),
            }
        results["generation"] = {
            "checkpoint": trainer.ckpt_path,
            "model_class": type(getattr(pl_module, "network", pl_module)).__name__,
            "seed": self.seed,
            "test_seeds": self.test_seeds,
            "sampling": self.sampling,
            "length_rule": "each reference's length"
            if self.seconds is None
            else f"{self.seconds} s",
            "caption_rule": "the test loader's caption (the first caption of each clip)",
            "codec": self._describe_codec(pl_module),
        }
        self.results = results
        for key, value in results["metrics"].items():
            if value is not None:
                pl_module.log(f"test/{key}", value, rank_zero_only=True)
        if trainer.is_global_zero:
            out = state["out"]
            write_results(results, out / "results.json")
            if self.per_clip:
                self._write_per_clip(state, out / "per_clip.jsonl")
            if self.save_audio:
                with open(out / "generated" / "generations.jsonl", "w") as f:
                    for record in sorted(state["records"], key=lambda r: r["id"]):
                        f.write(json.dumps(record) + "\n")


def _gather(state: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Every process's per-clip entries merged (the same on every rank under DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return state
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {k: state[k] for k in keys})
    merged = dict(state)
    for k in keys:
        if isinstance(state[k], list):
            seen = {}
            for part in parts:
                seen |= {r["id"]: r for r in part[k]}  # a padded sampler repeats clips
            merged[k] = list(seen.values())
        else:
            merged[k] = {key: v for part in parts for key, v in part[k].items()}
    return merged
