"""Siren stage 1: collaborative residual transformers (DESIGN.md sections 1 and 5).

Letters: B batch, r codebooks, g codebooks per expert (`group`, 2 in the paper), T frames,
K codebook size, D width, D_lat codec latent width, L text tokens, Dt text width.

`SirenLM` holds r/g isolated experts (`ResidualGroupTransformer`, no shared weights). Expert k
predicts codebooks g*k .. g*k+g-1 of frame t from
- a temporal transformer over frames: its input at t is the sum over all r codebooks of frame
  t-1's projected codec vectors (a learned start vector at t = 0); blocks of cross-attention to
  the text states, causal self-attention and SwiGLU;
- a per-frame decoder over the causal token sequence `[h_t, before, before + e_{gk}(t), ...]`
  where `before = summary + sum_{j < gk} e_j(t)`; head i reads token i + 1 and predicts code
  gk + i, so code gk + i sees the current frame's codebooks < gk + i and nothing later.
`e_j(t)` is the frozen codec vector of codebook j's code at frame t (the exact vector the codec
decoder sums, `codebook_table[j, code]`) through the expert's own trainable projector j.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from siren_lightning.models.blocks import (
    DecoderBlock,
    DurationEmbedding,
    TemporalBlock,
    check_config_ranges,
    sinusoidal_positions,
    swiglu_hidden,
    window_timing,
)

# Named sizes. Only the numbers differ; nothing in the code looks at the name.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: a few million parameters per expert, MiniLM text states (384-d).
    "tiny": dict(
        width=128, num_heads=4, temporal_layers=4, decoder_layers=1, text_dim=384, latent_dim=128
    ),
    # The paper's sizes on DAC 16 kHz (r = 12, K = 1024, out_proj to 1024) and CLAP text (768).
    "1.6b": dict(width=1024, num_heads=16, temporal_layers=14, decoder_layers=2, text_dim=768),
    "3.1b": dict(width=1024, num_heads=16, temporal_layers=24, decoder_layers=8, text_dim=768),
}


@dataclass
class SirenConfig:
    """Sizes of a `SirenLM`.

    Attributes:
        num_codebooks: r, codec codebooks.
        codebook_size: K, entries per codebook.
        latent_dim: D_lat, width of the codec's per-codebook vectors (`codebook_table`).
        group: g, codebooks per expert; r/g experts.
        width: D, transformer width.
        num_heads: attention heads.
        temporal_layers: temporal blocks per expert.
        decoder_layers: per-frame decoder blocks per expert.
        text_dim: Dt, width of the text encoder's token states.
        mlp_hidden: SwiGLU hidden size; derived as 8/3 x width rounded up to 256 when None.
        dropout: residual dropout.
        norm_eps: RMSNorm epsilon.
        bias: biases in the projector, summary, MLP and head linears (attention has none).
        max_frames: longest sequence a sampler's KV cache holds.
        duration_conditioning: tell every temporal block how far through the requested clip
            each frame is (`DurationEmbedding`; not in the paper, off by default).
    """

    num_codebooks: int = 12
    codebook_size: int = 1024
    latent_dim: int = 1024
    group: int = 2
    width: int = 1024
    num_heads: int = 16
    temporal_layers: int = 14
    decoder_layers: int = 2
    text_dim: int = 768
    mlp_hidden: int | None = None
    dropout: float = 0.1
    norm_eps: float = 1e-5
    bias: bool = True
    max_frames: int = 3000
    duration_conditioning: bool = False
    num_groups: int = field(init=False)

    def __post_init__(self) -> None:
        check_config_ranges(self, ("temporal_layers", "decoder_layers"))
        if self.num_codebooks % 2:
            raise ValueError(f"SirenConfig: num_codebooks must be even, got {self.num_codebooks}")
        if self.group < 1 or self.num_codebooks % self.group:
            raise ValueError(
                f"SirenConfig: group {self.group} must divide num_codebooks {self.num_codebooks}"
            )
        if self.width % self.num_heads:
            raise ValueError(
                f"SirenConfig: num_heads {self.num_heads} must divide width {self.width}"
            )
        if self.width % 2:
            raise ValueError(f"SirenConfig: width must be even (sinusoids), got {self.width}")
        if self.mlp_hidden is None:
            self.mlp_hidden = swiglu_hidden(self.width)
        self.num_groups = self.num_codebooks // self.group

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SirenConfig:
        """A named size (`tiny`, `1.6b`, `3.1b`) with fields replaced by `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"SirenConfig: unknown size {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SirenConfig:
        """Rebuild from `to_dict`/`asdict` output (derived fields such as num_groups ignored)."""
        names = {f.name for f in fields(cls) if f.init}
        unknown = set(values) - names - {"num_groups"}
        if unknown:
            raise ValueError(f"SirenConfig: unknown fields {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Init arguments (JSON-serialisable) that rebuild this config."""
        out = asdict(self)
        out.pop("num_groups")
        return out


class SirenOutput(NamedTuple):
    """What `SirenLM.forward` returns.

    Attributes:
        logits: [B, n, T, K] for the n predicted codebooks (all r unless groups were chosen).
        mask: [B, n, T] bool, True where the target is a real frame.
        codebooks: the n codebook indices, in the order of the logits.
    """

    logits: Tensor
    mask: Tensor
    codebooks: list[int]


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid token states: [B, L, Dt], [B, L] -> [B, Dt] (zeros if none valid)."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # [B, L, 1]
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class ResidualGroupTransformer(nn.Module):
    """One expert: predicts codebooks `index*g .. index*g + g - 1` (DESIGN.md section 1)."""

    def __init__(self, config: SirenConfig, index: int) -> None:
        super().__init__()
        if not 0 <= index < config.num_groups:
            raise ValueError(
                f"ResidualGroupTransformer: index {index} not in [0, {config.num_groups})"
            )
        c = config
        self.config = c
        self.index = index
        self.first_codebook = index * c.group
        self.gradient_checkpointing = False
        self.projectors = nn.ModuleList(
            nn.Linear(c.latent_dim, c.width, bias=c.bias) for _ in range(c.num_codebooks)
        )
        self.start = nn.Parameter(torch.randn(c.width) * 0.02)
        self.summary = nn.Linear(c.text_dim, c.width, bias=c.bias)
        self.temporal = nn.ModuleList(
            TemporalBlock(
                c.width, c.num_heads, c.text_dim, c.mlp_hidden, c.dropout, c.norm_eps, c.bias
            )
            for _ in range(c.temporal_layers)
        )
        self.temporal_norm = nn.RMSNorm(c.width, eps=c.norm_eps)
        self.duration = DurationEmbedding(c.width) if c.duration_conditioning else None
        self.decoder = nn.ModuleList(
            DecoderBlock(c.width, c.num_heads, c.mlp_hidden, c.dropout, c.norm_eps, c.bias)
            for _ in range(c.decoder_layers)
        )
        self.decoder_norm = nn.RMSNorm(c.width, eps=c.norm_eps)
        self.heads = nn.ModuleList(
            nn.Linear(c.width, c.codebook_size, bias=c.bias) for _ in range(c.group)
        )
        # Positions of the g + 1 decoder tokens, computed once: the sampler decodes every code.
        self.register_buffer(
            "decoder_positions",
            sinusoidal_positions(torch.arange(c.group + 1), c.width),
            persistent=False,
        )

    # Pieces, also used step by step by the sampler.

    def project(self, vectors: Tensor, codebooks: range | list[int]) -> Tensor:
        """Per-codebook projectors.

        Args:
            vectors: [B, n, T, D_lat] codec vectors of the n codebooks listed in `codebooks`.

        Returns:
            [B, n, T, D].
        """
        return torch.stack(
            [self.projectors[j](vectors[:, i]) for i, j in enumerate(codebooks)], dim=1
        )

    def project_sum(self, vectors: Tensor, first: int, last: int) -> Tensor:
        """Sum of the projected vectors of codebooks first .. last - 1, as one matmul.

        Equal to `project(...)[:, first:last].sum(1)` without materialising each projection:
        the codebooks' vectors are concatenated (a view when `vectors` is laid out frame-major,
        as `SirenLM.codebook_vectors` makes it) against the concatenated projector weights.

        Args:
            vectors: [B, r, T, D_lat].

        Returns:
            [B, T, D] (zeros for an empty range).
        """
        b, _, t, _ = vectors.shape
        if last <= first:
            return vectors.new_zeros(b, t, self.config.width)
        x = vectors[:, first:last].transpose(1, 2).reshape(b, t, -1)  # [B, T, n*D_lat]
        projectors = self.projectors[first:last]
        weight = torch.cat([p.weight for p in projectors], dim=1)  # [D, n*D_lat]
        bias = None if projectors[0].bias is None else sum(p.bias for p in projectors)
        return F.linear(x, weight, bias)

    def text_kv(self, text_states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys/values of every temporal block: [B, L, Dt] -> [B, H, L, D/H]s."""
        return [block.cross.text_kv(text_states) for block in self.temporal]

    def text_summary(self, text_states: Tensor, text_mask: Tensor) -> Tensor:
        """Prompt summary: masked mean of the token states, projected. -> [B, D]."""
        return self.summary(masked_mean(text_states, text_mask))

    def run_temporal(
        self,
        x: Tensor,
        text_kv: list[tuple[Tensor, Tensor]],
        text_mask: Tensor,
        caches: list | None = None,
        offset: int = 0,
        timing: Tensor | None = None,
    ) -> Tensor:
        """Temporal blocks, positions (and the clip timing) re-added before each.

        Args:
            x: [B, T, D] inputs of frames offset .. offset + T - 1.
            text_kv: from `text_kv`; text_mask: [B, L] bool.
            caches: one `KVCache` per block (step-by-step sampling), or None.
            timing: [B, T, 2] `clip_timing` of those frames; used (and needed) only with
                `duration_conditioning`.

        Returns:
            h: [B, T, D], normalised temporal outputs.
        """
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        pos = sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)  # [T, D]
        if self.duration is not None:
            if timing is None:
                raise ValueError("run_temporal: this expert is duration-conditioned; pass timing")
            pos = pos + self.duration(timing).to(x.dtype)  # [B, T, D]
        for i, block in enumerate(self.temporal):
            x = x + pos
            cache = None if caches is None else caches[i]
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, text_kv[i], text_mask, use_reentrant=False)
            else:
                x = block(x, text_kv[i], text_mask, cache)
        return self.temporal_norm(x)

    def decode(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        """Per-frame decoder over `[h_t, before, before + e_gk, ...]`.

        Args:
            tokens: [N, n, D] with 2 <= n <= g + 1 (a prefix of the full sequence).
            last_only: apply only the last head (sampling).

        Returns:
            [N, n - 1, K]: head i applied to output token i + 1 ([N, 1, K] if last_only).
        """
        n = tokens.shape[1]
        pos = self.decoder_positions[:n]  # [n, D]
        first = n - 2 if last_only else 0  # the first head applied
        x = tokens
        for i, block in enumerate(self.decoder):
            x = x + pos.to(x.dtype)
            # The heads read tokens first + 1 .. n - 1: the last block computes those alone.
            keep = first + 1 if i == len(self.decoder) - 1 else 0
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, keep, use_reentrant=False)
            else:
                x = block(x, keep)
        x = self.decoder_norm(x)  # [N, n - first - 1, D]: token first + 1 + j in row j
        return torch.stack([self.heads[first + j](x[:, j]) for j in range(n - first - 1)], dim=1)

    def forward(
        self,
        vectors: Tensor,
        text_states: Tensor,
        text_mask: Tensor,
        timing: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits of this expert's codebooks.

        Args:
            vectors: [B, r, T, D_lat] codec vectors of the ground-truth codes.
            text_states: [B, L, Dt]; text_mask: [B, L] bool.
            timing: [B, T, 2] `clip_timing` (duration-conditioned experts only).

        Returns:
            [B, g, T, K] logits for codebooks gk .. gk + g - 1.
        """
        b, r, t, _ = vectors.shape
        g, k0 = self.config.group, self.first_codebook
        # Three sums cover all r codebooks once: below the expert's, its first g-1, the rest.
        lower = self.project_sum(vectors, 0, k0)  # [B, T, D]
        own = self.project(vectors[:, k0 : k0 + g - 1], range(k0, k0 + g - 1))  # [B, g-1, T, D]
        rest = self.project_sum(vectors, k0 + g - 1, r)  # [B, T, D]
        total = lower + own.sum(1) + rest
        previous = total[:, :-1]  # frame t-1's sum, [B, T-1, D]
        x = torch.cat([self.start.expand(b, 1, -1).to(total.dtype), previous], dim=1)  # [B, T, D]
        h = self.run_temporal(x, self.text_kv(text_states), text_mask, timing=timing)
        before = self.text_summary(text_states, text_mask)[:, None] + lower
        tokens = [h, before]
        for i in range(g - 1):
            tokens.append(tokens[-1] + own[:, i])
        tokens = torch.stack(tokens, dim=2).flatten(0, 1)  # [B, T, g+1, D] -> [B*T, g+1, D]
        logits = self.decode(tokens)  # [B*T, g, K]
        return logits.view(b, t, g, -1).transpose(1, 2)  # [B, g, T, K]


class SirenLM(nn.Module, PyTorchModelHubMixin, library_name="siren-lightning"):
    """r/g isolated experts over a frozen codec codebook table (DESIGN.md sections 1, 5).

    `save_pretrained(folder)` / `SirenLM.from_pretrained(folder_or_hub_id, strict=True)` come from
    `huggingface_hub.PyTorchModelHubMixin` (config.json + model.safetensors, table included).

    Args:
        config: sizes (or their dict, as read from config.json).
        codebook_table: [r, K, D_lat] codec vectors (`codec.codebook_table()`), held as a frozen
            buffer. When None the buffer starts at zeros and must be filled with
            `set_codebook_table` before use (a training setup does this from the codec).
    """

    def __init__(
        self, config: SirenConfig | dict[str, Any], codebook_table: Tensor | None = None
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = SirenConfig.from_dict(config)
        self.config = config
        c = config
        self.register_buffer(
            "codebook_table", torch.zeros(c.num_codebooks, c.codebook_size, c.latent_dim)
        )
        if codebook_table is not None:
            self.set_codebook_table(codebook_table)
        self.experts = nn.ModuleList(ResidualGroupTransformer(c, k) for k in range(c.num_groups))

    def set_codebook_table(self, table: Tensor) -> None:
        """Copy the codec's [r, K, D_lat] vectors into the frozen buffer (shapes must agree)."""
        c = self.config
        expected = (c.num_codebooks, c.codebook_size, c.latent_dim)
        if tuple(table.shape) != expected:
            raise ValueError(
                f"SirenLM: codebook_table has shape {tuple(table.shape)} (r, K, D_lat) but the "
                f"config expects {expected}"
            )
        with torch.no_grad():
            self.codebook_table.copy_(table.detach())

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in the backward pass (saves memory, costs time)."""
        for expert in self.experts:
            expert.gradient_checkpointing = enabled

    def codebook_vectors(self, codes: Tensor, codebooks: range | list[int] | None = None) -> Tensor:
        """Look codes up in the frozen table.

        Args:
            codes: [B, n, T] long, codes of the n codebooks listed in `codebooks` (all r if None).

        Returns:
            [B, n, T, D_lat].
        """
        codebooks = range(codes.shape[1]) if codebooks is None else codebooks
        vectors = torch.stack(
            [self.codebook_table[j][codes[:, i]] for i, j in enumerate(codebooks)], dim=2
        )  # [B, T, n, D_lat]: frame-major, so the experts' `project_sum` reads views
        return vectors.transpose(1, 2)

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
        """Teacher-forced logits of every codebook (or of the chosen groups' codebooks).

        Args:
            codes: [B, r, T] long.
            text_states: [B, L, Dt] frozen text encoder states; text_mask: [B, L] bool.
            mask: [B, T] bool, True for real frames (all True if None).
            groups: experts to run (all if None).
            total_frames: [B] frames of each whole clip, for `duration_conditioning` (the
                valid frames of `mask` when None: the window is the whole clip).
            frame_offset: [B] first frame of the window within its clip (0 when None).

        Returns:
            `SirenOutput` with logits [B, n, T, K], mask [B, n, T] and the n codebook indices.
        """
        c = self.config
        if codes.dim() != 3 or codes.shape[1] != c.num_codebooks:
            raise ValueError(
                f"SirenLM.forward: codes must be [B, r={c.num_codebooks}, T], got {tuple(codes.shape)}"
            )
        b, _, t = codes.shape
        if text_states.dim() != 3 or text_states.shape[-1] != c.text_dim:
            raise ValueError(
                f"SirenLM.forward: text_states must be [B, L, Dt={c.text_dim}], "
                f"got {tuple(text_states.shape)}"
            )
        if text_states.shape[0] != b or text_mask.shape != text_states.shape[:2]:
            raise ValueError(
                f"SirenLM.forward: batch mismatch: codes {tuple(codes.shape)}, text_states "
                f"{tuple(text_states.shape)}, text_mask {tuple(text_mask.shape)}"
            )
        groups = list(range(c.num_groups)) if groups is None else list(groups)
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=codes.device)
        timing = None
        if c.duration_conditioning:
            timing = window_timing(mask, t, total_frames, frame_offset)  # [B, T, 2]
        vectors = self.codebook_vectors(codes)  # [B, r, T, D_lat]
        text_states = text_states.to(vectors.dtype)
        logits = torch.cat(
            [self.experts[k](vectors, text_states, text_mask, timing) for k in groups], dim=1
        )  # [B, n, T, K]
        codebooks = [k * c.group + i for k in groups for i in range(c.group)]
        return SirenOutput(logits, mask[:, None].expand(b, len(codebooks), t), codebooks)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
