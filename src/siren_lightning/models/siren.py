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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from siren_lightning.models.base import (
    CodecLM,
    LMConfigMethods,
    LMOutput,
    TextConditionedStack,
)
from siren_lightning.models.blocks import (
    ControlEmbedding,
    DecoderBlock,
    DurationEmbedding,
    StackedTemporal,
    TemporalBlock,
    apply_operand,
    check_config_ranges,
    clip_timing,
    fused_operand,
    rms_norm_stacked,
    sinusoidal_positions,
    stack_linears,
    swiglu_hidden,
    window_timing,
)
from siren_lightning.models.sampling import Prompts

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
class SirenConfig(LMConfigMethods):
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
        control_dim: C, features given per frame (0: none, the paper). Each expert adds a
            `ControlEmbedding` of frame t's features to its temporal input at t (zero at the
            start, so a trained LM grown to take them is unchanged): a per-frame plan such as the
            loudness curve (`siren_lightning.data.loudness`; not in the paper).
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
    control_dim: int = 0
    num_groups: int = field(init=False)
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

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


# `SirenLM.forward` returns the shared `LMOutput` (logits [B, n, T, K], mask, codebooks).
SirenOutput = LMOutput


class ResidualGroupTransformer(TextConditionedStack):
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
        self.control = ControlEmbedding(c.control_dim, c.width) if c.control_dim > 0 else None
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

    def stack(self) -> tuple[nn.ModuleList, nn.RMSNorm]:
        """The temporal transformer: its blocks and final norm (`run_stack` runs them)."""
        return self.temporal, self.temporal_norm

    def decode(self, tokens: Tensor) -> Tensor:
        """Per-frame decoder over `[h_t, before, before + e_gk, ...]`.

        Args:
            tokens: [N, n, D] with 2 <= n <= g + 1 (a prefix of the full sequence).

        Returns:
            [N, n - 1, K]: head i applied to output token i + 1.
        """
        n = tokens.shape[1]
        pos = self.decoder_positions[:n]  # [n, D]
        x = tokens
        for i, block in enumerate(self.decoder):
            x = x + pos.to(x.dtype)
            # The heads read tokens 1 .. n - 1: the last block computes those alone.
            keep = 1 if i == len(self.decoder) - 1 else 0
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, keep, use_reentrant=False)
            else:
                x = block(x, keep)
        x = self.decoder_norm(x)  # [N, n - 1, D]: token 1 + j in row j
        return torch.stack([self.heads[j](x[:, j]) for j in range(n - 1)], dim=1)

    def forward(
        self,
        vectors: Tensor,
        text_states: Tensor,
        text_mask: Tensor,
        timing: Tensor | None = None,
        history: Tensor | None = None,
        return_hidden: bool = False,
        control: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher-forced logits of this expert's codebooks.

        Args:
            vectors: [B, r, T, D_lat] codec vectors of the ground-truth codes.
            text_states: [B, L, Dt]; text_mask: [B, L] bool.
            timing: [B, T, 2] `clip_timing` (duration-conditioned experts only).
            history: [B, r, T, D_lat] vectors the temporal stack reads as the previous frames
                (`vectors` when None). The codebooks below this expert's, of the current
                frame, always come from `vectors`.
            control: [B, T, C] per-frame features (`control_dim` > 0 only); frame t's join
                the temporal input at t.

        Returns:
            [B, g, T, K] logits for codebooks gk .. gk + g - 1; with `return_hidden`, also the
            temporal outputs [B, T, D] (frame t's reads the frames before it).
        """
        b, r, t, _ = vectors.shape
        g, k0 = self.config.group, self.first_codebook
        # Three sums cover all r codebooks once: below the expert's, its first g-1, the rest.
        lower = self.project_sum(vectors, 0, k0)  # [B, T, D]
        own = self.project(vectors[:, k0 : k0 + g - 1], range(k0, k0 + g - 1))  # [B, g-1, T, D]
        if history is None:
            rest = self.project_sum(vectors, k0 + g - 1, r)  # [B, T, D]
            total = lower + own.sum(1) + rest
        else:  # the temporal input is another sequence: all r codebooks projected afresh
            total = self.project_sum(history, 0, r)
        previous = total[:, :-1]  # frame t-1's sum, [B, T-1, D]
        x = torch.cat([self.start.expand(b, 1, -1).to(total.dtype), previous], dim=1)  # [B, T, D]
        if self.control is not None:
            x = x + self.control(control).to(x.dtype)
        h = self.run_stack(x, self.text_kv(text_states), text_mask, timing=timing)
        before = self.text_summary(text_states, text_mask)[:, None] + lower
        tokens = [h, before]
        for i in range(g - 1):
            tokens.append(tokens[-1] + own[:, i])
        tokens = torch.stack(tokens, dim=2).flatten(0, 1)  # [B, T, g+1, D] -> [B*T, g+1, D]
        logits = self.decode(tokens).view(b, t, g, -1).transpose(1, 2)  # [B, g, T, K]
        return (logits, h) if return_hidden else logits


class CachedDecoders:
    """Every expert's per-frame decoder on the sampling path, one token at a time.

    The same math as `ResidualGroupTransformer.decode` in eval mode, computed incrementally:
    each decoder block keeps the keys/values of the frame's earlier tokens, so a new token runs
    through the blocks once (one row per matmul) instead of its whole prefix again. Token 0
    (`h_t`, the temporal output) is known for every expert before any code of the frame is
    drawn, so `start` runs it through all experts' blocks at once (weights stacked on an axis G,
    as in `StackedTemporal`); attending to itself alone, its attention output is its value.
    Only tokens 1 .. g, which need the codes drawn so far, run expert by expert in `step`. At
    batch 1 on a CPU the sampler's cost is the count of small operators, and this halves the
    count per code. `tests/models/test_generation_layout.py` checks it against `decode`.

    Args:
        experts: the G `ResidualGroupTransformer`s.
        rows: N, the rows sampled together (2B with classifier-free guidance).
        dtype: of the activations.
    """

    def __init__(
        self, experts: list[ResidualGroupTransformer], rows: int, dtype: torch.dtype
    ) -> None:
        c = experts[0].config
        self.heads_count, self.eps, self.width = c.num_heads, c.norm_eps, c.width
        self.g, self.rows = len(experts), rows

        # Per expert, per block: (norm1, qkv, out, norm2, gate_up, down) for `step`.
        self.blocks = [
            [
                (
                    block.self_norm.weight.detach(),
                    fused_operand([block.attn.qkv]),
                    fused_operand([block.attn.out]),
                    block.mlp_norm.weight.detach(),
                    fused_operand([block.mlp.gate, block.mlp.up]),
                    fused_operand([block.mlp.down]),
                )
                for block in expert.decoder
            ]
            for expert in experts
        ]
        # Per block, stacked over the experts, for token 0 in `start`: its query is never used.
        self.stacked = []
        for blocks in zip(*(expert.decoder for expert in experts)):
            self.stacked.append(
                (
                    torch.stack([b.self_norm.weight.detach() for b in blocks]).unsqueeze(1),
                    # keys and values only: outputs D.. of the qkv projection
                    stack_linears([[b.attn.qkv] for b in blocks], outputs_from=c.width),
                    stack_linears([[b.attn.out] for b in blocks]),
                    torch.stack([b.mlp_norm.weight.detach() for b in blocks]).unsqueeze(1),
                    stack_linears([[b.mlp.gate, b.mlp.up] for b in blocks]),
                    stack_linears([[b.mlp.down] for b in blocks]),
                )
            )
        self.final_norms = [expert.decoder_norm.weight.detach() for expert in experts]
        self.heads = [[fused_operand([head]) for head in expert.heads] for expert in experts]
        self.positions = experts[0].decoder_positions.to(dtype)  # [g + 1, D], same in every expert
        # Keys and values of the frame's tokens: per block [G, N, H, g + 1, D/H].
        shape = (self.g, rows, c.num_heads, c.group + 1, c.width // c.num_heads)
        self.keys = [self.positions.new_zeros(shape) for _ in self.stacked]
        self.values = [self.positions.new_zeros(shape) for _ in self.stacked]

    def start(self, hidden: Tensor) -> None:
        """Token 0 of every expert: hidden [G, N, D] temporal outputs of the frame."""
        x, last = hidden, len(self.stacked) - 1
        for i, (norm1, kv, out, norm2, gate_up, down) in enumerate(self.stacked):
            x = x + self.positions[0]
            h = rms_norm_stacked(x, norm1, self.eps)
            k, v = apply_operand(h, *kv).view(self.g, self.rows, 2, self.heads_count, -1).unbind(2)
            self.keys[i][:, :, :, 0] = k
            self.values[i][:, :, :, 0] = v
            if i == last:  # the last block's output at token 0 is never read
                break
            x = x + apply_operand(v.reshape(x.shape), *out)  # attention over itself alone: v
            h = rms_norm_stacked(x, norm2, self.eps)
            gate, up = apply_operand(h, *gate_up).chunk(2, dim=-1)
            x = x + apply_operand(F.silu(gate) * up, *down)

    def step(self, k: int, token: Tensor, i: int) -> Tensor:
        """token [N, D], token i (1 .. g) of expert k -> [N, K] logits of its head i - 1.

        Tokens 0 .. i - 1 of the frame must have run (`start`, then `step` in order).
        """
        x, n, d = token, self.rows, self.width
        for b, (norm1, qkv, out, norm2, gate_up, down) in enumerate(self.blocks[k]):
            x = x + self.positions[i]
            h = F.rms_norm(x, (d,), norm1, self.eps)
            q, key, value = apply_operand(h, *qkv).view(n, 3, self.heads_count, -1).unbind(1)
            keys, values = self.keys[b][k], self.values[b][k]  # [N, H, g + 1, D/H]
            keys[:, :, i] = key
            values[:, :, i] = value
            y = F.scaled_dot_product_attention(
                q[:, :, None], keys[:, :, : i + 1], values[:, :, : i + 1]
            )  # [N, H, 1, D/H]: token i sees tokens 0 .. i
            x = x + apply_operand(y.view(n, d), *out)
            h = F.rms_norm(x, (d,), norm2, self.eps)
            gate, up = apply_operand(h, *gate_up).chunk(2, dim=-1)
            x = x + apply_operand(F.silu(gate) * up, *down)
        h = F.rms_norm(x, (d,), self.final_norms[k], self.eps)
        return apply_operand(h, *self.heads[k][i - 1])


@dataclass
class SirenGeneration:
    """What `SirenLM.begin` prepares and every `SirenLM.step` reads and advances.

    Attributes:
        prompts: the text conditioning (N rows).
        summaries: [G, N, D] every expert's prompt summary.
        tables: [G, r, K, D] every expert's projected vector of every code (`code_tables`).
        decoders: the experts' per-frame decoders, cached token by token.
        stacked: the experts' temporal stacks as one (cached, batched layout), or None.
        text_kv: each expert's cross-attention keys/values when the experts step one by one.
        history: without a cache, each expert's inputs so far (recomputed every frame).
        controls: [G, N, T, D] every expert's projection of the prompts' per-frame control
            (`control_dim` > 0), added to its temporal input at each frame.
        frame: the next frame t; previous: [B, r] codes of frame t - 1.
    """

    prompts: Prompts
    summaries: Tensor
    tables: Tensor
    decoders: CachedDecoders
    stacked: StackedTemporal | None
    text_kv: list[list[tuple[Tensor, Tensor]]]
    history: list[list[Tensor]] | None
    controls: Tensor | None = None
    frame: int = 0
    previous: Tensor | None = None
    flat_tables: Tensor = field(init=False)  # [G * r * K, D], row (k * r + j) * K + code
    offsets: Tensor = field(init=False)  # [G, r], (k * r + j) * K
    codebooks: Tensor = field(init=False)  # [r], 0 .. r-1

    def __post_init__(self) -> None:
        g, r, size, d = self.tables.shape
        self.flat_tables = self.tables.view(-1, d)
        self.codebooks = torch.arange(r, device=self.tables.device)
        self.offsets = torch.arange(g * r, device=self.tables.device).view(g, r) * size

    def frame_inputs(self, codes: Tensor) -> Tensor:
        """Every expert's temporal input after each of T frames: the sum over the r codebooks
        of its projected vectors. codes [B, r, T] -> [G, N, T, D]."""
        x = sum(self.tables[:, j, codes[:, j]] for j in range(codes.shape[1]))  # [G, B, T, D]
        return self.prompts.tile(x, 1)

    def embed(self, k: int, codes: Tensor, first: int) -> Tensor:
        """Sum of expert k's vectors of [B, m] codes of codebooks first .. first+m-1: [N, D]."""
        b, m = codes.shape
        rows = (codes + self.offsets[k, first : first + m]).view(-1)
        e = self.flat_tables.index_select(0, rows)  # [B * m, D]
        e = e if m == 1 else e.view(b, m, -1).sum(1)  # [B, D]
        return self.prompts.tile(e)  # [N, D]


class SirenLM(CodecLM, PyTorchModelHubMixin, library_name="siren-lightning"):
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
        self.config = c = config
        self.init_codebook_table(codebook_table)
        self.experts = nn.ModuleList(ResidualGroupTransformer(c, k) for k in range(c.num_groups))

    config_class = SirenConfig

    @property
    def num_groups(self) -> int:
        """r/g experts, each trainable on its own."""
        return self.config.num_groups

    def group_module(self, group: int) -> nn.Module:
        """Expert `group`: the part that makes (and alone trains) its codebooks."""
        return self.experts[group]

    def codebooks_of(self, group: int) -> list[int]:
        """The codebooks expert `group` predicts, in order: g*group .. g*group + g - 1."""
        g = self.config.group
        return list(range(group * g, group * g + g))

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
        history: Tensor | None = None,
        return_hidden: bool = False,
        control: Tensor | None = None,
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
            history: [B, r, T] long, the codes the experts read as the previous frames (`codes`
                when None): a corrupted copy trains robustness to the model's own mistakes
                (`PretrainModule(history_noise)`); the targets and the current frame's lower
                codebooks stay `codes`.
            return_hidden: also return the chosen experts' temporal outputs (`hidden` [B, G',
                T, D], in the order of `groups`), e.g. for an auxiliary loss on them.
            control: [B, T, C] features of each frame, needed when `control_dim` > 0.

        Returns:
            `SirenOutput` with logits [B, n, T, K], mask [B, n, T] and the n codebook indices.
        """
        c = self.config
        self.check_inputs(codes, text_states, text_mask)
        b, _, t = codes.shape
        groups = list(range(c.num_groups)) if groups is None else list(groups)
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=codes.device)
        timing = None
        if c.duration_conditioning:
            timing = window_timing(mask, t, total_frames, frame_offset)  # [B, T, 2]
        vectors = self.codebook_vectors(codes)  # [B, r, T, D_lat]
        self.check_control(control, b, t)
        frame_control = None if control is None else control[:, :t]
        past = None
        if history is not None:
            self.check_history(codes, history)
            past = self.codebook_vectors(history)
        text_states = text_states.to(vectors.dtype)
        outs = [
            self.experts[k](
                vectors, text_states, text_mask, timing, past, return_hidden, frame_control
            )
            for k in groups
        ]
        hidden = torch.stack([h for _, h in outs], dim=1) if return_hidden else None
        logits = torch.cat([o[0] for o in outs] if return_hidden else outs, dim=1)  # [B, n, T, K]
        codebooks = [j for k in groups for j in self.codebooks_of(k)]
        return SirenOutput(logits, mask[:, None].expand(b, len(codebooks), t), codebooks, hidden)

    # Generation: `models.sampling.generate_frames` calls begin, then step once per frame.

    def code_tables(self, dtype: torch.dtype) -> Tensor:
        """Every expert's projected vector of every code, to look up instead of projecting.

        Returns:
            [G, r, K, D]: entry (k, j, c) is expert k's projector j applied to code c of
            codebook j.
        """
        table = self.codebook_table.to(dtype)
        r, size, _ = table.shape
        out = table.new_empty(len(self.experts), r, size, self.config.width)
        for k, expert in enumerate(self.experts):
            weight = torch.stack([p.weight.detach() for p in expert.projectors]).to(dtype)
            if expert.projectors[0].bias is None:  # [r, K, D_lat] @ [r, D_lat, D]
                torch.bmm(table, weight.transpose(1, 2), out=out[k])
            else:
                bias = torch.stack([p.bias.detach() for p in expert.projectors]).to(dtype)
                torch.baddbmm(bias[:, None], table, weight.transpose(1, 2), out=out[k])
        return out

    @torch.no_grad()
    def begin(
        self,
        prompts: Prompts,
        num_frames: int,
        use_cache: bool = True,
        batch_experts: bool = True,
        prompt_codes: Tensor | None = None,
    ) -> SirenGeneration:
        """Prepare a generation of num_frames frames (caches, text keys/values, tables).

        Args:
            prompts: from `models.sampling.prepare_prompts` (N rows).
            use_cache: False recomputes the temporal transformers over the whole prefix at
                every frame (the reference path).
            batch_experts: with the cache, run all experts' temporal steps as one batched step
                (`StackedTemporal`); False steps the experts' own blocks one by one, each
                self-attention holding its cache.
            prompt_codes: [B, r, P] codes of frames 0 .. P-1, given instead of drawn: the
                temporal transformers read them in one forward over positions 0 .. P-1
                (`prefill`), and the first `step` makes frame P.
        """
        if self.training:
            raise ValueError("SirenLM.begin: put the model in eval mode (no dropout)")
        c, experts = self.config, list(self.experts)
        states, mask = prompts.states, prompts.mask
        stacked = None
        if use_cache and batch_experts:
            stacked = StackedTemporal(
                [e.temporal for e in experts],
                [e.temporal_norm for e in experts],
                states,
                mask,
                num_frames,
                [e.duration for e in experts] if c.duration_conditioning else None,
                prompts.total_frames,
            )
        elif use_cache:
            for expert in experts:
                expert.set_kv_cache(num_frames)
        state = SirenGeneration(
            prompts=prompts,
            summaries=torch.stack([e.text_summary(states, mask) for e in experts]),
            tables=self.code_tables(states.dtype),
            decoders=CachedDecoders(experts, states.shape[0], states.dtype),
            stacked=stacked,
            text_kv=[] if stacked is not None else [e.text_kv(states) for e in experts],
            history=None if use_cache else [[] for _ in experts],
            controls=None
            if prompts.control is None
            else torch.stack([e.control(prompts.control).to(states.dtype) for e in experts]),
        )
        if prompt_codes is not None and prompt_codes.shape[-1] > 0:
            self.prefill(state, prompt_codes)
        return state

    @torch.no_grad()
    def prefill(self, state: SirenGeneration, prompt_codes: Tensor) -> None:
        """Feed the P prompt frames to a fresh generation in one forward per expert stack.

        The temporal input at position t is frame t-1's sum (the start vector at 0), so the
        prompt fixes positions 0 .. P; positions 0 .. P-1 go into the caches here (their
        outputs would only decode frames that are given) and position P, which reads frame
        P-1, is the first `step`'s. Without a cache, the inputs join the recomputed history.

        Args:
            prompt_codes: [B, r, P] long, P >= 1.
        """
        if state.frame != 0:
            raise ValueError("SirenLM.prefill: the generation has already started")
        c, p, experts = self.config, state.prompts, list(self.experts)
        n, dtype, frames = p.states.shape[0], p.states.dtype, prompt_codes.shape[-1]
        start = torch.stack([e.start.to(dtype).expand(n, 1, -1) for e in experts])  # [G, N, 1, D]
        inputs = torch.cat([start, state.frame_inputs(prompt_codes[..., :-1])], 2)  # [G,N,P,D]
        if state.controls is not None:
            inputs = inputs + state.controls[:, :, :frames]
        if state.stacked is not None:
            state.stacked.run(inputs, 0)
        elif state.history is not None:
            for k in range(len(experts)):
                state.history[k].append(inputs[k])
        else:
            timing = clip_timing(p.total_frames, frames) if c.duration_conditioning else None
            for k, expert in enumerate(experts):
                expert.run_stack(inputs[k], state.text_kv[k], p.mask, timing=timing)
        state.frame, state.previous = frames, prompt_codes[:, :, -1]

    @torch.no_grad()
    def step(self, state: SirenGeneration, sampler: Callable[[Tensor], Tensor]) -> Tensor:
        """Generate frame t = state.frame.

        1. Every expert's temporal transformer steps on frame t-1's codes. The steps are
           independent (they read only frame t-1), so they all run before any decoder.
        2. The per-frame decoders run in expert order; expert k draws its codebooks one at a
           time with `sampler` ([N, K] logits -> [B] codes) and sees the codes that earlier
           experts drew for this frame. Token 0 of every decoder, h_t, needs no code of the
           frame: it runs for all experts at once (`CachedDecoders.start`).

        Returns:
            [B, r] long codes of frame t.
        """
        t, p = state.frame, state.prompts
        experts = list(self.experts)
        n, dtype = p.states.shape[0], p.states.dtype
        if state.previous is None:
            inputs = torch.stack([e.start.to(dtype).expand(n, -1) for e in experts])  # [G, N, D]
        else:
            inputs = state.tables[:, state.codebooks, state.previous].sum(
                2
            )  # [G, B, r, D] -> [G, B, D]
            inputs = p.tile(inputs, 1)  # [G, N, D]
        if state.controls is not None:
            inputs = inputs + state.controls[:, :, t]
        if state.stacked is not None:
            hidden = state.stacked.step(inputs, t)  # [G, N, D]
        else:
            hidden = torch.stack(
                [self._temporal_step(k, inputs[k][:, None], state) for k in range(len(experts))]
            )
        state.frame += 1
        state.decoders.start(hidden)
        drawn: list[Tensor] = []  # [B] per codebook, in order
        for k in range(len(experts)):
            books = self.codebooks_of(k)
            token = state.summaries[k]  # before = summary + e_j of the codes j < first
            if books[0] > 0:
                token = token + state.embed(k, torch.stack(drawn, 1), 0)  # [N, D]
            for i, j in enumerate(books):
                drawn.append(sampler(state.decoders.step(k, token, i + 1)))
                if i < len(books) - 1:
                    token = token + state.embed(k, drawn[-1][:, None], j)
        state.previous = torch.stack(drawn, 1)  # [B, r]
        return state.previous

    def _temporal_step(self, k: int, x: Tensor, state: SirenGeneration) -> Tensor:
        """Expert k's temporal output of frame state.frame from its own blocks: [N, 1, D] ->
        [N, D] (cached in its self-attentions, or recomputed over the prefix)."""
        expert, p, t = self.experts[k], state.prompts, state.frame
        conditioned = self.config.duration_conditioning
        if state.history is None:
            timing = clip_timing(p.total_frames, 1, t) if conditioned else None
            h = expert.run_stack(x, state.text_kv[k], p.mask, offset=t, timing=timing)
        else:
            state.history[k].append(x)
            timing = clip_timing(p.total_frames, t + 1) if conditioned else None
            h = expert.run_stack(
                torch.cat(state.history[k], 1), state.text_kv[k], p.mask, timing=timing
            )
        return h[:, -1]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
