"""The mel probe: an audio-text embedding of another family than the tiny CLAPs (issue 17).

A reward of another family for the reward-family ablation, through `EmbeddingCosineReward`.
Nothing in it is a trained network:
- text: the frozen MiniLM sentence embedding of the caption (masked mean of the token states of
  `siren_lightning.text.TextEncoder("minilm")`), L2-normalised: [B, 384].
- audio: fixed, hand-made features of the waveform (`probe_features`): the log-mel spectrogram
  in dB below the clip's peak, summarised per band (mean and std over time), a 16-bin loudness
  envelope (frame RMS in dB below the clip's loudest bin) and a 16-bin spectral-centroid
  trajectory (mel-band index), so pitch, event count, envelope and sweep direction are all
  visible to a linear map; z-scored with the train set's statistics; then one linear map
  W [F, 384] + b [384] into the text space, fitted in closed form by ridge regression from the
  train clips' features to their captions' embeddings (`fit_ridge`), its lambda picked on val by
  caption->audio retrieval.
- the score: the cosine in the space centred at b. With z-scored features the ridge bias b is
  the mean train caption embedding, so the audio side is ``W z`` and the text side is the
  caption's embedding minus b. Uncentred, ``b`` adds the same caption preference to every clip
  (on 24 held-out clips the caption with the wrong pitch band won 5 times against 1 centred, and
  the val mean rank was 5.15 against 4.99; docs/align.md).

The committed probe lives in `assets/mel-probe-reward/` (made by `main`, below); the module-level
`embed_audio` and `embed_text` load it on first use, so a YAML can name them by dotted path.

Letters: B clips, N samples, M mel bands, T frames, F features, E = 384 the text width.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file, save_file
from torch import Tensor

from siren_lightning.data.audio import load_audio, resample
from siren_lightning.metrics.tiny_clap import CaptionEmbeddingCache, assets_dir, retrieval_recall
from siren_lightning.metrics.weights import sha256_file

SAMPLE_RATE = 16_000
N_MELS, N_FFT, HOP = 64, 1024, 320  # the tiny CLAPs' front end (50 frames/s)
ENVELOPE_BINS = 16
FLOOR_DB = -80.0  # features are dB below the clip's peak, floored here
NUM_FEATURES = 2 * N_MELS + 2 * ENVELOPE_BINS  # band means, band stds, envelope, centroid
NAME = "mel-probe-reward"
LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)

_MEL = torchaudio.transforms.MelSpectrogram(
    SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, f_min=30.0
)


def probe_features(audio: Tensor, sample_rate: int) -> Tensor:
    """Fixed features of whole clips (every sample of a row counts; padding reads as silence).

    Args:
        audio: [B, N] float at `sample_rate`.

    Returns:
        [B, F] float32: per band mean [M] and std [M] over time of the log-mel in dB below the
        clip's peak, the loudness envelope [16] (mean frame power per equal time bin, dB below
        the loudest bin) and the centroid trajectory [16] (power-weighted mean mel-band index per
        bin, 0..M-1).
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be [B, N], got {tuple(audio.shape)}")
    x = resample(audio.float(), sample_rate, SAMPLE_RATE)
    mel = _MEL.to(x.device)(x)  # [B, M, T] power
    db = 10 * torch.log10(mel + 1e-10)
    db = (db - db.amax(dim=(1, 2), keepdim=True)).clamp_min(FLOOR_DB)  # [B, M, T]
    power = F.adaptive_avg_pool1d(mel.sum(1, keepdim=True), ENVELOPE_BINS)[:, 0]  # [B, 16]
    env = 10 * torch.log10(power + 1e-10)
    env = (env - env.amax(dim=1, keepdim=True)).clamp_min(FLOOR_DB)  # [B, 16]
    bands = torch.arange(N_MELS, dtype=mel.dtype, device=mel.device)
    per_bin = F.adaptive_avg_pool1d(mel, ENVELOPE_BINS)  # [B, M, 16]
    centroid = (bands[:, None] * per_bin).sum(1) / per_bin.sum(1).clamp_min(1e-10)  # [B, 16]
    return torch.cat([db.mean(2), db.std(2, unbiased=False), env, centroid], dim=1)


