"""The control: one transformer over all r codebooks with the delay pattern (DESIGN.md section 5).

Letters: B batch, r codebooks, T frames, S = T + r - 1 sequence steps, K codebook size, D width,
D_lat codec latent width, L text tokens, Dt text width.

`DelayPatternLM` is MusicGen/AudioGen's single LM built from Siren's parts, so that only the
architecture differs from `SirenLM`:
- codes are interleaved by `DelayPattern` (codebook q delayed by q steps; `K` marks an idle
  codebook); the input at step s is the sum over the r codebooks of step s-1's embeddings (step
  0 reads an all-idle step), plus the prompt summary;
- a code's embedding is the frozen codec vector (`codebook_table[q, code]`, the vector the codec
  decoder sums) through a trainable per-codebook projector, as in Siren; an idle codebook has a
  learned vector of its own;
- the blocks are Siren's `TemporalBlock`s (cross-attention to the text token states, causal
  self-attention, SwiGLU; pre-norm RMSNorm; sinusoidal positions re-added before every block);
- r linear heads read step s and predict the codes of step s, which are de-interleaved back to
  frames. `forward` returns the same `SirenOutput` (logits [B, r, T, K], mask [B, r, T]) as
  `SirenLM`, so `PretrainModule` trains either.

The config exposes `group = r` and `num_groups = 1`: to the trainer the whole model is one
"group" that predicts every codebook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from siren_lightning.models.blocks import (
    DurationEmbedding,
    TemporalBlock,
    check_config_ranges,
    sinusoidal_positions,
    swiglu_hidden,
    window_timing,
)
from siren_lightning.models.delay_pattern import DelayPattern
from siren_lightning.models.siren import SirenOutput, masked_mean

# Named sizes, each at the total parameter count of the SirenLM preset of the same name
# (tested within 5%; docs/baseline.md lists the counts). Nothing in the code looks at the name.
PRESETS: dict[str, dict[str, Any]] = {
    # 14.3M vs Siren tiny's 14.2M; MiniLM text states (384-d).
    "tiny": dict(width=256, num_heads=8, num_layers=9, text_dim=384, latent_dim=128),
    # MusicGen-medium's shape (width 1536, 24 heads): 1.633B vs Siren 1.6b's 1.636B.
    "1.6b": dict(width=1536, num_heads=24, num_layers=45, text_dim=768),
    # MusicGen-large's shape (width 2048, 32 heads, 48 layers): 3.07B vs Siren 3.1b's 3.09B.
    "3.1b": dict(width=2048, num_heads=32, num_layers=48, text_dim=768),
}


@dataclass
class DelayLMConfig:
    """Sizes of a `DelayPatternLM`.

    Attributes:
        num_codebooks: r, codec codebooks.
        codebook_size: K, entries per codebook (the idle token is K).
        latent_dim: D_lat, width of the codec's per-codebook vectors (`codebook_table`).
        width: D, transformer width.
        num_heads: attention heads.
        num_layers: transformer blocks.
        text_dim: Dt, width of the text encoder's token states.
        mlp_hidden: SwiGLU hidden size; 8/3 x width rounded up to 256 when None.
        dropout: residual dropout.
        norm_eps: RMSNorm epsilon.
        bias: biases in the projector, summary, MLP and head linears (attention has none).
        max_frames: longest clip (in frames) a sampler's KV cache holds.
        duration_conditioning: tell every block how far through the requested clip each step
            is (`DurationEmbedding`, as in `SirenConfig`; off by default).
    """

    num_codebooks: int = 12
    codebook_size: int = 1024
    latent_dim: int = 1024
    width: int = 1536
    num_heads: int = 24
    num_layers: int = 45
    text_dim: int = 768
    mlp_hidden: int | None = None
    dropout: float = 0.1
    norm_eps: float = 1e-5
    bias: bool = True
    max_frames: int = 3000
    duration_conditioning: bool = False
    group: int = field(init=False)
    num_groups: int = field(init=False)

    def __post_init__(self) -> None:
        check_config_ranges(self, ("num_layers",))
        if self.width % self.num_heads:
            raise ValueError(
                f"DelayLMConfig: num_heads {self.num_heads} must divide width {self.width}"
            )
        if self.width % 2:
            raise ValueError(f"DelayLMConfig: width must be even (sinusoids), got {self.width}")
        if self.mlp_hidden is None:
            self.mlp_hidden = swiglu_hidden(self.width)
        self.group = self.num_codebooks
        self.num_groups = 1

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DelayLMConfig:
        """A named size (`tiny`, `1.6b`, `3.1b`) with fields replaced by `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"DelayLMConfig: unknown size {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DelayLMConfig:
        """Rebuild from `to_dict`/`asdict` output (derived fields ignored)."""
        names = {f.name for f in fields(cls) if f.init}
        unknown = set(values) - names - {"group", "num_groups"}
        if unknown:
            raise ValueError(f"DelayLMConfig: unknown fields {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Init arguments (JSON-serialisable) that rebuild this config."""
        out = asdict(self)
        out.pop("group")
        out.pop("num_groups")
        return out


class DelayPatternLM(nn.Module, PyTorchModelHubMixin, library_name="siren-lightning"):
    """One transformer over all r codebooks, delay-interleaved (DESIGN.md section 5).

    `save_pretrained` / `from_pretrained` come from `huggingface_hub.PyTorchModelHubMixin`.

    Args:
        config: sizes (or their dict, as read from config.json).
        codebook_table: [r, K, D_lat] codec vectors, held as a frozen buffer (zeros until
            `set_codebook_table` when None).
    """

    def __init__(
        self, config: DelayLMConfig | dict[str, Any], codebook_table: Tensor | None = None
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = DelayLMConfig.from_dict(config)
        self.config = c = config
        self.pattern = DelayPattern(c.num_codebooks, empty_token=c.codebook_size)
        self.gradient_checkpointing = False
        self.register_buffer(
            "codebook_table", torch.zeros(c.num_codebooks, c.codebook_size, c.latent_dim)
        )
        if codebook_table is not None:
            self.set_codebook_table(codebook_table)
        self.projectors = nn.ModuleList(
            nn.Linear(c.latent_dim, c.width, bias=c.bias) for _ in range(c.num_codebooks)
        )
        self.empty = nn.Parameter(torch.randn(c.num_codebooks, c.width) * 0.02)  # idle codebooks
        self.summary = nn.Linear(c.text_dim, c.width, bias=c.bias)
        self.blocks = nn.ModuleList(
            TemporalBlock(
                c.width, c.num_heads, c.text_dim, c.mlp_hidden, c.dropout, c.norm_eps, c.bias
            )
            for _ in range(c.num_layers)
        )
        self.norm = nn.RMSNorm(c.width, eps=c.norm_eps)
        self.duration = DurationEmbedding(c.width) if c.duration_conditioning else None
        self.heads = nn.ModuleList(
            nn.Linear(c.width, c.codebook_size, bias=c.bias) for _ in range(c.num_codebooks)
        )

    def set_codebook_table(self, table: Tensor) -> None:
        """Copy the codec's [r, K, D_lat] vectors into the frozen buffer (shapes must agree)."""
        c = self.config
        expected = (c.num_codebooks, c.codebook_size, c.latent_dim)
        if tuple(table.shape) != expected:
            raise ValueError(
                f"DelayPatternLM: codebook_table has shape {tuple(table.shape)} (r, K, D_lat) but "
                f"the config expects {expected}"
            )
        with torch.no_grad():
            self.codebook_table.copy_(table.detach())

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in the backward pass (saves memory, costs time)."""
        self.gradient_checkpointing = enabled

    # Pieces, also used step by step by the sampler.

    def embed(self, tokens: Tensor) -> Tensor:
        """Sum over codebooks of the step embeddings.

        Args:
            tokens: [B, r, S] long, codes in [0, K) or the idle token K.

        Returns:
            [B, S, D].
        """
        idle = tokens == self.config.codebook_size  # [B, r, S]
        codes = tokens.masked_fill(idle, 0)
        e = torch.stack(
            [
                self.projectors[q](self.codebook_table[q][codes[:, q]])
                for q in range(codes.shape[1])
            ],
            dim=1,
        )  # [B, r, S, D_lat] -> [B, r, S, D]
        e = torch.where(idle[..., None], self.empty[None, :, None].to(e.dtype), e)
        return e.sum(1)

    def projected_table(self) -> Tensor:
        """Every code's embedding, idle token last: [r, K + 1, D] (the sampler's lookup table)."""
        c = self.config
        rows = [self.projectors[q](self.codebook_table[q]) for q in range(c.num_codebooks)]
        table = torch.stack(rows)  # [r, K, D]
        return torch.cat([table, self.empty[:, None].to(table.dtype)], dim=1)

    def text_kv(self, text_states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys/values of every block: [B, L, Dt] -> [B, H, L, D/H]s."""
        return [block.cross.text_kv(text_states) for block in self.blocks]

    def text_summary(self, text_states: Tensor, text_mask: Tensor) -> Tensor:
        """Prompt summary: masked mean of the token states, projected. -> [B, D]."""
        return self.summary(masked_mean(text_states, text_mask))

    def run(
        self,
        x: Tensor,
        text_kv: list[tuple[Tensor, Tensor]],
        text_mask: Tensor,
        caches: list | None = None,
        offset: int = 0,
        timing: Tensor | None = None,
    ) -> Tensor:
        """Blocks over steps offset .. offset + S - 1, then the r heads.

        Args:
            x: [B, S, D] step inputs (embeddings + summary).
            text_kv: from `text_kv`; text_mask: [B, L] bool.
            caches: one `KVCache` per block (step-by-step sampling), or None.
            timing: [B, S, 2] `clip_timing` of frame s at step s (codebook 0's frame); used
                (and needed) only with `duration_conditioning`.

        Returns:
            [B, r, S, K] logits of the codes of each step.
        """
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        pos = sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)  # [S, D]
        if self.duration is not None:
            if timing is None:
                raise ValueError("DelayPatternLM.run: duration-conditioned; pass timing")
            pos = pos + self.duration(timing).to(x.dtype)  # [B, S, D]
        for i, block in enumerate(self.blocks):
            x = x + pos
            cache = None if caches is None else caches[i]
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, text_kv[i], text_mask, use_reentrant=False)
            else:
                x = block(x, text_kv[i], text_mask, cache)
        x = self.norm(x)
        return torch.stack([head(x) for head in self.heads], dim=1)  # [B, r, S, K]

    def step_inputs(self, codes: Tensor, mask: Tensor) -> Tensor:
        """The token sequence the LM reads: step s holds the interleaved codes of step s - 1.

        Args:
            codes: [B, r, T] long; mask: [B, T] bool. Padded frames become idle, so a padded
                clip reads exactly like a shorter one.

        Returns:
            [B, r, S] long (step 0 all idle).
        """
        seq = self.pattern.interleave(codes.masked_fill(~mask[:, None], self.config.codebook_size))
        start = seq.new_full((seq.shape[0], seq.shape[1], 1), self.config.codebook_size)
        return torch.cat([start, seq[..., :-1]], dim=-1)  # [B, r, S]

    def forward(
        self,
        codes: Tensor,
        text_states: Tensor,
        text_mask: Tensor,
        mask: Tensor | None = None,
        groups: list[int] | None = None,
        total_frames: Tensor | None = None,
        frame_offset: Tensor | None = None,
    ) -> SirenOutput:
        """Teacher-forced logits of every codebook.

        Args:
            codes: [B, r, T] long.
            text_states: [B, L, Dt]; text_mask: [B, L] bool.
            mask: [B, T] bool, True for real frames (all True if None).
            groups: None or [0] (the model is one group; the argument mirrors `SirenLM`).
            total_frames, frame_offset: [B] clip lengths and window starts for
                `duration_conditioning`, as in `SirenLM.forward`.

        Returns:
            `SirenOutput` with logits [B, r, T, K], mask [B, r, T] and codebooks 0 .. r-1.
        """
        c = self.config
        if codes.dim() != 3 or codes.shape[1] != c.num_codebooks:
            raise ValueError(
                f"DelayPatternLM.forward: codes must be [B, r={c.num_codebooks}, T], "
                f"got {tuple(codes.shape)}"
            )
        b, r, t = codes.shape
        if text_states.dim() != 3 or text_states.shape[-1] != c.text_dim:
            raise ValueError(
                f"DelayPatternLM.forward: text_states must be [B, L, Dt={c.text_dim}], "
                f"got {tuple(text_states.shape)}"
            )
        if text_states.shape[0] != b or text_mask.shape != text_states.shape[:2]:
            raise ValueError(
                f"DelayPatternLM.forward: batch mismatch: codes {tuple(codes.shape)}, text_states "
                f"{tuple(text_states.shape)}, text_mask {tuple(text_mask.shape)}"
            )
        if groups is not None and list(groups) != [0]:
            raise ValueError(f"DelayPatternLM.forward: groups must be None or [0], got {groups}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=codes.device)
        text_states = text_states.to(self.codebook_table.dtype)
        x = self.embed(self.step_inputs(codes, mask))  # [B, S, D]
        x = x + self.text_summary(text_states, text_mask)[:, None]
        timing = None
        if c.duration_conditioning:
            timing = window_timing(mask, x.shape[1], total_frames, frame_offset)  # [B, S, 2]
        logits = self.run(x, self.text_kv(text_states), text_mask, timing=timing)
        logits = self.pattern.deinterleave(logits)  # [B, r, S, K] -> [B, r, T, K]
        return SirenOutput(logits, mask[:, None].expand(b, r, t), list(range(r)))
