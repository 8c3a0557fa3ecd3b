"""Evaluation metrics (torchmetrics), their backbones and the pinned evaluation protocol."""

from siren_lightning.metrics.clap_score import CLAPScore
from siren_lightning.metrics.frechet import FrechetDistance, FrechetDistanceError
from siren_lightning.metrics.inception import InceptionScore
from siren_lightning.metrics.kl import KLDivergence, PairingError, pair_by_id

__all__ = [
    "CLAPScore",
    "FrechetDistance",
    "FrechetDistanceError",
    "InceptionScore",
    "KLDivergence",
    "PairingError",
    "pair_by_id",
]
