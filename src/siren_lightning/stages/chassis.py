"""What the training stages share: the optimizer from YAML (every stage), and the chassis of the
LM stages (`PretrainModule`, `AlignModule`):

- the frozen text encoder is never saved in checkpoints, and is put back before weights load;
- the codec may be given as a spec string and is loaded (in eval mode) on first use;
- the `siren` checkpoint record that `siren export` rebuilds the LM from, and the check that a
  checkpoint holds this architecture before its weights load;
- freezing every group of codebooks but the trained ones (asking the LM which part makes them).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from siren_lightning.models.base import check_same_architecture

# A stage's default optimizer, written as the YAML would write it: a stage's init argument
# `optimizer: OptimizerCallable = <this dict>` lets a YAML override one value
# (`optimizer: {init_args: {lr: 2.0e-3}}`) or choose another class (`class_path: torch.optim.SGD`).
OptimizerSpec = dict[str, Any]


# Init arguments that moved (issue 16), and where each went: an old YAML or run config that names
# one fails with this hint (`siren` CLI) rather than a bare "not accepted".
_HELDOUT = "the trainer callback siren_lightning.callbacks.heldout.HeldoutEvaluation's "
MOVED_ARGS = {
    **{k: f"optimizer.init_args.{k}" for k in ("lr", "betas", "weight_decay")},
    **{k: f"rollout.{k} (AlignModule)" for k in ("group_size", "seconds")},
    "rollout_sampling": "rollout.sampling (AlignModule)",
    "rollout_seed": "rollout.seed (AlignModule)",
    **{
        k: f"objective.{k} (AlignModule)"
        for k in [
            "strategy",
            "kl_coef",
            "kl_estimator",
            "clip_eps",
            "ppo_epochs",
            "entropy_coef",
            "dpo_beta",
            "crpo_nll_coef",
            "grad_clip",
        ]
    },
    **{
        f"eval_{old}": _HELDOUT + new
        for old, new in {
            "every_n_steps": "every_n_steps",
            "clips": "num_clips",
            "seconds": "seconds",
            "sampling": "sampling",
            "preset": "preset",
            "tiny_clap": "tiny_clap",
            "clap_checkpoint": "clap_checkpoint",
            "cache": "cache_dir",
            "manifest": "manifest",
        }.items()
    },
}


def moved_arg_hint(name: str) -> str | None:
    """Where a stage's old init argument `name` went, as one sentence (None: not a moved one)."""
    if name not in MOVED_ARGS:
        return None
    return (
        f"{name} is now {MOVED_ARGS[name]} (the stages' arguments were regrouped in issue 16; "
        "see experiments/siren_tiny.yaml and experiments/align_tiny.yaml)"
    )


def optimizer_factory(spec: OptimizerCallable | OptimizerSpec, default: OptimizerSpec) -> Any:
    """The callable `params -> Optimizer` a stage builds its optimizer with.

    Args:
        spec: what LightningCLI passes (a callable of the parameters), or, from Python, a dict
            `{"class_path"?, "init_args"?}`; a dict that names no other class than `default`
            updates `default`'s init_args, as jsonargparse merges a YAML's onto the signature's.
        default: the stage's default optimizer (its signature's).
    """
    if callable(spec):
        return spec
    class_path = spec.get("class_path", default["class_path"])
    init_args = dict(spec.get("init_args") or {})
    if class_path == default["class_path"]:
        init_args = {**default.get("init_args", {}), **init_args}
    module, _, name = class_path.rpartition(".")
    return functools.partial(getattr(importlib.import_module(module), name), **init_args)


def check_optimizer(make: Any, owner: str) -> None:
    """Build the optimizer once over a dummy parameter: a bad value fails at init, not at fit."""
    try:
        make([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{owner}: optimizer: {exc}") from exc


def decay_groups(params: Iterable[nn.Parameter]) -> list[dict[str, Any]]:
    """Parameter groups that decay weights of 2+ dimensions only (the optimizer's weight_decay),
    never biases, norms or other vectors."""
    params = list(params)
    return [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def check_codec_fits(codec: nn.Module, config: Any) -> None:
    """Raise one clear error when a codec's r and K are not those an LM config was built for."""
    if (codec.n_codebooks, codec.codebook_size) != (config.num_codebooks, config.codebook_size):
        raise ValueError(
            f"codec and LM disagree: codec has r={codec.n_codebooks} codebooks of "
            f"K={codec.codebook_size}, the LM was built for r={config.num_codebooks}, "
            f"K={config.codebook_size}"
        )


def network_from_spec(spec: dict[str, Any]) -> Any:
    """The LM a YAML's `model.init_args.network` entry (`class_path`, `init_args`) builds, built
    the way LightningCLI builds it (e.g. `SirenLM.from_codec` with a size and its overrides)."""
    from jsonargparse import ArgumentParser

    from siren_lightning.models.base import CodecLM

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--network", type=CodecLM)
    return parser.instantiate_classes(parser.parse_object({"network": spec})).network


class FrozenTextModule(L.LightningModule):
    """A LightningModule holding a frozen pretrained `self.text_encoder` (or None) whose
    checkpoints leave it out: the YAML names it, the weights come from its own files."""

    text_encoder: Any

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in state.items() if not k.startswith(prefix + "text_encoder.")}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, **kwargs: Any):
        if self.text_encoder is not None:
            own = self.text_encoder.state_dict(prefix="text_encoder.")
            state_dict = {**own, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, **kwargs)


class StageModule(FrozenTextModule):
    """Chassis of a stage that trains a `models.base.CodecLM` held as `self.network`.

    A subclass sets `self.network` and `self.text_encoder` and calls `init_codec`.
    """

    network: Any
    text_encoder: Any

    def init_codec(self, codec: nn.Module | str | None) -> None:
        """Keep the codec (or its spec, loaded on first use) out of `nn.Module` bookkeeping:
        never moved with the module, never saved in its checkpoints."""
        self.codec_spec = codec if isinstance(codec, str) else None
        self._codec = [codec]  # a list hides it from nn.Module

    @property
    def codec(self) -> Any:
        """The codec (loaded on first use when given as a spec; None when none was given)."""
        if isinstance(self._codec[0], str):
            from siren_lightning.codec.checkpoint import load_codec

            self._codec[0] = load_codec(self._codec[0]).eval()
        return self._codec[0]

    def train_only(self, groups: list[int]) -> None:
        """Freeze every group of codebooks of the LM but `groups`."""
        for k in range(self.network.num_groups):
            self.network.group_module(k).requires_grad_(k in groups)

    def checkpoint_record(
        self, codec_spec: Any, codec_sha256: str | None, train_groups: list[int]
    ) -> dict[str, Any]:
        """The `siren` record: what `siren export` needs to rebuild the LM without Lightning."""
        codec, enc = self.codec, self.text_encoder
        return {
            "model_class": type(self.network).__name__,
            "model_config": self.network.config.to_dict(),
            "codec": codec_spec,
            "codec_sha256": codec_sha256,
            "sample_rate": getattr(codec, "sample_rate", None),
            "hop_length": getattr(codec, "hop_length", None),
            "text_encoder": None
            if enc is None
            else {
                "backend": getattr(enc, "backend", None),
                "name_or_path": getattr(enc, "name_or_path", None),
                "source": getattr(enc, "source", None),
                "max_length": getattr(enc, "max_length", None),
            },
            "train_groups": train_groups,
        }

    def check_checkpoint_architecture(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture (before its weights load)."""
        meta = checkpoint.get("siren") or {}
        source = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        check_same_architecture(
            meta.get("model_config"), meta.get("model_class"), self.network, source
        )
