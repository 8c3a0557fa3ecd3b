"""The evaluation protocol: presets, an evaluator over folders of audio, and the results JSON.

Every number comes with the protocol that made it: preset, backbone names, weight hashes,
sample rates, resampler, crop/pad rule, pairing rule, KL variant and clip counts.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from siren_lightning.metrics.backbones import AudioBackbone
from siren_lightning.metrics.cache import FeatureCache
from siren_lightning.metrics.clap_score import CLAPScore
from siren_lightning.metrics.frechet import FrechetDistance
from siren_lightning.metrics.inception import IS_SHUFFLE_SEED, IS_SPLITS, InceptionScore
from siren_lightning.metrics.kl import MIN_PAIRED_FRACTION, KLDivergence, pair_by_id
from siren_lightning.metrics.preprocess import (
    PANNS_INPUT_RULE,
    VGGISH_INPUT_RULE,
    audioldm_panns_input,
    audioldm_vggish_input,
    read_panns_input,
    read_vggish_input,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
FAD_UNAVAILABLE = (
    "no FAD: FAD is the Frechet distance of VGGish frame embeddings, and this preset has no "
    "VGGish weights (offline); a distance over another network's embeddings would not be FAD"
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
    """

    protocol: Protocol
    fd_backbone: AudioBackbone
    fad_backbone: AudioBackbone | None = None
    clap_backbone: AudioBackbone | None = None
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(None))

    def _run(self, backbone: AudioBackbone, audio: Tensor, rule: str) -> dict[str, Tensor]:
        """Features of one prepared clip [N] at the backbone's rate."""
        device = next(backbone.parameters(), audio).device
        out = backbone(audio[None].to(device))
        if rule == self.protocol.fad_input_rule:
            return {"frames": out.frames[0].cpu()}
        feats = {"embedding": out.embedding[0].cpu()}
        if out.logits is not None:
            feats["logits"] = out.logits[0].cpu()
        return feats

    def _clip(self, path: Path, backbone: AudioBackbone, rule: str) -> dict[str, Tensor]:
        def compute() -> dict[str, Tensor]:
            if rule == self.protocol.fad_input_rule:
                audio = torch.from_numpy(read_vggish_input(path, backbone.sample_rate)).float()
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
        prepared = audioldm_panns_input(audio, sample_rate, backbone.sample_rate)
        return self._run(backbone, prepared, rule)

    def _per_clip(self, clips: Mapping[str, Any], clip_features, progress: bool, desc: str):
        out = {}
        for clip_id, clip in tqdm(clips.items(), disable=not progress, desc=desc):
            feats = dict(clip_features(clip, self.fd_backbone, self.protocol.input_rule))
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
    ) -> dict[str, Any]:
        """All metrics of the protocol from per-clip features (`features` / `audio_features`).

        Returns:
            the results dict: ``metrics`` (``fad`` is None when the preset has no FAD backbone,
            with the reason under ``unavailable``), ``counts``, the protocol and backbones.
        """
        if not gen or not ref:
            raise ValueError(f"nothing to score: {len(gen)} generated, {len(ref)} reference clips")
        metrics: dict[str, float | None] = {}
        counts = {"generated": len(gen), "reference": len(ref)}
        unavailable: dict[str, str] = {}

        fd = FrechetDistance(self.fd_backbone.embedding_dim)
        fd.update(torch.stack([f["embedding"] for f in gen.values()]), real=False, ids=list(gen))
        fd.update(torch.stack([f["embedding"] for f in ref.values()]), real=True, ids=list(ref))
        metrics["fd"] = float(fd.compute())

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
            for variant in ("softmax", "sigmoid"):
                kl = KLDivergence(variant)
                kl.update(g, r)
                metrics[f"kl_{variant}"] = float(kl.compute())
            metrics["kl"] = metrics[f"kl_{self.protocol.kl_variant}"]
        metrics |= self._unpaired(gen, captions, counts, unavailable)
        results = results_dict(self.protocol, self, metrics, counts)
        if unavailable:
            results["unavailable"] = unavailable
        return results

    def _unpaired(
        self,
        feats: Mapping[str, dict[str, Tensor]],
        captions: Mapping[str, str] | None,
        counts: dict[str, int],
        unavailable: dict[str, str],
    ) -> dict[str, float | None]:
        """IS and CLAP score: the metrics of one set alone."""
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
                score.update(audio, self.clap_backbone.embed_text([captions[k] for k in ids]))
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

    # Every backbone is tried so that one error names every missing file.
    built, missing = {}, []
    for key, make in (
        ("fd", lambda: PannsCnn14(panns_weights)),
        ("fad", lambda: VGGish(vggish_weights)),
        ("clap", lambda: LaionClap(clap_checkpoint or DEFAULT_CLAP_CHECKPOINT)),
    ):
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
    return Evaluator(protocol, built["fd"], built["fad"], built["clap"], cache)


