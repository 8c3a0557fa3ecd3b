"""What `SirenLM` and `DelayPatternLM` share (DESIGN.md section 5), written once.

Letters: B batch, r codebooks, T frames, K codebook size, D width, D_lat codec latent width,
L text tokens, Dt text width.

- `LMConfigMethods`: `from_name` (named sizes), `from_dict` / `to_dict` (config.json).
- `TextConditionedStack`: a stack of `TemporalBlock`s that reads text by cross-attention: the
  text keys/values, the prompt summary, the KV caches of its self-attentions and the
  (checkpointed) block loop with positions and clip timing re-added before every block. Each
  Siren expert's temporal transformer is one; the delay LM is one.
- `CodecLM`: the frozen codec codebook table, the input checks, which codebooks each group
  predicts, gradient checkpointing, `from_codec` and `generate`.
- `check_same_architecture`: refuse weights recorded for another LM (checkpoints, exports).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from siren_lightning.models import sampling
from siren_lightning.models.blocks import DurationEmbedding, sinusoidal_positions


class LMOutput(NamedTuple):
    """What an LM's `forward` returns.

    Attributes:
        logits: [B, n, T, K] for the n predicted codebooks (all r unless groups were chosen).
        mask: [B, n, T] bool, True where the target is a real frame.
        codebooks: the n codebook indices, in the order of the logits.
        hidden: [B, G', T, D] the temporal outputs of the G' experts run (`SirenLM.forward(...,
            return_hidden=True)`; the one that predicts frame t reads the frames before it),
            else None.
    """

    logits: Tensor
    mask: Tensor
    codebooks: list[int]
    hidden: Tensor | None = None


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid token states: [B, L, Dt], [B, L] -> [B, Dt] (zeros if none valid)."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # [B, L, 1]
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class LMConfigMethods:
    """Named sizes and config.json round trips for an LM config dataclass.

    A subclass sets `presets` (name -> field values; nothing looks at the name) and may list
    `legacy_fields`: keys that older config.json files hold and that are now ignored.
    Fields declared with `init=False` are derived and never written.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    legacy_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Any:
        """A named size (`tiny`, `1.6b`, `3.1b`) with fields replaced by `overrides`."""
        if name not in cls.presets:
            raise ValueError(f"{cls.__name__}: unknown size {name!r}; known: {sorted(cls.presets)}")
        return cls(**{**cls.presets[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Rebuild from `to_dict`/`asdict` output (derived and legacy fields ignored)."""
        names = {f.name for f in fields(cls) if f.init}
        derived = {f.name for f in fields(cls) if not f.init}
        unknown = set(values) - names - derived - cls.legacy_fields
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Init arguments (JSON-serialisable) that rebuild this config."""
        init = {f.name for f in fields(self) if f.init}
        return {k: v for k, v in asdict(self).items() if k in init}


class TextConditionedStack(nn.Module):
    """A stack of `TemporalBlock`s with cross-attention to text (one Siren expert's temporal
    transformer, or the whole delay LM).

    A subclass builds `summary` (Dt -> D), `duration` (a `DurationEmbedding` or None) and
    returns its blocks and their final RMSNorm from `stack()`.
    """

    summary: nn.Linear
    duration: DurationEmbedding | None
    gradient_checkpointing: bool = False

    def stack(self) -> tuple[nn.ModuleList, nn.RMSNorm]:
        """The temporal blocks and the RMSNorm after them."""
        raise NotImplementedError

    def text_kv(self, text_states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys/values of every block: [B, L, Dt] -> [B, H, L, D/H]s."""
        return [block.cross.text_kv(text_states) for block in self.stack()[0]]

    def text_summary(self, text_states: Tensor, text_mask: Tensor) -> Tensor:
        """Prompt summary: masked mean of the token states, projected. -> [B, D]."""
        return self.summary(masked_mean(text_states, text_mask))

    def set_kv_cache(self, max_len: int | None) -> None:
        """Give every block's self-attention an empty cache of max_len positions (None: drop
        them). With caches set, `run_stack` continues the positions cached so far."""
        for block in self.stack()[0]:
            block.attn.set_kv_cache(max_len)

    def run_stack(
        self,
        x: Tensor,
        text_kv: list[tuple[Tensor, Tensor]],
        text_mask: Tensor,
        offset: int = 0,
        timing: Tensor | None = None,
    ) -> Tensor:
        """The blocks, positions (and the clip timing) re-added before each, then the norm.

        Args:
            x: [B, T, D] inputs of positions offset .. offset + T - 1 (with caches set,
                positions 0 .. offset - 1 are in them).
            text_kv: from `text_kv`; text_mask: [B, L] bool.
            timing: [B, T, 2] `clip_timing` of those positions; used (and needed) only when
                `duration` is set.

        Returns:
            [B, T, D] normalised outputs.
        """
        blocks, norm = self.stack()
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        pos = sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)  # [T, D]
        if self.duration is not None:
            if timing is None:
                raise ValueError(f"{type(self).__name__}: duration-conditioned; pass timing")
            pos = pos + self.duration(timing).to(x.dtype)  # [B, T, D]
        for i, block in enumerate(blocks):
            x = x + pos
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, text_kv[i], text_mask, use_reentrant=False)
            else:
                x = block(x, text_kv[i], text_mask)
        return norm(x)


class CodecLM(nn.Module):
    """An LM over a codec's r codebooks of K codes, conditioned on text token states.

    A subclass sets `config_class`, builds `self.config` and calls `init_codebook_table`, and
    says which codebooks each of its groups predicts (`num_groups`, `codebooks_of`): the
    trainer and the alignment read these, never the config's layout.
    """

    config_class: ClassVar[type]
    config: Any
    codebook_table: Tensor

    def init_codebook_table(self, table: Tensor | None) -> None:
        """The frozen [r, K, D_lat] codec vectors as a buffer (zeros until set when None)."""
        c = self.config
        self.register_buffer(
            "codebook_table", torch.zeros(c.num_codebooks, c.codebook_size, c.latent_dim)
        )
        if table is not None:
            self.set_codebook_table(table)

    def set_codebook_table(self, table: Tensor) -> None:
        """Copy the codec's [r, K, D_lat] vectors into the frozen buffer (shapes must agree)."""
        c = self.config
        expected = (c.num_codebooks, c.codebook_size, c.latent_dim)
        if tuple(table.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: codebook_table has shape {tuple(table.shape)} "
                f"(r, K, D_lat) but the config expects {expected}"
            )
        with torch.no_grad():
            self.codebook_table.copy_(table.detach())

    @classmethod
    def from_codec(cls, codec: Any, size: str, overrides: dict[str, Any] | None = None) -> CodecLM:
        """A named size on a codec: r, K and D_lat (and the table) come from the codec.

        A YAML names it as the network's class_path, stating only what differs from the size:
        `class_path: siren_lightning.models.siren.SirenLM.from_codec`, `init_args: {codec:
        assets/codec_tiny, size: tiny, overrides: {dropout: 0.0}}`.

        Args:
            codec: `n_codebooks`, `codebook_size`, `latent_dim`, `codebook_table()`; or a spec
                for `codec.checkpoint.load_codec` (folder, .ckpt, `dac:16khz`).
            size: a preset name (`tiny`, `1.6b`, `3.1b`).
            overrides: config fields that differ from the preset.
        """
        if isinstance(codec, str | Path):
            from siren_lightning.codec.checkpoint import load_codec

            codec = load_codec(str(codec))
        sizes = dict(
            num_codebooks=codec.n_codebooks,
            codebook_size=codec.codebook_size,
            latent_dim=codec.latent_dim,
        )
        config = cls.config_class.from_name(size, **{**sizes, **(overrides or {})})
        return cls(config, codec.codebook_table().detach().float().cpu())

    @property
    def num_groups(self) -> int:
        """How many groups of codebooks are predicted by separately trainable parts."""
        raise NotImplementedError

    def codebooks_of(self, group: int) -> list[int]:
        """The codebooks group `group` predicts, in order."""
        raise NotImplementedError

    def group_module(self, group: int) -> nn.Module:
        """The part of the model that makes group `group`'s codebooks (what freezing acts on)."""
        raise NotImplementedError

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in the backward pass (saves memory, costs time)."""
        for module in self.modules():
            if isinstance(module, TextConditionedStack):
                module.gradient_checkpointing = enabled

    def check_inputs(self, codes: Tensor, text_states: Tensor, text_mask: Tensor) -> None:
        """One clear message for codes that are not [B, r, T] or text of another batch/width."""
        c, owner = self.config, f"{type(self).__name__}.forward"
        if codes.dim() != 3 or codes.shape[1] != c.num_codebooks:
            raise ValueError(
                f"{owner}: codes must be [B, r={c.num_codebooks}, T], got {tuple(codes.shape)}"
            )
        if text_states.dim() != 3 or text_states.shape[-1] != c.text_dim:
            raise ValueError(
                f"{owner}: text_states must be [B, L, Dt={c.text_dim}], "
                f"got {tuple(text_states.shape)}"
            )
        if text_states.shape[0] != codes.shape[0] or text_mask.shape != text_states.shape[:2]:
            raise ValueError(
                f"{owner}: batch mismatch: codes {tuple(codes.shape)}, text_states "
                f"{tuple(text_states.shape)}, text_mask {tuple(text_mask.shape)}"
            )

    def check_history(self, codes: Tensor, history: Tensor) -> None:
        """One clear message for a history that is not codes' shape and dtype."""
        if history.shape != codes.shape or history.dtype != codes.dtype:
            raise ValueError(
                f"{type(self).__name__}.forward: history must match codes "
                f"{tuple(codes.shape)} {codes.dtype}, got {tuple(history.shape)} {history.dtype}"
            )

    def check_control(self, control: Tensor | None, batch: int, frames: int) -> None:
        """One clear message for per-frame control features that do not fit the config."""
        dim = getattr(self.config, "control_dim", 0)
        if dim == 0:
            if control is not None:
                raise ValueError(
                    f"{type(self).__name__}: control features given, but this LM takes none "
                    "(control_dim 0)"
                )
            return
        if control is None or control.shape[0] != batch or control.shape[-1] != dim:
            got = None if control is None else tuple(control.shape)
            raise ValueError(
                f"{type(self).__name__}: control_dim {dim} needs control [B={batch}, "
                f"T>={frames}, {dim}], got {got}"
            )
        if control.dim() != 3 or control.shape[1] < frames:
            raise ValueError(
                f"{type(self).__name__}: control must be [B, T>={frames}, {dim}], got "
                f"{tuple(control.shape)}"
            )

    def end(self, state: Any) -> None:
        """After a generation: drop the caches that `begin` gave the self-attentions."""
        for module in self.modules():
            if isinstance(module, TextConditionedStack):
                module.set_kv_cache(None)

    def generate(
        self, text_states: Tensor, text_mask: Tensor, num_frames: int, **kwargs: Any
    ) -> Tensor:
        """[B, r, T] codes. `models.sampling.generate_frames` documents `kwargs`: the sampling
        settings, `uncond_states`/`uncond_mask` (the empty caption, or a negative caption per
        clip), `prompt_codes` (codes to continue), `total_frames`, `generator`."""
        return sampling.generate(self, text_states, text_mask, num_frames, **kwargs)


# Config fields a resumed run may change: they do not change what the weights mean.
RESUMABLE_FIELDS = frozenset({"dropout", "max_frames"})


def check_same_architecture(
    recorded: dict[str, Any] | None,
    recorded_class: str | None,
    network: nn.Module,
    source: str | Path,
) -> None:
    """Refuse weights recorded for another LM than `network`, naming every differing field.

    Equal shapes do not make equal models: with `num_heads` 2 -> 4 every tensor still fits, and
    a strict `load_state_dict` would take the weights without a word.

    Args:
        recorded: the model config a checkpoint or export recorded (`config.to_dict()`); None
            (an old checkpoint without one) skips the check.
        recorded_class: the LM class name it recorded, if any.
        source: the file or folder, for the message.
    """
    here = type(network).__name__
    if recorded_class is not None and recorded_class != here:
        raise ValueError(f"{source} holds a {recorded_class}, but this run builds a {here}")
    if recorded is None:
        return
    current = network.config.to_dict()
    differ = [
        f"{name}: {recorded[name]!r} there, {current[name]!r} here"
        for name in sorted(set(recorded) & set(current) - RESUMABLE_FIELDS)
        if recorded[name] != current[name]
    ]
    if differ:
        raise ValueError(
            f"{source} was trained with another {here} config ({'; '.join(differ)}); "
            "build the model with the checkpoint's values, or start a new run"
        )
