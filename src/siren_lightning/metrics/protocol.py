"""The evaluation protocol: presets, an evaluator over folders of audio, and the results JSON.

Every number comes with the protocol that made it: preset, backbone names, weight hashes,
sample rates, resampler, crop/pad rule, pairing rule, KL variant and clip counts.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from tqdm import tqdm

from siren_lightning.metrics.backbones import AudioBackbone
from siren_lightning.metrics.cache import FeatureCache
from siren_lightning.metrics.clap_score import CLAPScore
from siren_lightning.metrics.frechet import FrechetDistance
from siren_lightning.metrics.inception import IS_SHUFFLE_SEED, IS_SPLITS, InceptionScore
from siren_lightning.metrics.intervals import (
    BOOTSTRAP_CONFIDENCE,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    INTERVAL_METRICS,
    bootstrap_intervals,
    seed_spread,
)
from siren_lightning.metrics.kad import KAD_SCALE, KernelAudioDistance
from siren_lightning.metrics.kl import MIN_PAIRED_FRACTION, KLDivergence, pair_by_id
from siren_lightning.metrics.preprocess import (
    PANNS_INPUT_RULE,
    VGGISH_INPUT_RULE,
    audioldm_panns_input,
    audioldm_vggish_input,
    read_panns_input,
    read_vggish_input,
)
from siren_lightning.metrics.stable_audio import (
    OPENL3_FD_RULE,
    PASST_WINDOW_RULE,
    STABLE_AUDIO_CLAP_CHECKPOINT,
    STABLE_AUDIO_CLAP_RULE,
    STABLE_AUDIO_INPUT_RULE,
    stable_audio_input,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
BOOTSTRAP_RULE = (
    "percentile bootstrap over clips: ids drawn with replacement (one draw picks a clip's "
    "generation and reference when both sets hold the same ids, else the sets are drawn "
    "independently); KAD keeps the full reference bandwidth; with several seeds, each draw "
    "averages the seeds"
)
FAD_UNAVAILABLE = (
    "no FAD: FAD is the Frechet distance of VGGish frame embeddings, and this preset has no "
    "VGGish backbone; a distance over another network's embeddings would not be FAD"
)


@dataclass(frozen=True)
class Protocol:
    """A pinned evaluation protocol (what a results JSON records beside the numbers)."""

    name: str
    fd_backbone: str
    classifier_backbone: str | None
    fad_backbone: str | None
    clap_backbone: str | None
    kl_variant: str = "softmax"
    input_rule: str = PANNS_INPUT_RULE
    fad_input_rule: str = VGGISH_INPUT_RULE
    clap_input_rule: str = (
        "first channel; mean removed; torchaudio.functional.resample to the CLAP rate; "
        "zero-pad to >= 2 s; the CLAP feature extractor's own crop/repeat-pad"
    )
    pairing_rule: str = (
        f"generated and reference paired by clip id (file stem / manifest id); KL needs the shared "
        f"ids to exceed {MIN_PAIRED_FRACTION:.0%} of both sets"
    )
    is_splits: int = IS_SPLITS
    is_seed: int = IS_SHUFFLE_SEED
    clap_score_rule: str = "mean cosine x 100 between the audio and its first caption"
    classifier_input_rule: str = PANNS_INPUT_RULE
    fd_rule: str = "one embedding per clip; Gaussian statistics over the clips"
    fd_over_frames: bool = False
    kad_rule: str = (
        f"{KAD_SCALE:g} x unbiased MMD^2 of the fd backbone's clip embeddings, Gaussian kernel "
        "exp(-d^2 / (2 sigma^2)), sigma = median distance over the reference set's distinct pairs"
    )


PRESETS: dict[str, Protocol] = {
    # The Siren paper's Table 1 (audioldm_eval with backbone="cnn14"; LAION CLAP for CLAP score).
    "audioldm_eval": Protocol(
        name="audioldm_eval",
        fd_backbone="panns-cnn14-16k",
        classifier_backbone="panns-cnn14-16k",
        fad_backbone="vggish",
        clap_backbone="laion-clap",
    ),
    # Offline: the evaluation tiny CLAP (its audio embedding for FD, zero-shot class logits over
    # its caption vocabulary for KL/IS, and CLAP score). No offline VGGish weights, so no FAD.
    "tiny": Protocol(
        name="tiny",
        fd_backbone="tiny-clap-eval",
        classifier_backbone="tiny-clap-eval",
        fad_backbone=None,
        clap_backbone="tiny-clap-eval",
    ),
    # TangoFlux / Stable Audio Open's protocol (stable-audio-metrics): OpenL3 FD over frames at
    # 48 kHz, PaSST KL(p_gen || p_ref) at 32 kHz, LAION-CLAP 630k-audioset-fusion; no FAD.
    "stable_audio_metrics": Protocol(
        name="stable_audio_metrics",
        fd_backbone="openl3-mel256-env-512",
        classifier_backbone="passt-s-swa-p16-128-ap476",
        fad_backbone=None,
        clap_backbone=f"laion-clap:{STABLE_AUDIO_CLAP_CHECKPOINT}",
        kl_variant="softmax_gen_ref",
        input_rule=STABLE_AUDIO_INPUT_RULE,
        classifier_input_rule=f"{STABLE_AUDIO_INPUT_RULE}; {PASST_WINDOW_RULE}",
        clap_input_rule=STABLE_AUDIO_CLAP_RULE,
        fd_rule=OPENL3_FD_RULE,
        fd_over_frames=True,
    ),
}


def get_preset(name: str) -> Protocol:
    if name not in PRESETS:
        raise ValueError(f"unknown evaluation preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def audio_files(folder: str | Path) -> dict[str, Path]:
    """Clip id (file stem) -> path for the audio files of a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {folder}")
    return files


