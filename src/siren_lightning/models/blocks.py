"""Transformer building blocks shared by the Siren experts (DESIGN.md section 1).

Letters: B batch, T sequence length (frames or decoder tokens), S cached length, D width,
H heads, L text tokens, Dt text width.

Every block is pre-norm (RMSNorm, eps 1e-5) with residual dropout. Attention goes through
`torch.nn.functional.scaled_dot_product_attention`. Its projections carry no bias, as in the
official Siren code: a key bias adds the same score to every key of a query, which softmax
ignores, so its true gradient is zero, and Adam would turn the float noise in that gradient
into learning-rate-sized steps that differ between CPUs and thread counts. Self-attention can run step by step with a
`KVCache`; cross-attention takes the text keys/values from `CrossAttention.text_kv`, so a sampler
computes them once per prompt.
"""

from __future__ import annotations

import math
from typing import Any

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
        self.register_load_state_dict_pre_hook(_refuse_attention_biases)

    def forward(self, x: Tensor, cache: KVCache | None = None, queries_from: int = 0) -> Tensor:
        """Attend causally over the sequence (and over the cache's earlier positions).

        Args:
            x: [B, T, D] new positions.
            cache: entries of the S earlier positions; the T new ones are appended to it.
            queries_from: without a cache, attend from positions queries_from.. only (the
                earlier ones still serve as keys and values): their outputs are not needed.

        Returns:
            [B, T - queries_from, D].
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, T, H, D/H] -> [B, H, T, D/H]
        past = 0
        if cache is not None:
            if queries_from:
                raise ValueError("SelfAttention: queries_from needs cache=None")
            past = cache.length
            k, v = cache.append(k, v)
        elif queries_from:  # the first queries_from positions act as a cache of earlier ones
            past, t, q = queries_from, t - queries_from, q[:, :, queries_from:]
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            # Query i sits at absolute position past + i and sees keys 0..past + i.
            allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
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

    def forward(
        self,
        x: Tensor,
        text_kv: tuple[Tensor, Tensor],
        text_mask: Tensor,
        cache: KVCache | None = None,
    ) -> Tensor:
        """[B, T, D] -> [B, T, D]; `text_kv` [B, H, L, D/H] each, `text_mask` [B, L]."""
        x = x + self.dropout(self.cross(self.cross_norm(x), text_kv, text_mask))
        x = x + self.dropout(self.attn(self.self_norm(x), cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


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
