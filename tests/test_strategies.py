"""`SirenFSDPStrategy`: clipping by norm reaches the root FSDP module (FSDP itself needs CUDA, so
the root here is a stand-in that records the call; `benchmarks/gpu_check.py` runs the real one)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision

from siren_lightning.strategies import SirenFSDPStrategy


class RecordingRoot(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.clipped: list[float] = []

    def clip_grad_norm_(self, max_norm: float) -> None:
        self.clipped.append(max_norm)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_clipping_by_norm_goes_through_the_root_fsdp_module(precision):
    strategy = SirenFSDPStrategy()
    strategy.precision_plugin = FSDPPrecision(precision)  # what Lightning's connector installs
    scaler = strategy.precision_plugin.scaler
    strategy.model = RecordingRoot()  # `setup` puts the FSDP-wrapped module here
    strategy.clip_through_root()
    strategy.clip_through_root()  # idempotent: setup may run more than once
    plugin = strategy.precision_plugin
    assert isinstance(plugin, FSDPPrecision)
    assert plugin.precision == precision and plugin.scaler is scaler
    plugin.clip_gradients(None, 0.5)  # gradient_clip_val 0.5, algorithm "norm"
    plugin.clip_gradients(None, 0.0)  # no clipping configured: nothing called
    assert strategy.model.clipped == [0.5]
