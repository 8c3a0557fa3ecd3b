"""`SirenDataModule`: the one DataModule of all three stages.

`mode` picks the batch: "audio" (codec training), "codes" (Siren pretraining, read from code
caches written by `siren tokenize`: litdata chunked datasets, in a local folder or under an
object-storage URI) or "captions" (alignment rollouts and generation). Bad clips
are skipped with one logged line each and counted per split; a split whose skipped clips exceed
`max_skip_fraction` of it stops the run with a message naming them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from siren_lightning.data.audio import MIN_SECONDS, AudioError, audio_info
from siren_lightning.data.datasets import (
    AudioClipDataset,
    CaptionDataset,
    CodeClipDataset,
    collate_audio,
    collate_captions,
    collate_codes,
)
from siren_lightning.data.manifest import Clip, read_manifest
from siren_lightning.data.resumable import ResumableDataLoader, ResumableSampler, global_seed

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test", "predict"]
MODES = ("audio", "codes", "captions")


class TooManyBadClipsError(RuntimeError):
    """More clips of a split were unusable than the configured fraction allows."""


class SkipReport:
    """Unusable clips per split: {split: {clip id: reason}} against each split's size."""

    def __init__(self, max_fraction: float, min_seconds: float = MIN_SECONDS):
        self.max_fraction = max_fraction
        self.min_seconds = min_seconds
        self.total: dict[str, int] = {}
        self.skipped: dict[str, dict[str, str]] = defaultdict(dict)

    def add(self, split: str, clip_id: str, reason: str) -> None:
        self.skipped[split][clip_id] = reason
        total = self.total.get(split, 0)
        bad = len(self.skipped[split])
        if total and bad > self.max_fraction * total:
            examples = ", ".join(f"{k} ({v})" for k, v in list(self.skipped[split].items())[:5])
            raise TooManyBadClipsError(
                f"{bad} of {total} {split} clips are unusable, more than max_skip_fraction="
                f"{self.max_fraction:g} allows; first ones: {examples}. Fix or remove them "
                f"(`siren prepare jsonl --manifest IN --out OUT --min-seconds {self.min_seconds:g}` "
                "writes a manifest without the missing, unreadable, empty, silent, NaN and "
                "too-short clips), or raise max_skip_fraction."
            )

    def summary(self) -> str:
        parts = [
            f"{split}: {len(bad)} of {self.total.get(split, '?')} skipped"
            for split, bad in self.skipped.items()
            if bad
        ]
        return "; ".join(parts) if parts else "no clips skipped"


