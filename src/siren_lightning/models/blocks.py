"""Transformer building blocks shared by the Siren experts (DESIGN.md section 1).

Letters: B batch, T sequence length (frames or decoder tokens), S cached length, D width,
H heads, L text tokens, Dt text width.

Every block is pre-norm (RMSNorm, eps 1e-5) with residual dropout. Attention goes through
`torch.nn.functional.scaled_dot_product_attention`. Its projections carry no bias, as in the
official Siren code: a key bias adds the same score to every key of a query, which softmax
ignores, so its true gradient is zero, and Adam would turn the float noise in that gradient
into learning-rate-sized steps that differ between CPUs and thread counts.

Generation runs the same blocks. Self-attention owns its `KVCache` (`SelfAttention.set_kv_cache`,
as in litgpt): with a cache set, each call appends the new positions and attends over all cached
ones. Cross-attention takes the text keys/values from `CrossAttention.text_kv`, computed once per
prompt. `StackedTemporal` is the fast inference layout of G equal-shaped stacks of
`TemporalBlock`s (Siren's experts, or the delay LM's one stack): each block hands over its
weights through `TemporalBlock.inference_parts`, stacked on a leading axis G, so one batched
matmul serves every expert; tests check it against the blocks.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden(width: int, multiple: int = 256) -> int:
    """SwiGLU hidden size: 8/3 x width rounded up to a multiple (1024 -> 2816)."""
    return multiple * math.ceil(8 * width / 3 / multiple)


def sinusoidal_positions(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal position encodings.

    Args:
        positions: [T] integer or float positions.
        dim: even encoding width D.

    Returns:
        [T, D] float32: `sin` in the first half, `cos` in the second.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_positions: dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=positions.device, dtype=torch.float32)
        / half
    )
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]  # [T, D/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def clip_timing(total_frames: Tensor, num_frames: int, offset: Tensor | int = 0) -> Tensor:
    """Where each frame of a window sits in its clip, for `DurationEmbedding`.

    Args:
        total_frames: [B] frames of each whole clip (the length generation is asked for).
        num_frames: T frames in the window.
        offset: [B] or int, the window's first frame within the clip (a training crop's start).

    Returns:
        [B, T, 2] float32: (frame index within the clip, clip length in frames).
    """
    total = total_frames.to(torch.float32)[:, None].clamp_min(1.0)  # [B, 1]
    t = torch.arange(num_frames, device=total.device, dtype=torch.float32)[None]  # [1, T]
    if isinstance(offset, Tensor):
        offset = offset.to(total)[:, None]
    index = (t + offset).expand(total.shape[0], -1)  # [B, T]
    return torch.stack([index, total.expand_as(index)], dim=-1)


def window_timing(
    mask: Tensor,
    num_steps: int,
    total_frames: Tensor | None = None,
    frame_offset: Tensor | None = None,
) -> Tensor:
    """`clip_timing` of a teacher-forced window: [B, num_steps, 2].

    The clip is the window's valid frames (`mask` [B, T]) unless `total_frames` [B] says how
    long it is; `frame_offset` [B] is where the window starts in it (0 when None).
    """
    total = mask.sum(1) if total_frames is None else total_frames
    return clip_timing(total, num_steps, 0 if frame_offset is None else frame_offset)


class DurationEmbedding(nn.Module):
    """Timing conditioning (a deviation from the paper; `duration_conditioning` in the configs).

    Every frame is told how far through the requested clip it is and how many frames are left.
    SynthCaps places its events in equal slots of the clip's whole duration, and a user asks
    for a duration: without this a frame-by-frame LM cannot know where "three times" must fall,
    and at frame 0 nothing else tells it the length. It plays the role of Stable Audio's
    `seconds_total`, given per frame. Half the features are sinusoids of the progress
    (index / length, 1000 steps across the clip), half sinusoids of the frames left; a learned
    linear puts them in their own subspace beside the absolute positions they are added to.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"DurationEmbedding: width must be a multiple of 4, got {width}")
        self.width = width
        self.proj = nn.Linear(width, width, bias=False)

    @staticmethod
    def features(timing: Tensor, width: int) -> Tensor:
        """[..., 2] `clip_timing` -> [..., width] fixed sinusoidal features."""
        index, total = timing.reshape(-1, 2).unbind(-1)
        progress = sinusoidal_positions(index / total * 1000.0, width // 2)  # [N, D/2]
        left = sinusoidal_positions(total - index, width // 2)  # [N, D/2]
        return torch.cat([progress, left], dim=-1).view(*timing.shape[:-1], width)

    def forward(self, timing: Tensor) -> Tensor:
        """[..., 2] `clip_timing` -> [..., D] embedding."""
        return self.proj(self.features(timing, self.width).to(self.proj.weight.dtype))


class ControlEmbedding(nn.Module):
    """Per-frame control features (`control_dim` in the Siren config) -> [.., D], added to the
    temporal input of the frame they describe.

    Each of the C values (in [0, 1], e.g. `frame_loudness`) is spread over D fixed sinusoids of
    1000 x value (as `DurationEmbedding` spreads the progress), then one linear maps the C x D
    features to D. The linear starts at zero, so an LM grown to take
    control is unchanged; the wide fixed features let it learn fast: a linear from one scalar
    moves its output by at most the learning rate a step (Adam), one from D features D times
    that.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.proj = nn.Linear(channels * width, width, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, control: Tensor) -> Tensor:
        """[..., C] -> [..., D]."""
        shape = control.shape
        features = sinusoidal_positions(control.reshape(-1).float() * 1000.0, self.width)
        features = features.view(*shape[:-1], shape[-1] * self.width)
        return self.proj(features.to(self.proj.weight.dtype))


class KVCache:
    """Keys and values of one self-attention layer, preallocated to `max_len` positions.

    The buffers are allocated at the first `append`, so the cache does not need to know the batch
    size or dtype in advance. Appending never copies the old entries: the cost of a step does not
    grow with the number of cached positions beyond attention itself.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store new entries and return everything cached so far.

        Args:
            keys, values: [B, H, T, D/H] for the T new positions.

        Returns:
            keys and values [B, H, S + T, D/H].
        """
        b, h, t, dh = keys.shape
        if self.keys is None:
            self.keys = keys.new_empty(b, h, self.max_len, dh)
            self.values = values.new_empty(b, h, self.max_len, dh)
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions exceed max_len {self.max_len}")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def causal_attention(q: Tensor, k: Tensor, v: Tensor, past: int) -> Tensor:
    """Causal attention of T new queries that follow `past` earlier positions.

    Args:
        q: [B, H, T, D/H] queries of positions past .. past + T - 1.
        k, v: [B, H, past + T, D/H] keys and values of positions 0 .. past + T - 1.

    Returns:
        [B, H, T, D/H]: query i sees keys 0 .. past + i.
    """
    t = q.shape[-2]
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v)
    allowed = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _refuse_attention_biases(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Load-state-dict pre-hook: name the attention biases of a checkpoint from before they
    were removed, instead of a bare "unexpected key" among hundreds of lines."""
    found = [k for k in state_dict if k.startswith(prefix) and k.endswith(".bias")]
    found = [k for k in found if k[len(prefix) :].count(".") == 1]  # this module's own linears
    if found:
        raise ValueError(
            f"{type(module).__name__}: the checkpoint has attention biases ({found[0]}, ...), "
            "which this version no longer builds (their key part has no gradient, see "
            "models/blocks.py); it was trained by an older siren-lightning: retrain it, or load "
            "it with that version"
        )


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional KV cache (bias-free projections)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"SelfAttention: {num_heads} heads do not divide width {width}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.kv_cache: KVCache | None = None
        self.register_load_state_dict_pre_hook(_refuse_attention_biases)

    def set_kv_cache(self, max_len: int | None) -> None:
        """Start step-by-step generation with an empty cache of max_len positions (None: drop
        the cache; every call then attends within its own sequence, as in training)."""
        self.kv_cache = None if max_len is None else KVCache(max_len)

    def forward(self, x: Tensor, queries_from: int = 0) -> Tensor:
        """Attend causally over the sequence (and over the cache's earlier positions).

        Args:
            x: [B, T, D] new positions; with a cache set (`set_kv_cache`) they follow the S
                positions cached so far and are appended to it.
            queries_from: without a cache, attend from positions queries_from.. only (the
                earlier ones still serve as keys and values): their outputs are not needed.

        Returns:
            [B, T - queries_from, D].
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, T, H, D/H] -> [B, H, T, D/H]
        past, cache = 0, self.kv_cache
        if cache is not None:
            if queries_from:
                raise ValueError("SelfAttention: queries_from needs cache=None")
            past = cache.length
            k, v = cache.append(k, v)
        elif queries_from:  # the first queries_from positions act as a cache of earlier ones
            past, t, q = queries_from, t - queries_from, q[:, :, queries_from:]
        y = causal_attention(q, k, v, past)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # [B, H, T, D/H] -> [B, T, D]


class CrossAttention(nn.Module):
    """Multi-head attention from the sequence to text token states (keys/values from Dt);
    bias-free projections."""

    def __init__(self, width: int, text_dim: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"CrossAttention: {num_heads} heads do not divide width {width}")
        self.num_heads = num_heads
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(text_dim, width, bias=False)
        self.value = nn.Linear(text_dim, width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.register_load_state_dict_pre_hook(_refuse_attention_biases)

    def text_kv(self, text_states: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the text tokens, to compute once per prompt.

        Args:
            text_states: [B, L, Dt].

        Returns:
            keys and values [B, H, L, D/H].
        """
        b, n, _ = text_states.shape
        k = self.key(text_states).view(b, n, self.num_heads, -1).transpose(1, 2)
        v = self.value(text_states).view(b, n, self.num_heads, -1).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, text_kv: tuple[Tensor, Tensor], text_mask: Tensor) -> Tensor:
        """Attend from every position to the valid text tokens.

        Args:
            x: [B, T, D].
            text_kv: keys and values [B, H, L, D/H] from `text_kv`.
            text_mask: [B, L] bool, True for real tokens. A row without any real token gets a
                zero output (no text to read) instead of NaNs.

        Returns:
            [B, T, D].
        """
        b, t, d = x.shape
        k, v = text_kv
        q = self.query(x).view(b, t, self.num_heads, -1).transpose(1, 2)  # [B, H, T, D/H]
        has_text = text_mask.any(dim=1)  # [B]
        allowed = (text_mask | ~has_text[:, None])[:, None, None, :]  # [B, 1, 1, L]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y * has_text[:, None, None, None].to(y.dtype)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """Gated MLP: out(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=bias)
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, T, D]."""
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TemporalBlock(nn.Module):
    """Cross-attention to text, causal self-attention, SwiGLU; each pre-norm with dropout."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        text_dim: int,
        mlp_hidden: int,
        dropout: float,
        eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.cross_norm = nn.RMSNorm(width, eps=eps)
        self.cross = CrossAttention(width, text_dim, num_heads)
        self.self_norm = nn.RMSNorm(width, eps=eps)
        self.attn = SelfAttention(width, num_heads)
        self.mlp_norm = nn.RMSNorm(width, eps=eps)
        self.mlp = SwiGLU(width, mlp_hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, text_kv: tuple[Tensor, Tensor], text_mask: Tensor) -> Tensor:
        """[B, T, D] -> [B, T, D]; `text_kv` [B, H, L, D/H] each, `text_mask` [B, L].

        With a cache set on `attn`, x holds the positions after the cached ones.
        """
        x = x + self.dropout(self.cross(self.cross_norm(x), text_kv, text_mask))
        x = x + self.dropout(self.attn(self.self_norm(x)))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))

    def inference_parts(self) -> TemporalParts:
        """This block's norms and linear layers in the order `StackedTemporal` runs them."""
        return TemporalParts(
            cross_norm=self.cross_norm,
            cross_query=(self.cross.query,),
            cross_out=(self.cross.out,),
            self_norm=self.self_norm,
            qkv=(self.attn.qkv,),
            attn_out=(self.attn.out,),
            mlp_norm=self.mlp_norm,
            gate_up=(self.mlp.gate, self.mlp.up),
            down=(self.mlp.down,),
        )


