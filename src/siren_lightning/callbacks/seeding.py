"""`StepSeed`: every training batch draws its randomness from a seed of its own position.

Dropout, caption dropout and any other draw from the process-wide generators then depend only on
(seed, epoch, batch index, rank), not on what ran before in the process (validation, loader
start-up, a resume). A run resumed from a checkpoint therefore draws exactly what the
uninterrupted run drew; together with `data.resumable` (the batches) this makes resume exact.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from siren_lightning.data.resumable import global_seed, mix_seed


class StepSeed(L.Callback):
    """Seeds torch (all devices), numpy and `random` before every training batch.

    Args:
        seed: base seed; default: the seed of `seed_everything` (PL_GLOBAL_SEED), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        base = global_seed() if self.seed is None else self.seed
        seed = mix_seed(base, trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