def _describe(backbone: AudioBackbone | None) -> dict[str, Any] | None:
    if backbone is None:
        return None
    return {
        "name": backbone.name,
        "weights_sha256": backbone.weights_sha256 or "random-init",
        "sample_rate": backbone.sample_rate,
        "embedding_dim": backbone.embedding_dim,
        "num_classes": backbone.num_classes,
    }


@dataclass
class Evaluator:
    """Scores generated audio files against reference files with one protocol.

    Attributes:
        protocol: the pinned protocol.
        fd_backbone: clip embeddings for FD, and class logits for KL / IS when it has them.
        fad_backbone: frame embeddings for FAD (VGGish) or None.
        clap_backbone: audio and text embeddings (``embed_text``) for CLAP score, or None.
        cache: per-file feature cache.
        resamples, confidence, bootstrap_seed: the bootstrap of the intervals (resamples=0:
            none).
        classifier_backbone: class logits for KL / IS when they come from another network than
            the FD one (None: the FD backbone's logits).
    """

    protocol: Protocol
    fd_backbone: AudioBackbone
    fad_backbone: AudioBackbone | None = None
    clap_backbone: AudioBackbone | None = None
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(None))
    resamples: int = BOOTSTRAP_RESAMPLES
    confidence: float = BOOTSTRAP_CONFIDENCE
    bootstrap_seed: int = BOOTSTRAP_SEED
    classifier_backbone: AudioBackbone | None = None

    def _run(self, backbone: AudioBackbone, audio: Tensor, rule: str) -> dict[str, Tensor]:
        """Features of one prepared clip [N] at the backbone's rate."""
        device = next(backbone.parameters(), audio).device
        out = backbone(audio[None].to(device))
        if rule == self.protocol.fad_input_rule:
            return {"frames": out.frames[0].cpu()}
        feats = {"embedding": out.embedding[0].cpu()}
        if out.logits is not None:
            feats["logits"] = out.logits[0].cpu()
        if out.frames is not None:  # frame embeddings of an FD backbone (OpenL3)
            feats["fd_frames"] = out.frames[0].cpu()
        return feats

    def _clip(self, path: Path, backbone: AudioBackbone, rule: str) -> dict[str, Tensor]:
        def compute() -> dict[str, Tensor]:
            if rule == self.protocol.fad_input_rule:
                audio = torch.from_numpy(read_vggish_input(path, backbone.sample_rate)).float()
            elif _stable_audio_rule(rule):
                data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
                audio = _prepare(rule, torch.from_numpy(data.T.copy()), sr, backbone.sample_rate)
            else:
                audio = read_panns_input(path, backbone.sample_rate)
            return self._run(backbone, audio, rule)

        with torch.no_grad():
            return self.cache.get_or_compute(
                path, backbone.name, backbone.weights_sha256, backbone.sample_rate, rule, compute
            )

    @torch.no_grad()
    def _waveform(
        self, audio: Tensor, sample_rate: int, backbone: AudioBackbone, rule: str
    ) -> dict[str, Tensor]:
        """The file rules applied to a waveform [N] or [C, N] held in memory (for VGGish: as if
        written as 16-bit PCM and read back as int16 / 32768)."""
        audio = audio.detach().float().cpu()
        if rule == self.protocol.fad_input_rule:
            x = audio.reshape(-1, audio.shape[-1]).T.numpy()  # [N, C], soundfile layout
            pcm = np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0
            prepared = audioldm_vggish_input(pcm, sample_rate, backbone.sample_rate)
            return self._run(backbone, torch.from_numpy(prepared).float(), rule)
        prepared = _prepare(rule, audio, sample_rate, backbone.sample_rate)
        return self._run(backbone, prepared, rule)

    def _per_clip(self, clips: Mapping[str, Any], clip_features, progress: bool, desc: str):
        out = {}
        for clip_id, clip in tqdm(clips.items(), disable=not progress, desc=desc):
            feats = dict(clip_features(clip, self.fd_backbone, self.protocol.input_rule))
            if self.classifier_backbone is not None:
                rule = self.protocol.classifier_input_rule
                feats["logits"] = clip_features(clip, self.classifier_backbone, rule)["logits"]
            if self.fad_backbone is not None:
                feats |= clip_features(clip, self.fad_backbone, self.protocol.fad_input_rule)
            if self.clap_backbone is not None:
                if self.clap_backbone is self.fd_backbone:
                    feats["clap"] = feats["embedding"]
                else:
                    rule = self.protocol.clap_input_rule
                    feats["clap"] = clip_features(clip, self.clap_backbone, rule)["embedding"]
            out[clip_id] = feats
        return out

    def features(self, files: Mapping[str, Path], progress: bool = False) -> dict[str, dict]:
        """Per clip id: ``embedding``, ``logits``?, ``frames``? and ``clap``? features of files."""
        return self._per_clip(files, self._clip, progress, "features")

    def audio_features(
        self, clips: Mapping[str, Tensor], sample_rate: int, progress: bool = False
    ) -> dict[str, dict]:
        """As `features`, for waveforms held in memory.

        Args:
            clips: clip id -> audio [N] (or [C, N]) float in [-1, 1].
            sample_rate: their rate.
        """

        def compute(audio: Tensor, backbone: AudioBackbone, rule: str) -> dict[str, Tensor]:
            return self._waveform(audio, sample_rate, backbone, rule)

        return self._per_clip(clips, compute, progress, "features")

    def evaluate(
        self,
        generated: Mapping[str, Path],
        reference: Mapping[str, Path],
        captions: Mapping[str, str] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """All metrics of the protocol for files, as a results dict (see `score`).

        Args:
            generated: clip id -> generated audio file.
            reference: clip id -> reference audio file.
            captions: clip id -> caption, for CLAP score (generated clips without one are
                skipped and counted).
        """
        return self.score(
            self.features(generated, progress), self.features(reference, progress), captions
        )

    def score(
        self,
        gen: Mapping[str, dict[str, Tensor]],
        ref: Mapping[str, dict[str, Tensor]],
        captions: Mapping[str, str] | None = None,
        resamples: int | None = None,
    ) -> dict[str, Any]:
        """All metrics of the protocol from per-clip features (`features` / `audio_features`).

        Args:
            gen, ref: clip id -> features of the generated and reference clips.
            captions: clip id -> caption (CLAP score).
            resamples: bootstrap resamples of the intervals; None: ``self.resamples``; 0: none.

        Returns:
            the results dict: ``metrics`` (``fad`` is None when the preset has no FAD backbone,
            with the reason under ``unavailable``), ``intervals`` (metric -> [low, high]) and
            ``bootstrap`` (how they were made), ``counts``, the protocol and backbones.
        """
        return self.score_seeds([gen], ref, captions, resamples)

    def score_seeds(
        self,
        seeds: Sequence[Mapping[str, dict[str, Tensor]]],
        ref: Mapping[str, dict[str, Tensor]],
        captions: Mapping[str, str] | None = None,
        resamples: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """As `score`, for the same clips generated with several seeds.

        With more than one seed, ``metrics`` is the mean over seeds, ``seeds`` holds each seed's
        metrics (under its label), ``seed_spread`` the standard deviation, min and max across
        seeds, and the intervals are those of the seed mean (`intervals.bootstrap_intervals`).
        """
        if not seeds:
            raise ValueError("score_seeds needs at least one set of generated features")
        text: dict[str, Tensor] = {}
        per_seed = [self._score_one(gen, ref, captions, text) for gen in seeds]
        results = per_seed[0]
        if len(seeds) > 1:
            labels = list(labels or [f"seed {i}" for i in range(len(seeds))])
            each = [r["metrics"] for r in per_seed]
            results["seeds"] = [
                {"label": label, "metrics": m} for label, m in zip(labels, each, strict=True)
            ]
            results["metrics"] = _mean_metrics(each)
            results["seed_spread"] = seed_spread(each)
        resamples = self.resamples if resamples is None else resamples
        if resamples > 0:
            results["intervals"] = bootstrap_intervals(
                seeds,
                ref,
                results["metrics"],
                kl_variant=self.protocol.kl_variant,
                is_splits=self.protocol.is_splits,
                is_seed=self.protocol.is_seed,
                kad_bandwidth=results["kad_bandwidth"],
                fd_over_frames=self.protocol.fd_over_frames,
                text=text,
                resamples=resamples,
                confidence=self.confidence,
                seed=self.bootstrap_seed,
            )
            results["bootstrap"] = {
                "resamples": resamples,
                "confidence": self.confidence,
                "seed": self.bootstrap_seed,
                "rule": BOOTSTRAP_RULE,
            }
        return results

    def _score_one(
        self,
        gen: Mapping[str, dict[str, Tensor]],
        ref: Mapping[str, dict[str, Tensor]],
        captions: Mapping[str, str] | None,
        text: dict[str, Tensor],
    ) -> dict[str, Any]:
        """The metrics of one generated set (``text`` collects the caption embeddings)."""
        if not gen or not ref:
            raise ValueError(f"nothing to score: {len(gen)} generated, {len(ref)} reference clips")
        metrics: dict[str, float | None] = {}
        counts = {"generated": len(gen), "reference": len(ref)}
        unavailable: dict[str, str] = {}

        fd = FrechetDistance(self.fd_backbone.embedding_dim)
        if self.protocol.fd_over_frames:  # all frames of all clips pooled (OpenL3 FD)
            for feats, real in ((gen, False), (ref, True)):
                frame_ids = [k for k, f in feats.items() for _ in range(len(f["fd_frames"]))]
                fd.update(torch.cat([f["fd_frames"] for f in feats.values()]), real, frame_ids)
            counts["fd_frames_generated"] = int(fd.fake_n)
            counts["fd_frames_reference"] = int(fd.real_n)
        else:
            fd.update(
                torch.stack([f["embedding"] for f in gen.values()]), real=False, ids=list(gen)
            )
            fd.update(torch.stack([f["embedding"] for f in ref.values()]), real=True, ids=list(ref))
        metrics["fd"] = float(fd.compute())

        kad = KernelAudioDistance(self.fd_backbone.embedding_dim)
        kad.update(torch.stack([f["embedding"] for f in gen.values()]), real=False)
        kad.update(torch.stack([f["embedding"] for f in ref.values()]), real=True)
        metrics["kad"] = float(kad.compute())
        kad_bandwidth = kad.bandwidth_used

        if self.fad_backbone is not None:
            fad = FrechetDistance(self.fad_backbone.embedding_dim)
            for feats, real in ((gen, False), (ref, True)):
                frame_ids = [k for k, f in feats.items() for _ in range(len(f["frames"]))]
                fad.update(torch.cat([f["frames"] for f in feats.values()]), real, frame_ids)
            metrics["fad"] = float(fad.compute())
            counts["fad_frames_generated"] = int(fad.fake_n)
            counts["fad_frames_reference"] = int(fad.real_n)
        else:
            metrics["fad"] = None
            unavailable["fad"] = FAD_UNAVAILABLE

        if "logits" in next(iter(gen.values())):
            ids, g, r = pair_by_id(
                {k: f["logits"] for k, f in gen.items()}, {k: f["logits"] for k, f in ref.items()}
            )
            counts["paired"] = len(ids)
            variants = dict.fromkeys(("softmax", "sigmoid", self.protocol.kl_variant))
            for variant in variants:
                kl = KLDivergence(variant)
                kl.update(g, r)
                metrics[f"kl_{variant}"] = float(kl.compute())
            metrics["kl"] = metrics[f"kl_{self.protocol.kl_variant}"]
        metrics |= self._unpaired(gen, captions, counts, unavailable, text)
        results = results_dict(self.protocol, self, metrics, counts)
        results["kad_bandwidth"] = kad_bandwidth
        if unavailable:
            results["unavailable"] = unavailable
        return results

    def _unpaired(
        self,
        feats: Mapping[str, dict[str, Tensor]],
        captions: Mapping[str, str] | None,
        counts: dict[str, int],
        unavailable: dict[str, str],
        text: dict[str, Tensor] | None = None,
    ) -> dict[str, float | None]:
        """IS and CLAP score: the metrics of one set alone (``text`` gets the caption
        embeddings, by clip id)."""
        text = {} if text is None else text
        metrics = {}
        if "logits" in next(iter(feats.values())) and len(feats) < self.protocol.is_splits:
            metrics["is_mean"] = metrics["is_std"] = None
            unavailable["is"] = (
                f"no IS: {len(feats)} clips, fewer than its {self.protocol.is_splits} splits"
            )
        elif "logits" in next(iter(feats.values())):
            inception = InceptionScore(self.protocol.is_splits, self.protocol.is_seed)
            inception.update(torch.stack([f["logits"] for f in feats.values()]))
            is_mean, is_std = inception.compute()
            metrics["is_mean"], metrics["is_std"] = float(is_mean), float(is_std)
        if self.clap_backbone is not None and captions:
            ids = [k for k in feats if k in captions]
            counts["clap_scored"] = len(ids)
            if ids:
                score = CLAPScore()
                audio = torch.stack([feats[k]["clap"] for k in ids])
                todo = [k for k in ids if k not in text]
                if todo:  # caption embeddings are shared by the seeds of one clip
                    embedded = self.clap_backbone.embed_text([captions[k] for k in todo])
                    text.update(zip(todo, embedded.cpu(), strict=True))
                score.update(audio.cpu(), torch.stack([text[k] for k in ids]))
                metrics["clap_score"] = float(score.compute())
        return metrics

    def ground_truth(
        self, ref: Mapping[str, dict[str, Tensor]], captions: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The reference set's own IS and CLAP score (what matched audio reaches); FD and KL
        against itself are 0 by construction and are not reported."""
        counts, unavailable = {"reference": len(ref)}, {}
        metrics = self._unpaired(ref, captions, counts, unavailable)
        return {"metrics": metrics, "counts": counts, "unavailable": unavailable}


def _stable_audio_rule(rule: str) -> bool:
    return rule.startswith(STABLE_AUDIO_INPUT_RULE)


def _prepare(rule: str, audio: Tensor, sample_rate: int, target_rate: int) -> Tensor:
    """A waveform [N] or [C, N] prepared by the named input rule -> [N'] at ``target_rate``."""
    if _stable_audio_rule(rule):
        return stable_audio_input(
            audio, sample_rate, target_rate, int16=rule == STABLE_AUDIO_CLAP_RULE
        )
    return audioldm_panns_input(audio, sample_rate, target_rate)


def _mean_metrics(per_seed: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the mean over seeds (None when a seed has none)."""
    out: dict[str, float | None] = {}
    for name in per_seed[0]:
        values = [m.get(name) for m in per_seed]
        out[name] = None if any(v is None for v in values) else float(np.mean(values))
    return out


def results_dict(
    protocol: Protocol, evaluator: Evaluator, metrics: dict[str, float], counts: dict[str, int]
) -> dict[str, Any]:
    """The results JSON content: numbers, counts and the full protocol."""
    return {
        "preset": protocol.name,
        "metrics": metrics,
        "counts": counts,
        "protocol": asdict(protocol),
        "backbones": {
            "fd": _describe(evaluator.fd_backbone),
            "fad": _describe(evaluator.fad_backbone),
            "clap": _describe(evaluator.clap_backbone),
            "classifier": _describe(
                getattr(evaluator, "classifier_backbone", None) or evaluator.fd_backbone
            ),
        },
        "resampler": f"torchaudio {_version('torchaudio')} functional.resample; resampy for VGGish",
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchmetrics": _version("torchmetrics"),
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write a results dict as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def build_evaluator(
    preset: str,
    tiny_clap: str | Path | None = None,
    panns_weights: str | Path | None = None,
    vggish_weights: str | Path | None = None,
    clap_checkpoint: str | None = None,
    cache_dir: str | Path | None = None,
    openl3_weights: str | Path | None = None,
    passt_weights: str | Path | None = None,
) -> Evaluator:
    """An `Evaluator` with the preset's pretrained backbones (local first, then download)."""
    protocol = get_preset(preset)
    cache = FeatureCache(cache_dir)
    if preset == "tiny":
        from siren_lightning.metrics.tiny_clap import TinyCLAPBackbone

        backbone = TinyCLAPBackbone.from_pretrained(tiny_clap or "tiny-clap-eval")
        return Evaluator(protocol, backbone, None, backbone, cache)
    from siren_lightning.metrics.backbones import LaionClap, PannsCnn14, VGGish
    from siren_lightning.metrics.weights import DEFAULT_CLAP_CHECKPOINT, WeightsError

    if preset == "stable_audio_metrics":
        from siren_lightning.metrics.stable_audio import OpenL3, PaSST

        makers = {
            "fd": lambda: OpenL3(openl3_weights),
            "classifier": lambda: PaSST(passt_weights),
            "clap": lambda: LaionClap(clap_checkpoint or STABLE_AUDIO_CLAP_CHECKPOINT),
        }
    else:
        makers = {
            "fd": lambda: PannsCnn14(panns_weights),
            "fad": lambda: VGGish(vggish_weights),
            "clap": lambda: LaionClap(clap_checkpoint or DEFAULT_CLAP_CHECKPOINT),
        }
    # Every backbone is tried so that one error names every missing file.
    built, missing = {}, []
    for key, make in makers.items():
        try:
            built[key] = make()
        except WeightsError as err:
            missing.append(f"  {key}: {err}")
    if missing:
        raise WeightsError(
            f"preset {preset!r} needs pretrained backbone weights that are not here:\n"
            + "\n".join(missing)
            + "\n(`siren download-weights` fetches them where there is network; or use "
            "--preset tiny, which runs offline and has no FAD)"
        )
    return Evaluator(
        protocol,
        built["fd"],
        built.get("fad"),
        built["clap"],
        cache,
        classifier_backbone=built.get("classifier"),
    )


def results_table(results: Mapping[str, Any]) -> str:
    """The model row beside the codec-ceiling and ground-truth rows, as aligned text.

    A value with a bootstrap interval prints as ``value ± half-width`` (half the interval's
    width; percentile intervals need not be symmetric: the JSON has both bounds). With several
    generation seeds a ``seed sd`` row gives the standard deviation across seeds.
    """
    columns = INTERVAL_METRICS
    rows = [("model", results["metrics"], results.get("intervals", {}))]
    if "seed_spread" in results:
        spread = results["seed_spread"]
        n = max((v["seeds"] for v in spread.values()), default=0)
        rows.append((f"seed sd ({n})", {k: v["std"] for k, v in spread.items()}, {}))
    if "codec_ceiling" in results:
        ceiling = results["codec_ceiling"]
        rows.append(("codec ceiling", ceiling["metrics"], ceiling.get("intervals", {})))
    if "ground_truth" in results:
        rows.append(("ground truth", results["ground_truth"]["metrics"], {}))

    def cell(value: Any, interval: Sequence[float] | None) -> str:
        if value is None:
            return "-"
        if interval is None:
            return f"{value:.4f}"
        return f"{value:.4f} ± {(interval[1] - interval[0]) / 2:.4f}"

    width = 20 if any(r[2] for r in rows) else 12
    lines = [f"{'':>14}" + "".join(f"{c:>{width}}" for c in columns)]
    for name, metrics, intervals in rows:
        cells = [cell(metrics.get(c), intervals.get(c)) for c in columns]
        lines.append(f"{name:>14}" + "".join(f"{c:>{width}}" for c in cells))
    if results.get("bootstrap"):
        b = results["bootstrap"]
        lines.append(
            f"± half the {b['confidence']:.0%} bootstrap interval ({b['resamples']} resamples "
            "of the clips)"
        )
    return "\n".join(lines)


def _reference(spec: str) -> tuple[dict[str, Path], dict[str, str], dict[str, dict]]:
    """Reference clips (id -> path), captions and attributes from a folder or a JSONL manifest."""
    path = Path(spec)
    if path.is_dir():
        return audio_files(path), {}, {}
    from siren_lightning.data.manifest import read_manifest

    clips = read_manifest(path)
    return (
        {c.id: Path(c.audio) for c in clips},
        {c.id: c.captions[0] for c in clips if c.captions},
        {c.id: c.attributes for c in clips if c.attributes},
    )


def main(argv: list[str]) -> int:
    """`siren evaluate`: score a folder of generated audio against references, or compare
    results JSONs (`--compare`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="siren evaluate", description=main.__doc__)
    parser.add_argument(
        "--generated",
        nargs="+",
        help="folder of audio files named <id>.wav; several folders: the same clips generated "
        "with other seeds (metrics averaged, seed spread reported)",
    )
    parser.add_argument("--reference", help="folder of audio or a JSONL manifest")
    parser.add_argument("--captions", help="JSONL manifest giving captions by id (CLAP score)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument(
        "--out", default=None, help="results JSON (default: <first generated folder>.json)"
    )
    parser.add_argument("--cache", default=None, help="feature cache folder")
    parser.add_argument("--tiny-clap", default=None, help="tiny CLAP checkpoint (preset tiny)")
    parser.add_argument("--panns-weights", default=None)
    parser.add_argument("--vggish-weights", default=None)
    parser.add_argument("--clap-checkpoint", default=None)
    parser.add_argument("--openl3-weights", default=None, help="preset stable_audio_metrics")
    parser.add_argument("--passt-weights", default=None, help="preset stable_audio_metrics")
    parser.add_argument(
        "--codec-ceiling",
        metavar="CODEC",
        default=None,
        help="also score the references resynthesized through this codec (folder, .ckpt, "
        "dac:16khz): the codec-ceiling row",
    )
    parser.add_argument(
        "--all-references",
        action="store_true",
        help="score against every reference clip, not only those whose ids match generated ones",
    )
    parser.add_argument(
        "--per-clip",
        metavar="JSONL",
        default=None,
        help="also write one row per generated clip (CLAP cosine, KL, embedding distance to "
        "the reference mean, attribute adherence)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_RESAMPLES,
        metavar="N",
        # argparse %-formats help strings: the percent sign is doubled.
        help=f"bootstrap resamples of the {100 * BOOTSTRAP_CONFIDENCE:.0f}%% intervals (0: none)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULTS",
        help="print results JSONs side by side instead of scoring (refused when their "
        "protocols differ)",
    )
    parser.add_argument(
        "--allow-protocol-mismatch",
        action="store_true",
        help="with --compare: print the table anyway, the differing runs marked",
    )
    args = parser.parse_args(argv)
    if args.compare:
        from siren_lightning.metrics.compare import main_compare

        return main_compare(args.compare, args.allow_protocol_mismatch)
    if not args.generated or not args.reference:
        parser.error("--generated and --reference are required (or --compare RESULTS ...)")

    seeds = [audio_files(folder) for folder in args.generated]
    generated = seeds[0]
    for folder, files in zip(args.generated[1:], seeds[1:], strict=True):
        if set(files) != set(generated):
            odd = sorted(set(files) ^ set(generated))[:3]
            parser.error(
                f"generation seed folder {folder} does not hold the clips of "
                f"{args.generated[0]} (e.g. {odd}); each folder must hold the same clip ids"
            )
    reference, captions, attributes = _reference(args.reference)
    if args.captions:
        _, captions, attributes = _reference(args.captions)
    missing = sorted(set(generated) - set(reference))
    if missing:
        print(
            f"siren evaluate: {len(missing)} of {len(generated)} generated clips have no "
            f"reference with the same id (first: {missing[:3]}); name generated files <id>.wav "
            "(`siren generate --manifest` does)"
        )
    if not args.all_references and len(missing) < len(generated):
        reference = {k: p for k, p in reference.items() if k in generated}
    print(f"siren evaluate: {len(generated)} generated, {len(reference)} reference clips")
    evaluator = build_evaluator(
        args.preset,
        args.tiny_clap,
        args.panns_weights,
        args.vggish_weights,
        args.clap_checkpoint,
        args.cache,
        args.openl3_weights,
        args.passt_weights,
    )
    evaluator.resamples = args.bootstrap
    ref_feats = evaluator.features(reference, progress=True)
    gen_feats = [evaluator.features(files, progress=True) for files in seeds]
    results = evaluator.score_seeds(gen_feats, ref_feats, captions, labels=args.generated)
    results["generated"] = [str(Path(folder)) for folder in args.generated]
    results["ground_truth"] = evaluator.ground_truth(ref_feats, captions)
    if args.codec_ceiling:
        from siren_lightning.codec.checkpoint import load_codec
        from siren_lightning.metrics.ceiling import codec_ceiling

        codec = load_codec(args.codec_ceiling)
        results["codec_ceiling"] = codec_ceiling(
            evaluator, codec, reference, captions, ref_feats, args.codec_ceiling, progress=True
        )
    if args.per_clip:
        from siren_lightning.metrics.per_clip import per_clip_scores, write_jsonl

        rows = []
        for label, files, feats in zip(args.generated, seeds, gen_feats, strict=True):
            rows += per_clip_scores(
                evaluator,
                feats,
                ref_feats,
                captions,
                attributes,
                files,
                seed=label if len(seeds) > 1 else None,
            )
        results["per_clip"] = str(write_jsonl(rows, args.per_clip))
    out = write_results(results, args.out or Path(args.generated[0]).with_suffix(".json"))
    print(results_table(results))
    for reason in results.get("unavailable", {}).values():
        print(f"note: {reason}")
    if args.per_clip:
        print(f"per-clip scores: {results['per_clip']}")
    print(f"results: {out}")
    return 0