class TemporalParts(NamedTuple):
    """A `TemporalBlock`'s pieces for the stacked layout: RMSNorms, and tuples of linear layers
    that read the same input (run as one matmul over their concatenated weights)."""

    cross_norm: nn.RMSNorm
    cross_query: tuple[nn.Linear, ...]
    cross_out: tuple[nn.Linear, ...]
    self_norm: nn.RMSNorm
    qkv: tuple[nn.Linear, ...]
    attn_out: tuple[nn.Linear, ...]
    mlp_norm: nn.RMSNorm
    gate_up: tuple[nn.Linear, ...]
    down: tuple[nn.Linear, ...]


class DecoderBlock(nn.Module):
    """Causal self-attention and SwiGLU, each pre-norm with dropout (no cross-attention)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_hidden: int,
        dropout: float,
        eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.self_norm = nn.RMSNorm(width, eps=eps)
        self.attn = SelfAttention(width, num_heads)
        self.mlp_norm = nn.RMSNorm(width, eps=eps)
        self.mlp = SwiGLU(width, mlp_hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, outputs_from: int = 0) -> Tensor:
        """[B, T, D] -> [B, T - outputs_from, D]: the outputs of positions outputs_from.. only.

        Dropping outputs nobody reads (Siren's last decoder block at token 0) skips their
        attention output, MLP and norms; the kept ones are unchanged.
        """
        attended = self.attn(self.self_norm(x), queries_from=outputs_from)
        x = x[:, outputs_from:] + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


# The stacked inference layout (sampling only: no dropout, no gradients).


def _weight_and_bias(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Linear layers on the same input as one: weight [sum Dout, Din], bias [sum Dout] or None."""
    weight = torch.cat([m.weight.detach() for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    return weight, bias


def fused_operand(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Linear layers on the same input as one matmul: (`matmul_operand` [Din, sum Dout], bias)."""
    weight, bias = _weight_and_bias(linears)
    return matmul_operand(weight), bias


def stack_linears(
    groups: list[list[nn.Linear]], outputs_from: int = 0
) -> tuple[Tensor, Tensor | None]:
    """Per group, its linear layers fused as one (outputs concatenated); stacked over the groups.

    Args:
        groups: G lists of linear layers on the same input (one list per expert).
        outputs_from: keep the fused outputs outputs_from.. only.

    Returns:
        `matmul_operand` of the weights [G, Din, Dout] and the bias [G, 1, Dout] or None.
    """
    fused = [_weight_and_bias(group) for group in groups]
    weight = matmul_operand(torch.stack([w[outputs_from:] for w, _ in fused]))
    if fused[0][1] is None:
        return weight, None
    return weight, torch.stack([b[outputs_from:] for _, b in fused]).unsqueeze(1)


def matmul_operand(weight: Tensor) -> Tensor:
    """A linear layer's weight [..., Dout, Din] as the right operand M [..., Din, Dout] of x @ M.

    At sampling time x has one to a few rows, and the CPU matmul is then bound by reading M: read
    along its rows (measured on the project's CPU: 1.5-3x faster than through the transposed view
    when Dout >= Din, a little slower when Din > Dout). So M is a contiguous copy when it widens
    and the transposed view of the weight itself when it narrows.
    """
    operand = weight.detach().transpose(-1, -2)
    return operand.contiguous() if weight.shape[-2] >= weight.shape[-1] else operand


def apply_operand(x: Tensor, operand: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., N, Din] @ operand [..., Din, Dout] + bias [..., 1, Dout] (2-D or stacked 3-D)."""
    if operand.dim() == 3:
        return torch.bmm(x, operand) if bias is None else torch.baddbmm(bias, x, operand)
    flat = x.reshape(-1, x.shape[-1])
    y = flat @ operand if bias is None else torch.addmm(bias, flat, operand)
    return y.view(*x.shape[:-1], -1)


def rms_norm_stacked(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Per-expert RMSNorm: x [G, N, D], weight [G, 1, D]."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * weight


class StackedTemporal:
    """Cached steps (or a prompt's prefill) of G stacks of `TemporalBlock`s at once (weights stacked on an axis G).

    Siren's experts share no weights but have the same shapes, so each of their linear layers
    becomes one batched matmul and each attention one call over G x N rows: G times fewer
    kernels than running the experts one after another. The delay-pattern baseline runs its
    single stack through the same code (G = 1), so both models sample on the same kernels. The
    math is that of `TemporalBlock` in eval mode (no dropout), positions re-added before each
    block and a final RMSNorm; `tests/models/test_generation_layout.py` checks it against the
    blocks.

    Args:
        stacks: G equal-shaped sequences of `TemporalBlock`s (each expert's `temporal`).
        final_norms: the G `RMSNorm`s after them.
        text_states: [N, L, Dt]; text_mask: [N, L] bool.
        max_len: steps the KV cache holds.
        durations: the G stacks' `DurationEmbedding`s (duration-conditioned models), or None.
        total_frames: [N] requested clip lengths in frames (with `durations`).
    """

    def __init__(
        self,
        stacks: list[nn.ModuleList],
        final_norms: list[nn.RMSNorm],
        text_states: Tensor,
        text_mask: Tensor,
        max_len: int,
        durations: list[DurationEmbedding] | None = None,
        total_frames: Tensor | None = None,
    ) -> None:
        if any(block.training for blocks in stacks for block in blocks):
            raise ValueError("StackedTemporal: put the model in eval mode (no dropout)")
        first = stacks[0][0]
        self.g, self.n = len(stacks), text_states.shape[0]
        self.width = first.self_norm.weight.shape[0]
        self.heads, self.eps = first.attn.num_heads, first.self_norm.eps

        def stack(tensors: list[Tensor | None]) -> Tensor | None:
            return None if tensors[0] is None else torch.stack([t.detach() for t in tensors])

        def stack_norms(norms: list) -> Tensor:  # -> [G, 1, D]
            return stack([norm.weight for norm in norms]).unsqueeze(1)

        self.layers = []
        for blocks in zip(*stacks):
            parts = [block.inference_parts() for block in blocks]
            layer: dict[str, Any] = {}
            for name in TemporalParts._fields:  # norms -> [G, 1, D]; linears -> stacked operands
                pieces = [getattr(p, name) for p in parts]
                is_norm = isinstance(pieces[0], nn.RMSNorm)
                layer[name] = stack_norms(pieces) if is_norm else stack_linears(pieces)
            kv = [block.cross.text_kv(text_states) for block in blocks]
            layer["text_k"] = torch.cat([k for k, _ in kv])  # [G*N, H, L, D/H]
            layer["text_v"] = torch.cat([v for _, v in kv])
            layer["cache"] = KVCache(max_len)
            self.layers.append(layer)
        self.final_norm = stack_norms(final_norms)
        positions = torch.arange(max_len, device=text_states.device)
        self.positions = sinusoidal_positions(positions, self.width).to(text_states.dtype)
        self.duration_weight, self.total_frames = None, total_frames
        if durations is not None:  # [G, D, D]: each stack's projection of the timing features
            self.duration_weight = stack([d.proj.weight for d in durations])
        has_text = text_mask.any(dim=1).repeat(self.g)  # [G*N]
        self.text_allowed = (text_mask.repeat(self.g, 1) | ~has_text[:, None])[:, None, None, :]
        self.has_text = has_text[:, None, None, None]

    def _heads(self, x: Tensor, t: int) -> Tensor:  # [G, N*T, D] -> [G*N, H, T, D/H]
        return x.reshape(self.g * self.n, t, self.heads, -1).transpose(1, 2)

    def _merge(self, y: Tensor) -> Tensor:  # [G*N, H, T, D/H] -> [G, N*T, D]
        return y.transpose(1, 2).reshape(self.g, -1, self.width)

    def step(self, x: Tensor, t: int) -> Tensor:
        """Temporal outputs of frame t.

        Args:
            x: [G, N, D] inputs of frame t (sum of frame t-1's vectors, or the start vectors).

        Returns:
            [G, N, D] normalised temporal outputs.
        """
        return self.run(x[:, :, None], t)[:, :, 0]

    def run(self, x: Tensor, offset: int) -> Tensor:
        """Temporal outputs of T consecutive positions, appended to the caches in one pass
        (a prompt's prefill; `step` is T = 1).

        Args:
            x: [G, N, T, D] inputs of positions offset .. offset + T - 1; the caches must hold
                positions 0 .. offset - 1 (and room for T more).

        Returns:
            [G, N, T, D] normalised temporal outputs.
        """
        g, n, t, d = x.shape
        x = x.reshape(g, n * t, d)  # [G, N*T, D], frames of clip i in rows i*T .. i*T + T-1
        pos = self.positions[offset : offset + t].repeat(n, 1)  # [N*T, D]
        if self.duration_weight is not None:
            timing = clip_timing(self.total_frames, t, offset)  # [N, T, 2]
            feats = DurationEmbedding.features(timing, d).to(pos.dtype).view(n * t, d)
            pos = pos + torch.einsum("nd,ged->gne", feats, self.duration_weight)  # [G, N*T, D]
        for layer in self.layers:
            x = x + pos
            h = rms_norm_stacked(x, layer["cross_norm"], self.eps)
            q = self._heads(apply_operand(h, *layer["cross_query"]), t)
            y = F.scaled_dot_product_attention(
                q, layer["text_k"], layer["text_v"], attn_mask=self.text_allowed
            )
            y = y * self.has_text.to(y.dtype)
            x = x + apply_operand(self._merge(y), *layer["cross_out"])
            h = rms_norm_stacked(x, layer["self_norm"], self.eps)
            qkv = apply_operand(h, *layer["qkv"]).reshape(g * n, t, 3, self.heads, -1)
            q, k, v = qkv.transpose(1, 3).unbind(2)  # [G*N, H, T, D/H] each
            past = layer["cache"].length
            k, v = layer["cache"].append(k, v)
            y = causal_attention(q, k, v, past)
            x = x + apply_operand(self._merge(y), *layer["attn_out"])
            h = rms_norm_stacked(x, layer["mlp_norm"], self.eps)
            gate, up = apply_operand(h, *layer["gate_up"]).chunk(2, dim=-1)
            x = x + apply_operand(F.silu(gate) * up, *layer["down"])
        return rms_norm_stacked(x, self.final_norm, self.eps).view(g, n, t, d)


def check_config_ranges(config: Any, layer_fields: tuple[str, ...]) -> None:
    """Range checks shared by the LM configs: one clear message per bad value.

    Sizes (`num_codebooks`, `codebook_size`, `latent_dim`, `width`, `num_heads`, `text_dim`,
    `max_frames`, `mlp_hidden` when set) and the layer counts in `layer_fields` must be >= 1,
    `dropout` in [0, 1) and `norm_eps` positive.
    """
    owner = type(config).__name__
    sizes = ("num_codebooks", "codebook_size", "latent_dim", "width", "num_heads", "text_dim")
    for name in (*sizes, "max_frames", *layer_fields):
        if getattr(config, name) < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {getattr(config, name)}")
    if config.mlp_hidden is not None and config.mlp_hidden < 1:
        raise ValueError(f"{owner}: mlp_hidden must be >= 1, got {config.mlp_hidden}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {config.dropout}")
    if not config.norm_eps > 0:
        raise ValueError(f"{owner}: norm_eps must be positive, got {config.norm_eps}")
