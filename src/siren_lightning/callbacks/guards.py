"""`NaNGuard`: stop a run at the first non-finite loss or gradient, keeping the last good state.

A NaN or inf loss poisons the weights at the next optimizer step, and every later checkpoint
with them. The guard looks at the loss before the backward pass (the weights are still those of
the last good step) and, when asked, at the gradients before the optimizer step; on the first
non-finite value it saves a checkpoint of that state and raises `NonFiniteLossError` naming the
step, the epoch and batch, and the clip ids of the batch. Under DDP the decision is reduced over
the processes, so every rank stops together. Works with automatic and manual optimisation
(`manual_backward` calls the same hook): any stage (codec, pretrain, align) adds it to its
trainer's callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """A training loss or gradient was NaN or infinite."""


class NaNGuard(L.Callback):
    """Stops training on a non-finite loss (and gradient) after saving the last good state.

    Args:
        dirpath: where the checkpoint goes; default: the first ModelCheckpoint's folder, else
            `<default_root_dir>/checkpoints`.
        check_gradients: also check the gradients before each optimizer step (skipped when an
            fp16 GradScaler is active: it skips overflowing steps by design).
        save: write the checkpoint (off: only stop).
    """

    def __init__(
        self, dirpath: str | None = None, check_gradients: bool = True, save: bool = True
    ) -> None:
        self.dirpath = dirpath
        self.check_gradients = check_gradients
        self.save = save
        self._ids: list[str] = []
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ids = batch.get("ids") if isinstance(batch, dict) else None
        self._ids = [str(i) for i in ids] if ids is not None else []
        self._batch_idx = batch_idx

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        self._check(trainer, "loss", loss.detach())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None):
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            self._check(trainer, "gradient", torch.stack([n.float() for n in norms]))

    def _check(self, trainer: L.Trainer, what: str, values: Tensor) -> None:
        finite = bool(torch.isfinite(values).all())
        stop = trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not stop:
            return
        step, epoch = trainer.global_step, trainer.current_epoch
        where = "on another process" if finite else f"({_describe(values)}) on this process"
        path = self._save(trainer, step) if self.save else None
        ids = ", ".join(self._ids[:8]) + (" ..." if len(self._ids) > 8 else "")
        kept = (
            f"The last good state (before this step's update) is saved at {path}"
            if path is not None
            else "No checkpoint was saved (save=False)"
        )
        raise NonFiniteLossError(
            f"NaNGuard: non-finite training {what} {where} at global step {step} "
            f"(epoch {epoch}, batch {self._batch_idx}; clips: {ids or 'unknown'}); the run stops. "
            f"{kept}. Resume from it with a lower learning rate or without these clips."
        )

    def _save(self, trainer: L.Trainer, step: int) -> Path:
        folder = self.dirpath
        if folder is None:
            ckpt = trainer.checkpoint_callback
            folder = getattr(ckpt, "dirpath", None) or str(
                Path(trainer.default_root_dir) / "checkpoints"
            )
        path = Path(folder) / f"nonfinite-step={step}.ckpt"
        trainer.save_checkpoint(path)
        return path


def _describe(values: Tensor) -> str:
    if torch.isnan(values).any():
        return "nan"
    return "+inf" if (values == float("inf")).any() else "-inf"