def results_table(results: Mapping[str, Any]) -> str:
    """The model row beside the codec-ceiling and ground-truth rows, as aligned text."""
    columns = ("fd", "fad", "kl", "is_mean", "clap_score")
    rows = [("model", results["metrics"])]
    if "codec_ceiling" in results:
        rows.append(("codec ceiling", results["codec_ceiling"]["metrics"]))
    if "ground_truth" in results:
        rows.append(("ground truth", results["ground_truth"]["metrics"]))

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'':>14}" + "".join(f"{c:>12}" for c in columns)]
    for name, metrics in rows:
        lines.append(f"{name:>14}" + "".join(f"{cell(metrics.get(c)):>12}" for c in columns))
    return "\n".join(lines)


def _reference(spec: str) -> tuple[dict[str, Path], dict[str, str]]:
    """Reference clips (id -> path) and captions from a folder or a JSONL manifest."""
    path = Path(spec)
    if path.is_dir():
        return audio_files(path), {}
    from siren_lightning.data.manifest import read_manifest

    clips = read_manifest(path)
    return {c.id: Path(c.audio) for c in clips}, {c.id: c.captions[0] for c in clips if c.captions}


def main(argv: list[str]) -> int:
    """`siren evaluate`: score a folder of generated audio against references."""
    import argparse

    parser = argparse.ArgumentParser(prog="siren evaluate", description=main.__doc__)
    parser.add_argument("--generated", required=True, help="folder of audio files, named <id>.wav")
    parser.add_argument("--reference", required=True, help="folder of audio or a JSONL manifest")
    parser.add_argument("--captions", help="JSONL manifest giving captions by id (CLAP score)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--out", default=None, help="results JSON (default: <generated>.json)")
    parser.add_argument("--cache", default=None, help="feature cache folder")
    parser.add_argument("--tiny-clap", default=None, help="tiny CLAP checkpoint (preset tiny)")
    parser.add_argument("--panns-weights", default=None)
    parser.add_argument("--vggish-weights", default=None)
    parser.add_argument("--clap-checkpoint", default=None)
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
    args = parser.parse_args(argv)

    generated = audio_files(args.generated)
    reference, captions = _reference(args.reference)
    if args.captions:
        captions = _reference(args.captions)[1]
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
    )
    ref_feats = evaluator.features(reference, progress=True)
    results = evaluator.score(evaluator.features(generated, progress=True), ref_feats, captions)
    results["ground_truth"] = evaluator.ground_truth(ref_feats, captions)
    if args.codec_ceiling:
        from siren_lightning.codec.checkpoint import load_codec
        from siren_lightning.metrics.ceiling import codec_ceiling

        codec = load_codec(args.codec_ceiling)
        results["codec_ceiling"] = codec_ceiling(
            evaluator, codec, reference, captions, ref_feats, args.codec_ceiling, progress=True
        )
    out = write_results(results, args.out or Path(args.generated).with_suffix(".json"))
    print(results_table(results))
    for reason in results.get("unavailable", {}).values():
        print(f"note: {reason}")
    print(f"results: {out}")
    return 0
