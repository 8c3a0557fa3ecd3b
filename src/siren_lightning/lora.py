"""LoRA fine-tuning of an LM's transformer linear layers with `peft` (issue 18).

`add_lora(network, settings)` injects peft's LoRA layers, in place, into every linear layer of
the transformer blocks (for `SirenLM`, each expert's temporal blocks and per-frame decoder
blocks; for `DelayPatternLM`, its blocks): attention query/key/value/output and the SwiGLU
gate/up/down. Everything else (codec projectors, text summary, heads, norms, start vectors)
stays frozen, and so do the wrapped base weights: only the adapters train.

peft's `lora.Linear` keeps the base weight as `.weight`, so code that reads weights instead of
calling the layer (the sampler's fused kernels in `models.sampling`) would see the base model
alone. Sampling therefore goes through `for_sampling`, which merges a copy, and an export
either merges (`merge_lora`) or writes the adapters alone (`adapter_state`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from siren_lightning.models.blocks import DecoderBlock, TemporalBlock

# Name of the single adapter an LM carries (peft's default).
ADAPTER = "default"


@dataclass
class LoraSettings:
    """What `add_lora` injects.

    Attributes:
        rank: r of the low-rank update `B @ A` (A [rank, Din], B [Dout, rank]).
        alpha: scale numerator; the update is `alpha / rank * B @ A`.
        dropout: dropout on the adapter's input while training.
        groups: experts to adapt (all when None); the delay-pattern LM has one group, 0.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    groups: list[int] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoraSettings: rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings: dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_layers(network: nn.Module, groups: list[int] | None = None) -> list[str]:
    """Names of the linear layers inside the transformer blocks that LoRA adapts.

    Args:
        groups: `SirenLM` experts to include (all when None); ignored for the delay LM.
    """
    names = []
    for block_name, block in network.named_modules():
        if not isinstance(block, TemporalBlock | DecoderBlock):
            continue
        expert = block_name.split(".")[1] if block_name.startswith("experts.") else None
        if groups is not None and expert is not None and int(expert) not in groups:
            continue
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                names.append(f"{block_name}.{name}")
    return names


def add_lora(network: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into `network` in place and freeze every other parameter.

    The adapters start as an exact no-op (peft initialises B to zeros).

    Returns:
        the same network, now holding `lora.Linear` layers.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(network):
        raise ValueError("add_lora: the network already holds LoRA adapters")
    targets = target_layers(network, settings.groups)
    if not targets:
        raise ValueError(f"add_lora: no transformer linear layer in groups {settings.groups}")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(config, network, adapter_name=ADAPTER)
    for name, param in network.named_parameters():
        param.requires_grad_(is_lora_parameter(name))
    return network


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter or state-dict key belongs to a LoRA adapter."""
    return ".lora_" in name


def has_lora(network: nn.Module) -> bool:
    """Whether `network` holds (unmerged) LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in network.modules())


def adapter_state(network: nn.Module) -> dict[str, Tensor]:
    """The adapters' weights alone (keys as in `network.state_dict()`)."""
    return {k: v for k, v in network.state_dict().items() if is_lora_parameter(k)}


def merge_lora(network: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + alpha/rank B A) and put the plain
    `nn.Linear` back, in place: the result has the state-dict keys of a model without LoRA.

    Returns:
        the same network.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(n, m) for n, m in network.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        module.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, module.get_base_layer())
    for param in network.parameters():
        param.requires_grad_(True)
    return network


def for_sampling(network: nn.Module) -> nn.Module:
    """`network` itself, or a merged copy when it holds LoRA layers (for the sampler, which
    reads weights rather than calling the layers)."""
    if not has_lora(network):
        return network
    return merge_lora(copy.deepcopy(network)).train(network.training)
