"""`LogProgress`: plain progress lines for runs whose output goes to a file or a pipe.

Lightning's rich progress bar draws nothing when stdout is not a terminal, so `make pretrain |
tee log` stayed silent for the whole run. `siren fit` adds this callback whenever stdout is not
a terminal; a line looks like

    step 150/1500 (10%) | loss 4.1234 | 2.31 it/s | ETA 9m44s

and a validation adds `validation at step 150: val/loss 4.0012`. Only global rank 0 prints.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

import lightning as L
import torch


def format_seconds(seconds: float) -> str:
    """1h02m, 9m44s or 12s."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LogProgress(L.Callback):
    """One line every `every_seconds` (and at the first and last step) with step, loss, speed
    and the estimated time left.

    Args:
        every_seconds: least time between two lines (0: a line at every step).
        stream: where to write (default: stdout at the time of writing).
    """

    def __init__(self, every_seconds: float = 30.0, stream: IO[str] | None = None) -> None:
        if every_seconds < 0:
            raise ValueError(f"LogProgress: every_seconds must be >= 0, got {every_seconds}")
        self.every_seconds = every_seconds
        self.stream = stream
        self._start_time = 0.0
        self._start_step = 0
        self._last_line = -math.inf

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_time = time.monotonic()
        self._start_step = trainer.global_step
        self._last_line = -math.inf

    @staticmethod
    def _total_steps(trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None

    @staticmethod
    def _loss(trainer: L.Trainer, outputs: Any) -> float | None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            loss = trainer.callback_metrics.get("train/loss")
        return float(loss) if isinstance(loss, torch.Tensor) else None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero:
            return
        now, step = time.monotonic(), trainer.global_step
        total = self._total_steps(trainer)
        first, last = step == self._start_step + 1, total is not None and step >= total
        if not (first or last or now - self._last_line >= self.every_seconds):
            return
        self._last_line = now
        done = step - self._start_step
        rate = done / max(now - self._start_time, 1e-9)
        parts = [f"step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")]
        loss = self._loss(trainer, outputs)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{rate:.2f} it/s")
        if total:
            parts.append(f"ETA {format_seconds((total - step) / rate if rate > 0 else math.inf)}")
        self._write(" | ".join(parts))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        if isinstance(value, torch.Tensor):
            self._write(f"validation at step {trainer.global_step}: val/loss {float(value):.4f}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            spent = format_seconds(time.monotonic() - self._start_time)
            self._write(f"training stopped at step {trainer.global_step} after {spent}")