class SirenDataModule(L.LightningDataModule):
    """Serves audio, code or caption batches from JSONL manifests and code caches.

    Args:
        train_manifest / val_manifest / test_manifest / predict_manifest: JSONL manifests.
        mode: "audio", "codes" or "captions".
        train_cache / val_cache / test_cache: code caches (mode "codes"): folders, or URIs that
            litdata streams (s3://..., gs://..., azure://..., or `local:/path`, which copies
            chunks as from object storage; docs/data.md).
        stream_cache_dir: where litdata keeps the chunks of a remote cache (default: litdata's).
        codec_sha256: if set, caches written by another codec are refused.
        sample_rate: audio rate (mode "audio").
        hop_length: codec hop in samples; the crop must be a whole number of frames.
        crop_seconds: training crop (audio) or frame window (codes); shorter clips are padded.
        eval_crop_seconds: crop for val/test (default: crop_seconds).
        batch_size / eval_batch_size: per process.
        num_workers: DataLoader workers.
        min_seconds: shorter clips are skipped.
        max_skip_fraction: the largest fraction of a split that may be skipped.
        check_files: read every audio header at setup (finds missing files before training).
        seed: seeds the training order and each clip's crop and caption draw; default: the
            seed of `seed_everything` (PL_GLOBAL_SEED), else 0.
        bucket_by_length: codes mode: draw each training batch from clips of similar length
            (`data.streaming.bucket_order`), so little of a step is spent on padding.

    The training loader streams code caches through litdata (`data.streaming`: a
    `StreamingDataLoader` over a `StreamingDataset`) and reads manifests through a
    `ResumableDataLoader` (`data.resumable`); both shard over the processes under DDP and are
    restored mid-epoch from a checkpoint.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        predict_manifest: str | None = None,
        mode: Literal["audio", "codes", "captions"] = "audio",
        train_cache: str | None = None,
        val_cache: str | None = None,
        test_cache: str | None = None,
        codec_sha256: str | None = None,
        sample_rate: int = 16_000,
        hop_length: int = 320,
        crop_seconds: float = 6.0,
        eval_crop_seconds: float | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        min_seconds: float = MIN_SECONDS,
        max_skip_fraction: float = 0.01,
        check_files: bool = True,
        seed: int | None = None,
        bucket_by_length: bool = False,
        stream_cache_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("sample_rate", sample_rate),
            ("hop_length", hop_length),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}")
        if not 0.0 <= max_skip_fraction < 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1), got {max_skip_fraction}")
        self.crop_frames = self._frames(crop_seconds, "crop_seconds")
        self.eval_crop_frames = self._frames(
            crop_seconds if eval_crop_seconds is None else eval_crop_seconds, "eval_crop_seconds"
        )
        self.skips = SkipReport(max_skip_fraction, min_seconds)
        self.datasets: dict[str, Dataset] = {}

    def _frames(self, seconds: float, name: str) -> int:
        frames = seconds * self.hparams.sample_rate / self.hparams.hop_length
        if seconds <= 0 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(
                f"{name}={seconds} s is not a whole number of codec frames "
                f"(hop {self.hparams.hop_length} at {self.hparams.sample_rate} Hz = "
                f"{self.hparams.hop_length / self.hparams.sample_rate:g} s a frame)"
            )
        return int(round(frames))

    # ---------------------------------------------------------------------------------------

    def _clips(self, split: str, path: str) -> list[Clip]:
        clips = read_manifest(path)
        self.skips.total[split] = len(clips)
        if not (self.hparams.check_files and self.hparams.mode == "audio"):
            return clips
        good = []
        for clip in tqdm(
            clips, desc=f"checking {split} audio", unit="clip", disable=len(clips) < 2000
        ):
            try:
                audio_info(clip.audio)
            except AudioError as err:
                log.warning("skipping clip %s: %s", clip.id, err)
                self.skips.add(split, clip.id, err.reason)
                continue
            good.append(clip)
        return good

    def _codes(self, split: str, cache_path: str) -> Dataset:
        """The training stream (`CodeStream`) or an evaluation split's windows of a code cache."""
        from siren_lightning.data.code_cache import (
            CodeCache,
            CodeCacheError,
            check_codec,
            is_remote,
            read_index,
        )
        from siren_lightning.data.streaming import CodeStream

        hp = self.hparams
        if not is_remote(cache_path):  # a clear message before litdata opens anything
            index = read_index(cache_path)
            if not index["ids"]:  # a run on nothing would end "successfully" without a checkpoint
                raise CodeCacheError(f"code cache {cache_path} ({split}_cache) holds no clips")
            check_codec(index, cache_path, hp.codec_sha256)
        if split == "train":
            ds: Any = CodeStream(
                cache_path,
                hp.stream_cache_dir,
                crop_frames=self.crop_frames,
                seed=global_seed() if hp.seed is None else hp.seed,
                bucket_batch=hp.batch_size if hp.bucket_by_length else None,
            )
            index = ds.siren
            check_codec(index, cache_path, hp.codec_sha256)
        else:
            cache = CodeCache(cache_path, hp.codec_sha256, stream_cache_dir=hp.stream_cache_dir)
            index = cache.index
            ds = CodeClipDataset(cache, self.eval_crop_frames, train=False)
        if not index["ids"]:
            raise CodeCacheError(f"code cache {cache_path} ({split}_cache) holds no clips")
        self.skips.total[split] = len(index["ids"])
        return ds

    def _build(self, split: str) -> Dataset | None:
        hp = self.hparams
        train = split == "train"
        if hp.mode == "codes" and split != "predict":
            cache = getattr(hp, f"{split}_cache")
            if cache is None:
                return None
            return self._codes(split, cache)
        manifest = getattr(hp, f"{split}_manifest")
        if manifest is None:
            return None
        clips = self._clips(split, manifest)
        if hp.mode == "audio" and split != "predict":
            frames = self.crop_frames if train else self.eval_crop_frames
            return AudioClipDataset(
                clips,
                hp.sample_rate,
                frames * hp.hop_length,
                train=train,
                min_seconds=hp.min_seconds,
            )
        return CaptionDataset(clips, train=train)

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }.get(stage or "", ("train", "val", "test", "predict"))
        for split in wanted:
            if split not in self.datasets:
                ds = self._build(split)
                if ds is not None:
                    self.datasets[split] = ds

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            what = "cache" if self.hparams.mode == "codes" and split != "predict" else "manifest"
            raise ValueError(f"no {split} data: set {split}_{what} in the data config")
        ds = self.datasets[split]
        hp = self.hparams
        if hp.mode == "codes" and split != "predict":
            collate = collate_codes
        elif hp.mode == "audio" and split != "predict":
            collate = collate_audio
        else:
            collate = collate_captions
        common = dict(
            num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0, collate_fn=collate
        )
        if split != "train":
            return DataLoader(ds, batch_size=hp.eval_batch_size or hp.batch_size, **common)
        if hp.mode == "codes":
            from siren_lightning.data.streaming import ResumableStreamingLoader

            return ResumableStreamingLoader(
                ds,
                batch_size=hp.batch_size,
                num_workers=hp.num_workers,
                collate_fn=collate,
                drop_last=len(ds) >= hp.batch_size,
                consumed_batches=self._consumed_train_batches,
            )
        if hp.bucket_by_length:
            raise ValueError(f"bucket_by_length needs code batches (mode: codes), not {hp.mode}")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = ResumableSampler(
            ds, world, rank, seed=global_seed() if hp.seed is None else hp.seed
        )
        return ResumableDataLoader(
            ds,
            batch_size=hp.batch_size,
            sampler=sampler,
            drop_last=len(sampler) >= hp.batch_size,
            consumed_batches=self._consumed_train_batches,
            **common,
        )

    def _consumed_train_batches(self) -> int:
        """Training batches of the current epoch the loop has taken (for the loader's state)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready

    @property
    def cache_codecs(self) -> dict[str, dict[str, Any]]:
        """Per code-cache split: the index's codec SHA-256, r and K (for the module's checks)."""
        out = {}
        for split, ds in self.datasets.items():
            if hasattr(ds, "siren"):  # the training stream
                index, path = ds.siren, ds.uri
            else:
                index = getattr(getattr(ds, "items", None), "index", None)
                path = getattr(getattr(ds, "items", None), "root", "")
            if isinstance(index, dict):
                out[split] = {
                    "path": str(path),
                    "codec_sha256": index.get("codec_sha256"),
                    "n_codebooks": index.get("n_codebooks"),
                    "codebook_size": index.get("codebook_size"),
                }
        return out

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Runs in the main process, so skip counts from every worker meet here.
        skipped = batch.get("skipped") if isinstance(batch, dict) else None
        if skipped:
            trainer = getattr(self, "trainer", None)
            stage = (
                trainer.state.stage.value
                if trainer is not None and trainer.state.stage
                else "train"
            )
            split = {"sanity_check": "val", "validate": "val"}.get(stage, stage)
            for clip_id, reason in skipped:
                self.skips.add(split, clip_id, reason)
        return batch

    def teardown(self, stage: str) -> None:
        if any(self.skips.skipped.values()):
            log.warning("data: %s", self.skips.summary())
