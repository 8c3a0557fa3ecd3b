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
  frames. `forward` returns the same `LMOutput` (logits [B, r, T, K], mask [B, r, T]) as
  `SirenLM`, so `PretrainModule` trains either.

The model is one group (`num_groups` 1) that predicts every codebook (`codebooks_of(0)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from siren_lightning.models.base import (
    CodecLM,
    LMConfigMethods,
    LMOutput,
    TextConditionedStack,
)
from siren_lightning.models.blocks import (
    ControlEmbedding,
    DurationEmbedding,
    StackedTemporal,
    TemporalBlock,
    apply_operand,
    check_config_ranges,
    clip_timing,
    fused_operand,
    swiglu_hidden,
    window_timing,
)
from siren_lightning.models.delay_pattern import DelayPattern
from siren_lightning.models.sampling import Prompts

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
class DelayLMConfig(LMConfigMethods):
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
        control_dim: C, features given per frame (0: none), as in `SirenConfig`: frame s's
            features join the input of delay step s, the step that draws codebook 0 of frame s
            (the frame `duration_conditioning` also times that step by). The r - 1 steps
            after the last frame read features of value 0, as a shorter clip's padding does.
            A deviation from MusicGen (docs/model.md "A plan to follow").
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
    control_dim: int = 0
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    # Written by versions that pretended the model was one "group" of r codebooks.
    legacy_fields: ClassVar[frozenset[str]] = frozenset({"group", "num_groups"})

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


class DelayPatternLM(
    CodecLM, TextConditionedStack, PyTorchModelHubMixin, library_name="siren-lightning"
):
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
        self.init_codebook_table(codebook_table)
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
        self.control = ControlEmbedding(c.control_dim, c.width) if c.control_dim > 0 else None
        self.heads = nn.ModuleList(
            nn.Linear(c.width, c.codebook_size, bias=c.bias) for _ in range(c.num_codebooks)
        )

    config_class = DelayLMConfig

    @property
    def num_groups(self) -> int:
        """One transformer predicts every codebook."""
        return 1

    def group_module(self, group: int) -> nn.Module:
        """The whole model (its only group is 0)."""
        self.codebooks_of(group)  # checks the index
        return self

    def codebooks_of(self, group: int) -> list[int]:
        """All r codebooks (the only group is 0)."""
        if group != 0:
            raise ValueError(f"DelayPatternLM: the only group is 0, got {group}")
        return list(range(self.config.num_codebooks))

    def stack(self) -> tuple[nn.ModuleList, nn.RMSNorm]:
        """The blocks and their final norm (`run_stack` runs them)."""
        return self.blocks, self.norm

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

    def run(
        self,
        x: Tensor,
        text_kv: list[tuple[Tensor, Tensor]],
        text_mask: Tensor,
        timing: Tensor | None = None,
    ) -> Tensor:
        """The blocks over steps 0 .. S - 1, then the r heads.

        Args:
            x: [B, S, D] step inputs (embeddings + summary).
            text_kv: from `text_kv`; text_mask: [B, L] bool.
            timing: [B, S, 2] `clip_timing` of frame s at step s (codebook 0's frame); used
                (and needed) only with `duration_conditioning`.

        Returns:
            [B, r, S, K] logits of the codes of each step.
        """
        x = self.run_stack(x, text_kv, text_mask, timing=timing)
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

    def step_control(self, control: Tensor, frames: int) -> Tensor:
        """Each delay step's control: frame s's features at step s, value 0 after the last frame.

        Args:
            control: [B, T', C] per-frame features, T' >= frames.
            frames: T, frames of the clip (cut or generated).

        Returns:
            [B, S, D] the embedded features added to each step's input (S = T + r - 1).
        """
        tail = self.config.num_codebooks - 1
        steps = torch.nn.functional.pad(control[:, :frames], (0, 0, 0, tail))  # [B, S, C]
        return self.control(steps)

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
        control: Tensor | None = None,
    ) -> LMOutput:
        """Teacher-forced logits of every codebook.

        Args:
            codes: [B, r, T] long.
            text_states: [B, L, Dt]; text_mask: [B, L] bool.
            mask: [B, T] bool, True for real frames (all True if None).
            groups: None or [0] (the model is one group; the argument mirrors `SirenLM`).
            total_frames, frame_offset: [B] clip lengths and window starts for
                `duration_conditioning`, as in `SirenLM.forward`.
            history: [B, r, T] long, the codes the steps read as their inputs (`codes` when
                None), as in `SirenLM.forward`; the targets stay `codes`.
            control: [B, T', C] features of each frame (T' >= T), needed when `control_dim` > 0
                (`step_control` places them).

        Returns:
            `LMOutput` with logits [B, r, T, K], mask [B, r, T] and codebooks 0 .. r-1.
        """
        c = self.config
        self.check_inputs(codes, text_states, text_mask)
        b, r, t = codes.shape
        if groups is not None and list(groups) != [0]:
            raise ValueError(f"DelayPatternLM.forward: groups must be None or [0], got {groups}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=codes.device)
        text_states = text_states.to(self.codebook_table.dtype)
        if history is not None:
            self.check_history(codes, history)
        self.check_control(control, b, t)
        x = self.embed(self.step_inputs(codes if history is None else history, mask))  # [B, S, D]
        x = x + self.text_summary(text_states, text_mask)[:, None]
        if self.control is not None:
            x = x + self.step_control(control, t).to(x.dtype)
        timing = None
        if c.duration_conditioning:
            timing = window_timing(mask, x.shape[1], total_frames, frame_offset)  # [B, S, 2]
        logits = self.run(x, self.text_kv(text_states), text_mask, timing=timing)
        logits = self.pattern.deinterleave(logits)  # [B, r, S, K] -> [B, r, T, K]
        return LMOutput(logits, mask[:, None].expand(b, r, t), self.codebooks_of(0))

    # Generation: `models.sampling.generate_frames` calls begin, then step once per frame.

    @torch.no_grad()
    def begin(
        self,
        prompts: Prompts,
        num_frames: int,
        use_cache: bool = True,
        batch_experts: bool = True,
        prompt_codes: Tensor | None = None,
    ) -> DelayGeneration:
        """Prepare a generation of num_frames frames (S = T + r - 1 delay steps).

        Args:
            prompts: from `models.sampling.prepare_prompts` (N rows).
            use_cache: False recomputes the blocks over every earlier step (reference path).
            batch_experts: no effect (one stack), accepted so both LMs take the same call.
            prompt_codes: [B, r, P] codes of frames 0 .. P-1, given instead of drawn: the
                delay steps they fill completely run in one forward (`prefill`), and the
                first `step` makes frame P.
        """
        if self.training:
            raise ValueError("DelayPatternLM.begin: put the model in eval mode (no dropout)")
        states, mask = prompts.states, prompts.mask
        steps = self.pattern.steps(num_frames)
        stacked, heads = None, None
        if use_cache:
            durations = None if self.duration is None else [self.duration]
            stacked = StackedTemporal(
                [self.blocks], [self.norm], states, mask, steps, durations, prompts.total_frames
            )
            heads = fused_operand(list(self.heads))  # the r heads as one matmul
        state = DelayGeneration(
            prompts=prompts,
            summary=self.text_summary(states, mask),
            controls=None
            if prompts.control is None
            else self.step_control(prompts.control, num_frames).to(states.dtype),
            table=self.projected_table(),
            valid=self.pattern.valid_mask(steps, states.device),
            stacked=stacked,
            heads=heads,
            text_kv=None if use_cache else self.text_kv(states),
            history=None if use_cache else [],
            prompt_codes=prompt_codes,
        )
        if prompt_codes is not None and prompt_codes.shape[-1] > 0:
            self.prefill(state, prompt_codes)
        return state

    @torch.no_grad()
    def prefill(self, state: DelayGeneration, prompt_codes: Tensor) -> None:
        """Feed the prompt's complete delay steps to a fresh generation in one forward.

        In the delay layout, step s holds codebook q of frame s - q. P prompt frames fill
        steps 0 .. P-1 completely; the r - 1 steps after them hold the prompt's upper
        codebooks (frames P-r+1 .. P-1) beside lower codebooks of frames >= P, which are drawn,
        so they cannot be fed before sampling: they run one at a time in `step`, the prompt's
        codes forced where given. The input of step s is step s-1's tokens (all idle at s = 0),
        so the inputs of steps 0 .. P-1 go into the cache here, and step P's input (step
        P-1's tokens, complete) is the first `step`'s.

        Args:
            prompt_codes: [B, r, P] long, P >= 1.
        """
        if state.seq:
            raise ValueError("DelayPatternLM.prefill: the generation has already started")
        c, p = self.config, state.prompts
        frames = prompt_codes.shape[-1]
        seq = self.pattern.interleave(prompt_codes)[..., :frames]  # [B, r, P]: complete steps
        idle = seq.new_full((seq.shape[0], c.num_codebooks, 1), c.codebook_size)
        tokens = torch.cat([idle, seq[..., :-1]], -1)  # [B, r, P]: the input of each step
        e = sum(state.table[q][tokens[:, q]] for q in range(c.num_codebooks))  # [B, P, D]
        e = p.tile(e)  # [N, P, D]
        x = e + state.summary[:, None]
        if state.controls is not None:
            x = x + state.controls[:, :frames]
        if state.stacked is not None:
            state.stacked.run(x[None], 0)
        else:
            state.history.append(x)
        state.seq = list(seq.unbind(-1))
        state.frames = list(prompt_codes.unbind(-1))

    @torch.no_grad()
    def step(self, state: DelayGeneration, sampler: Callable[[Tensor], Tensor]) -> Tensor:
        """Run delay steps until the next frame t is complete (step t + r - 1: codebook q of
        frame t is drawn at step t + q), drawing the active codebooks of each step with
        `sampler` ([N, n, K] logits -> [B, n] codes).

        Returns:
            [B, r] long codes of frame t.
        """
        r = self.config.num_codebooks
        t = len(state.frames)
        while len(state.seq) < t + r:
            state.seq.append(self._delay_step(state, sampler))
        state.frames.append(torch.stack([state.seq[t + q][:, q] for q in range(r)], dim=1))
        return state.frames[-1]

    def _delay_step(self, state: DelayGeneration, sampler: Callable[[Tensor], Tensor]) -> Tensor:
        """Delay step s = len(state.seq): [B, r] tokens (the idle token K where inactive)."""
        c, p, s = self.config, state.prompts, len(state.seq)
        r, idle, n = c.num_codebooks, c.codebook_size, p.states.shape[0]
        codebooks = torch.arange(r, device=p.states.device)
        if s == 0:
            e = state.table[:, idle].sum(0).expand(n, -1)  # the all-idle step, [N, D]
        else:
            e = state.table[codebooks, state.seq[-1]].sum(1)  # [B, r, D] -> [B, D]
            e = p.tile(e)  # [N, D]
        x = e + state.summary
        if state.controls is not None:
            x = x + state.controls[:, s]
        x = x[:, None]  # [N, 1, D]
        if state.stacked is not None:
            h = state.stacked.step(x.transpose(0, 1), s)[0]  # [N, D]
            logits = apply_operand(h, *state.heads).view(n, r, -1)  # [N, r, K]
        else:
            state.history.append(x)
            timing = clip_timing(p.total_frames, s + 1) if self.duration is not None else None
            logits = self.run(torch.cat(state.history, 1), state.text_kv, p.mask, timing=timing)
            logits = logits[:, :, -1]
        active = state.valid[:, s]  # [r]
        drawn = sampler(logits[:, active])  # [B, n_active]
        tokens = drawn.new_full((drawn.shape[0], r), idle)
        tokens[:, active] = drawn
        if state.prompt_codes is not None:  # codebook q holds frame s - q: given while < P
            frame = s - codebooks
            given = active & (frame < state.prompt_codes.shape[-1])
            tokens[:, given] = state.prompt_codes[:, codebooks[given], frame[given]]
        return tokens


@dataclass
class DelayGeneration:
    """What `DelayPatternLM.begin` prepares and every `step` reads and advances.

    Attributes:
        prompts: the text conditioning (N rows).
        summary: [N, D] prompt summary; table: [r, K + 1, D] `projected_table`.
        controls: [N, S, D] each step's embedded control (`step_control`), or None.
        valid: [r, S] which codebooks hold a code at each step.
        stacked, heads: the cached layout of the blocks and the fused heads (None uncached).
        text_kv, history: uncached path: cross-attention keys/values and the inputs so far.
        prompt_codes: [B, r, P] codes the clips start with, or None.
        seq: [B, r] tokens of each step so far; frames: [B, r] codes of each frame so far.
    """

    prompts: Prompts
    summary: Tensor
    controls: Tensor | None
    table: Tensor
    valid: Tensor
    stacked: StackedTemporal | None
    heads: tuple[Tensor, Tensor | None] | None
    text_kv: list[tuple[Tensor, Tensor]] | None
    history: list[Tensor] | None
    prompt_codes: Tensor | None
    seq: list[Tensor] = field(default_factory=list)
    frames: list[Tensor] = field(default_factory=list)
