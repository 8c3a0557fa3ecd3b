"""Multi-GPU strategies for the large presets: Lightning's FSDP, wrapping each transformer block.

`SirenFSDPStrategy` is `lightning.pytorch.strategies.FSDPStrategy` with the wrap policy set to
the blocks of `models.blocks` (so each temporal and decoder block is one FSDP unit: parameters,
gradients and AdamW states are sharded over the processes, and a block's full weights exist only
while it runs) and `use_orig_params=True` (so the frozen experts of `train_groups` keep working).
Caveat, read from torch and not yet run on GPUs: with two or more processes the parameters that
`configure_optimizers` sees are flattened 1-D shards, so `PretrainModule`'s AdamW split by
number of dimensions (weight decay on 2-D weights) decays nothing; one process runs NO_SHARD and
is unaffected. `benchmarks/gpu_check.py`'s smoke run checks the decay group.
A YAML names it by class path; every FSDPStrategy argument can still be set (e.g.
`cpu_offload: true`, `sharding_strategy: SHARD_GRAD_OP`, `state_dict_type: sharded`).
Clipping by norm (`gradient_clip_val`, which the YAMLs set) goes through the root FSDP module's
`clip_grad_norm_`, the norm over all shards: Lightning's own FSDP precision plugin refuses it for
want of a reference to that module, which the strategy holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from siren_lightning.models.blocks import DecoderBlock, TemporalBlock


class SirenFSDPStrategy(FSDPStrategy):
    """FSDP with one unit per `TemporalBlock` / `DecoderBlock` (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", {TemporalBlock, DecoderBlock})
        kwargs.setdefault("use_orig_params", True)
        super().__init__(**kwargs)

    def setup(self, trainer: pl.Trainer) -> None:
        self.clip_through_root()
        super().setup(trainer)

    def clip_through_root(self) -> None:
        """Swap the precision plugin for one that clips by norm through `self.model` (the root
        FSDP module once `setup` has wrapped it)."""
        plugin = self.precision_plugin
        if not isinstance(plugin, _RootNormClipping):
            self.precision_plugin = _RootNormClipping(plugin, lambda: self.model)


class _RootNormClipping(FSDPPrecision):
    """`FSDPPrecision` (same precision and scaler) whose clipping by norm is the root FSDP
    module's `clip_grad_norm_` (`torch.nn.utils.clip_grad_norm_` on shards would be wrong)."""

    def __init__(self, plugin: FSDPPrecision, root: Callable[[], nn.Module]) -> None:
        super().__init__(plugin.precision)
        self.scaler = plugin.scaler  # (the constructor refuses a given scaler, even for 16-mixed)
        self._root = root

    def clip_grad_by_norm(self, optimizer: Any, clip_val: float) -> None:
        self._root().clip_grad_norm_(clip_val)
