"""Multi-GPU strategies for the large presets: Lightning's FSDP, wrapping each transformer block.

`SirenFSDPStrategy` is `lightning.pytorch.strategies.FSDPStrategy` with the wrap policy set to
the blocks of `models.blocks` (so each temporal and decoder block is one FSDP unit: parameters,
gradients and AdamW states are sharded over the processes, and a block's full weights exist only
while it runs) and `use_orig_params=True` (so the AdamW groups of `PretrainModule`, which split
parameters by their number of dimensions, and the frozen experts of `train_groups` keep working).
A YAML names it by class path; every FSDPStrategy argument can still be set (e.g.
`cpu_offload: true`, `sharding_strategy: SHARD_GRAD_OP`, `state_dict_type: sharded`).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy

from siren_lightning.models.blocks import DecoderBlock, TemporalBlock


class SirenFSDPStrategy(FSDPStrategy):
    """FSDP with one unit per `TemporalBlock` / `DecoderBlock` (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", {TemporalBlock, DecoderBlock})
        kwargs.setdefault("use_orig_params", True)
        super().__init__(**kwargs)