def fit_ridge(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Closed-form ridge regression with an unpenalised bias.

    Minimises ``|x W + b - y|^2 + lam |W|^2`` (in float64).

    Args:
        x: [R, F] inputs; y: [R, E] targets; lam: >= 0.

    Returns:
        W [F, E] and b [E] (float64).
    """
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype)  # [F, F]
    w = torch.linalg.solve(gram, xc.T @ yc)  # [F, E]
    return w, y_mean - x_mean @ w


@dataclass
class MelProbe:
    """The fitted probe: z-score (`mean`, `std`: [F]) then ``W [F, E]`` and ``b [E]``."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def project(self, features: Tensor) -> Tensor:
        """[B, F] features -> [B, E] audio embeddings in the space centred at b: ``W z``."""
        p = {k: v.to(features.device) for k, v in self.tensors().items()}
        return ((features - p["mean"]) / p["std"]) @ p["weight"]

    def centre_text(self, text: Tensor) -> Tensor:
        """[B, E] unit caption embeddings -> the same minus b (the mean train caption)."""
        return text - self.bias.to(text.device, text.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}

    def save(self, folder: str | Path, metadata: dict[str, str]) -> Path:
        """Writes `folder/probe.safetensors` (float32). Returns its path."""
        path = Path(folder) / "probe.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.float().contiguous() for k, v in self.tensors().items()}, str(path), metadata
        )
        return path

    @classmethod
    def load(cls, folder: str | Path) -> MelProbe:
        path = Path(folder) / "probe.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"mel probe: no {path}. Fit it with `python -m siren_lightning.align."
                f"probe_embedding --manifest data/synthcaps/train.jsonl --val "
                f"data/synthcaps/val.jsonl --out {Path(folder)}` (see its README.md)."
            )
        return cls(**load_file(str(path)))


# ------------------------------------------------------------------------------------------
# The committed probe behind two dotted paths (what a YAML names)
# ------------------------------------------------------------------------------------------

_LOADED: dict[str, Any] = {}


def probe_path() -> Path:
    """The committed probe's folder (`assets/mel-probe-reward`; SIREN_ASSETS moves assets/)."""
    return assets_dir() / NAME


def _probe() -> MelProbe:
    if "probe" not in _LOADED:
        _LOADED["probe"] = MelProbe.load(probe_path())
    return _LOADED["probe"]


def _captions() -> CaptionEmbeddingCache:
    if "captions" not in _LOADED:
        _LOADED["captions"] = CaptionEmbeddingCache("minilm")
    return _LOADED["captions"]


def text_embedding(captions: Sequence[str], cache: CaptionEmbeddingCache) -> Tensor:
    """captions: B strings -> [B, E] L2-normalised MiniLM sentence embeddings (float32, CPU)."""
    return F.normalize(cache(list(captions)).float(), dim=-1)


@torch.no_grad()
def embed_audio(audio: Tensor, sample_rate: int) -> Tensor:
    """audio [B, N] at any rate -> [B, E] with the committed probe (on the audio's device)."""
    return _probe().project(probe_features(audio, sample_rate))


def embed_text(captions: Sequence[str]) -> Tensor:
    """captions: B strings -> [B, E] L2-normalised MiniLM embeddings minus b (CPU)."""
    return _probe().centre_text(text_embedding(captions, _captions()))


def provenance() -> dict[str, Any]:
    """What a reward built on this probe records: its folder and the weights' SHA-256."""
    path = probe_path() / "probe.safetensors"
    return {"checkpoint": NAME, "sha256": sha256_file(path) if path.is_file() else None}


embed_audio.provenance = provenance  # type: ignore[attr-defined]  # read by EmbeddingCosineReward


# ------------------------------------------------------------------------------------------
# Fitting (python -m siren_lightning.align.probe_embedding)
# ------------------------------------------------------------------------------------------


def read_split(manifest: str | Path) -> tuple[Tensor, list[list[str]], list[str]]:
    """Features [C, F] of every clip of a manifest, their captions and attribute combinations."""
    from siren_lightning.data.manifest import read_manifest

    clips = read_manifest(manifest)
    feats = [
        probe_features(load_audio(c.audio, SAMPLE_RATE, allow_silent=True)[None], SAMPLE_RATE)
        for c in clips
    ]
    keys = ("source", "pitch", "count", "envelope")
    combos = ["/".join(str(c.attributes.get(k)) for k in keys) for c in clips]
    return torch.cat(feats), [c.captions for c in clips], combos


def mean_rank(text: Tensor, audio: Tensor, owner: Tensor) -> float:
    """Mean rank (1 = best) of each query's own clip. text [Q, E], audio [C, E], owner [Q]."""
    sims = F.normalize(text, dim=-1) @ F.normalize(audio, dim=-1).T  # [Q, C]
    own = sims.gather(1, owner[:, None])
    return float((sims > own).sum(1).double().mean() + 1)


def retrieval(
    probe: MelProbe, feats: Tensor, first_text: Tensor, combos: list[str]
) -> dict[str, float]:
    """Caption->audio R@1/R@5 (the clip) and combo R@1/R@5 (a clip of its combination), first
    caption of each clip as the query, as `assets/tiny-clap-eval/README.md` reports them."""
    audio = F.normalize(probe.project(feats.double()).float(), dim=-1)
    text = F.normalize(probe.centre_text(first_text.double()).float(), dim=-1)
    ids = list(range(len(combos)))
    inst = retrieval_recall(text, audio, ids)
    combo = retrieval_recall(text, audio, combos)
    return {**inst, **{f"combo_{k}": v for k, v in combo.items()}}


def fit(
    train: str | Path,
    val: str | Path,
    test: str | Path | None = None,
    lambdas: Sequence[float] = LAMBDAS,
) -> tuple[MelProbe, dict[str, Any]]:
    """Fits W, b on `train` for each lambda and keeps the best val mean rank (every val caption
    a query); `test`, if given, is only reported."""
    cache = CaptionEmbeddingCache("minilm")
    x_train, caps_train, _ = read_split(train)
    mean, std = x_train.double().mean(0), x_train.double().std(0).clamp_min(1e-6)
    rows = torch.tensor([i for i, caps in enumerate(caps_train) for _ in caps])  # [R]
    y = text_embedding([c for caps in caps_train for c in caps], cache).double()  # [R, E]
    z = (x_train.double() - mean) / std  # [C, F]
    x_val, caps_val, combos_val = read_split(val)
    val_owner = torch.tensor([i for i, caps in enumerate(caps_val) for _ in caps])
    val_text = text_embedding([c for caps in caps_val for c in caps], cache)
    scores: dict[float, float] = {}
    probes: dict[float, MelProbe] = {}
    for lam in lambdas:
        probes[lam] = MelProbe(mean, std, *fit_ridge(z[rows], y, lam))
        audio = probes[lam].project(x_val.double()).float()
        scores[lam] = mean_rank(
            probes[lam].centre_text(val_text.double()).float(), audio, val_owner
        )
    lam = min(scores, key=scores.__getitem__)
    report: dict[str, Any] = {
        "lambda": lam,
        "val_mean_rank_by_lambda": {str(k): round(v, 3) for k, v in scores.items()},
        "train_clips": len(caps_train),
        "train_rows": len(rows),
        "features": NUM_FEATURES,
    }
    splits = {"val": (x_val, caps_val, combos_val)}
    if test is not None:
        splits["test"] = read_split(test)
    for split, (x, caps, combos) in splits.items():
        first = text_embedding([c[0] for c in caps], cache)
        report[split] = {"clips": len(caps), **retrieval(probes[lam], x, first, combos)}
    return probes[lam], report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m siren_lightning.align.probe_embedding",
        description="Fit the mel probe (ridge from fixed audio features to MiniLM caption "
        "embeddings); lambda picked on --val by caption->audio mean rank.",
    )
    parser.add_argument("--manifest", required=True, help="train JSONL (every caption is a row)")
    parser.add_argument("--val", required=True, help="val JSONL (picks lambda)")
    parser.add_argument("--test", help="optional test JSONL: retrieval reported, never used to fit")
    parser.add_argument("--out", default=str(probe_path()), help="folder for probe.safetensors")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    probe, report = fit(args.manifest, args.val, args.test)
    report["seconds"] = round(time.perf_counter() - start, 1)
    # one metadata key: safetensors writes several in a per-process order (not reproducible)
    path = probe.save(args.out, {"fit": f"ridge lambda {report['lambda']}, text encoder minilm"})
    report["sha256"] = sha256_file(path)
    (Path(args.out) / "fit_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
