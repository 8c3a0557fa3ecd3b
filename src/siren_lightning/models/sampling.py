"""Autoregressive generation for `SirenLM` and `DelayPatternLM` (DESIGN.md section 5; not in the
official code).

Letters: B captions, N = B (or 2B with classifier-free guidance), r codebooks, g codebooks per
expert, T frames, S = T + r - 1 delay steps, K codebook size, D width, D_lat codec latent width,
L text tokens.

`generate_frames` dispatches on the model. For `SirenLM`, per frame t:
1. every expert's temporal transformer takes one step on frame t-1's codes. The steps are
   independent of each other (they read only frame t-1), so they all run before any decoder;
   self-attention keys/values come from a `KVCache` and the text keys/values of the
   cross-attentions are computed once per prompt;
2. the small per-frame decoders run in expert order 0 .. r/g-1; expert k samples codes
   gk .. gk+g-1 one at a time and sees the codes that earlier experts sampled for this frame.
   Their first token, h_t, needs no code of the frame, so it runs for all experts at once and
   each later token only adds itself to the decoder's KV cache (`CachedDecoders`).

For `DelayPatternLM`, per delay step s: one cached step of the single transformer on step s-1's
codes, then every codebook q that holds a code at step s (frame s - q) is sampled from its head;
frame t is complete, and streamed out, after step t + r - 1.

Classifier-free guidance mixes conditional and unconditional logits,
`uncond + scale * (cond - uncond)`; the unconditional prompt is the empty caption's states, or
a negative caption's per clip (`generate_for_captions`). The prompt handling, guidance and
filters are shared by both models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siren_lightning.models.blocks import (
    DurationEmbedding,
    KVCache,
    clip_timing,
    sinusoidal_positions,
)
from siren_lightning.models.delay_lm import DelayPatternLM
from siren_lightning.models.siren import SirenLM

# What `siren generate`, the callbacks and `siren adherence` draw with unless told otherwise.
DEFAULT_SAMPLING: dict[str, float] = {
    "temperature": 1.0,
    "top_k": 250,
    "top_p": 1.0,
    "cfg_scale": 3.0,
}


def check_sampling(owner: str = "sampling", **settings: Any) -> None:
    """One clear error for a nonsense sampling setting (before any model loads).

    Args:
        owner: who asks, for the message (`siren generate`, `AlignModule: rollout_sampling`).
        settings: any of `temperature` (>= 0; 0 is greedy), `top_k` (an integer >= 0; 0 keeps
            every code), `top_p` (in (0, 1]; 1 keeps every code), `cfg_scale` (finite).
    """
    rules = {
        "temperature": (lambda v: v >= 0, "must be >= 0 (0 samples greedily)"),
        "top_k": (lambda v: v >= 0 and float(v).is_integer(), "must be an integer >= 0 (0: off)"),
        "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1] (1: off)"),
        "cfg_scale": (lambda v: True, "must be finite"),
    }
    for name, value in settings.items():
        if name not in rules or value is None:
            continue
        ok, rule = rules[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
        if not math.isfinite(value) or not ok(value):
            raise ValueError(f"{owner}: {name} {rule}, got {value}")


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of the last dimension, set the rest to -inf (k <= 0: all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely entries whose mass reaches p.

    The most likely entry is always kept; p >= 1 keeps everything.
    """
    if p >= 1.0:
        return logits
    if p <= 0.0:
        raise ValueError(f"filter_top_p: p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely entries
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one code per row.

    Args:
        logits: [N, K].
        temperature: 0 means greedy (argmax).

    Returns:
        [N] long.
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = filter_top_p(filter_top_k(logits.float() / temperature, top_k), top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _pad_tokens(states: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad [B, L, Dt] states and [B, L] mask to `length` tokens."""
    extra = length - states.shape[1]
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def prepare_prompts(
    text_states: Tensor,
    text_mask: Tensor,
    uncond_states: Tensor | None,
    uncond_mask: Tensor | None,
    cfg_scale: float,
    text_dim: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, bool]:
    """Check the prompts and stack the unconditional ones under them when guiding.

    Args:
        text_states: [B, L, Dt]; text_mask: [B, L] bool.
        uncond_states, uncond_mask: [1 or B, L', Dt], [1 or B, L'] (needed when cfg_scale != 1).

    Returns:
        states [N, L'', Dt] in `dtype`, mask [N, L''], and whether guidance is on (N = 2B).
    """
    if text_states.dim() != 3 or text_states.shape[-1] != text_dim:
        raise ValueError(
            f"generate: text_states must be [B, L, Dt={text_dim}], got {tuple(text_states.shape)}"
        )
    b = text_states.shape[0]
    guided = cfg_scale != 1.0
    if guided:
        if uncond_states is None or uncond_mask is None:
            raise ValueError("generate: cfg_scale != 1 needs uncond_states and uncond_mask")
        uncond_states = uncond_states.expand(b, -1, -1)
        uncond_mask = uncond_mask.expand(b, -1)
        length = max(text_states.shape[1], uncond_states.shape[1])
        text_states, text_mask = _pad_tokens(text_states, text_mask, length)
        uncond_states, uncond_mask = _pad_tokens(uncond_states, uncond_mask, length)
        text_states = torch.cat([text_states, uncond_states])  # [2B, L, Dt]
        text_mask = torch.cat([text_mask, uncond_mask])
    return text_states.to(dtype), text_mask, guided


def guide_and_sample(
    logits: Tensor,
    guided: bool,
    cfg_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Mix guided logits and draw codes.

    Args:
        logits: [N, ..., K]; with guidance the first half of N is conditional.

    Returns:
        [B, ...] long.
    """
    if guided:
        cond, uncond = logits.chunk(2)
        logits = uncond + cfg_scale * (cond - uncond)
    codes = sample_logits(
        logits.reshape(-1, logits.shape[-1]), temperature, top_k, top_p, generator
    )
    return codes.view(logits.shape[:-1])


# Parts of a `TemporalBlock` that `StackedTemporal` stacks across experts.
_NORMS = ("cross_norm", "self_norm", "mlp_norm")
# Linear layers that take the same input run as one matmul over their concatenated weights.
_LINEARS = {
    "cross.query": ("cross.query",),
    "cross.out": ("cross.out",),
    "attn.qkv": ("attn.qkv",),
    "attn.out": ("attn.out",),
    "mlp.gate_up": ("mlp.gate", "mlp.up"),
    "mlp.down": ("mlp.down",),
}


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


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Per-expert RMSNorm: x [G, N, D], weight [G, 1, D]."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * weight


class StackedTemporal:
    """One cached step of G stacks of `TemporalBlock`s at once (weights stacked on an axis G).

    Siren's experts share no weights but have the same shapes, so each of their linear layers
    becomes one batched matmul and each attention one call over G x N rows: G times fewer
    kernels than running the experts one after another. The delay-pattern baseline runs its
    single stack through the same code (G = 1), so both models sample on the same kernels. The
    math is that of `TemporalBlock` in eval mode (no dropout), positions re-added before each
    block and a final RMSNorm; `tests/models/test_sampling.py` checks it against the modules.

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
        stacks: list,
        final_norms: list,
        text_states: Tensor,
        text_mask: Tensor,
        max_len: int,
        durations: list | None = None,
        total_frames: Tensor | None = None,
    ):
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
            layer = {}
            for name in _NORMS:
                layer[name] = stack_norms([attrgetter(name)(block) for block in blocks])
            for name, parts in _LINEARS.items():
                layer[name] = stack_linears([[attrgetter(p)(b) for p in parts] for b in blocks])
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

    def _heads(self, x: Tensor) -> Tensor:  # [G, N, D] -> [G*N, H, 1, D/H]
        return x.reshape(self.g * self.n, self.heads, 1, -1)

    def _merge(self, y: Tensor) -> Tensor:  # [G*N, H, 1, D/H] -> [G, N, D]
        return y.reshape(self.g, self.n, self.width)

    def step(self, x: Tensor, t: int) -> Tensor:
        """Temporal outputs of frame t.

        Args:
            x: [G, N, D] inputs of frame t (sum of frame t-1's vectors, or the start vectors).

        Returns:
            [G, N, D] normalised temporal outputs.
        """
        pos = self.positions[t]
        if self.duration_weight is not None:
            timing = clip_timing(self.total_frames, 1, t)[:, 0]  # [N, 2]
            feats = DurationEmbedding.features(timing, self.width).to(pos.dtype)  # [N, D]
            pos = pos + torch.einsum("nd,ged->gne", feats, self.duration_weight)  # [G, N, D]
        for layer in self.layers:
            x = x + pos
            h = _rms_norm(x, layer["cross_norm"], self.eps)
            q = self._heads(apply_operand(h, *layer["cross.query"]))
            y = F.scaled_dot_product_attention(
                q, layer["text_k"], layer["text_v"], attn_mask=self.text_allowed
            )
            y = y * self.has_text.to(y.dtype)
            x = x + apply_operand(self._merge(y), *layer["cross.out"])
            h = _rms_norm(x, layer["self_norm"], self.eps)
            qkv = apply_operand(h, *layer["attn.qkv"]).reshape(
                self.g * self.n, 3, self.heads, 1, -1
            )
            q, k, v = qkv.unbind(1)  # [G*N, H, 1, D/H] each
            k, v = layer["cache"].append(k, v)
            y = F.scaled_dot_product_attention(q, k, v)
            x = x + apply_operand(self._merge(y), *layer["attn.out"])
            h = _rms_norm(x, layer["mlp_norm"], self.eps)
            gate, up = apply_operand(h, *layer["mlp.gate_up"]).chunk(2, dim=-1)
            x = x + apply_operand(F.silu(gate) * up, *layer["mlp.down"])
        return _rms_norm(x, self.final_norm, self.eps)


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
    count per code. `tests/models/test_sampling.py` checks it against `decode`.

    Args:
        experts: the G `ResidualGroupTransformer`s.
        rows: N, the rows sampled together (2B with classifier-free guidance).
        dtype: of the activations.
    """

    def __init__(self, experts: list, rows: int, dtype: torch.dtype) -> None:
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
            h = _rms_norm(x, norm1, self.eps)
            k, v = apply_operand(h, *kv).view(self.g, self.rows, 2, self.heads_count, -1).unbind(2)
            self.keys[i][:, :, :, 0] = k
            self.values[i][:, :, :, 0] = v
            if i == last:  # the last block's output at token 0 is never read
                break
            x = x + apply_operand(v.reshape(x.shape), *out)  # attention over itself alone: v
            h = _rms_norm(x, norm2, self.eps)
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


def expert_code_tables(experts: list, codebook_table: Tensor, dtype: torch.dtype) -> Tensor:
    """Every expert's projected vector of every code, to look up instead of projecting.

    Args:
        experts: the G `ResidualGroupTransformer`s.
        codebook_table: [r, K, D_lat] codec vectors.

    Returns:
        [G, r, K, D]: entry (k, j, c) is expert k's projector j applied to code c of codebook j.
    """
    table = codebook_table.to(dtype)
    r, size, _ = table.shape
    out = table.new_empty(len(experts), r, size, experts[0].config.width)
    for k, expert in enumerate(experts):
        weight = torch.stack([p.weight.detach() for p in expert.projectors]).to(dtype)  # [r, D, Dl]
        if expert.projectors[0].bias is None:
            torch.bmm(table, weight.transpose(1, 2), out=out[k])
        else:
            bias = torch.stack([p.bias.detach() for p in expert.projectors]).to(dtype)  # [r, D]
            torch.baddbmm(bias[:, None], table, weight.transpose(1, 2), out=out[k])
    return out


@torch.no_grad()
def generate_frames(
    model: SirenLM | DelayPatternLM,
    text_states: Tensor,
    text_mask: Tensor,
    num_frames: int,
    *,
    uncond_states: Tensor | None = None,
    uncond_mask: Tensor | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    batch_experts: bool = True,
    total_frames: Tensor | None = None,
) -> Iterator[Tensor]:
    """Generate codes frame by frame (streaming).

    Args:
        model: a `SirenLM` or a `DelayPatternLM` (put it in eval mode first).
        text_states: [B, L, Dt]; text_mask: [B, L] bool.
        num_frames: T.
        uncond_states, uncond_mask: [1 or B, L', Dt], [1 or B, L'] states of the empty caption;
            needed when cfg_scale != 1.
        cfg_scale: classifier-free guidance scale (1: conditional logits only).
        temperature, top_k, top_p: sampling filters (temperature 0: greedy).
        generator: seeds the draws.
        use_cache: False recomputes every temporal step over the whole prefix (reference path).
        batch_experts: Siren only: with the cache, run all experts' temporal steps as one
            batched step (`StackedTemporal`); False runs them one after another.
        total_frames: [B] length of each requested clip, which duration-conditioned models
            are told (num_frames for every clip when None: a batch generated to its longest
            clip and cut per clip passes each clip's own length here).

    Yields:
        [B, r] long codes of each frame.
    """
    check_sampling(
        "generate", temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale
    )
    c = model.config
    b = text_states.shape[0]
    if num_frames > c.max_frames and use_cache:
        raise ValueError(f"generate: {num_frames} frames exceed config.max_frames {c.max_frames}")
    dtype = model.codebook_table.dtype
    text_states, text_mask, guided = prepare_prompts(
        text_states, text_mask, uncond_states, uncond_mask, cfg_scale, c.text_dim, dtype
    )

    def choose(logits: Tensor) -> Tensor:  # [N, ..., K] -> [B, ...]
        return guide_and_sample(logits, guided, cfg_scale, temperature, top_k, top_p, generator)

    if total_frames is None:
        total_frames = torch.full((b,), num_frames, device=text_states.device)
    if total_frames.shape != (b,):
        raise ValueError(f"generate: total_frames must be [B={b}], got {tuple(total_frames.shape)}")
    totals = torch.cat([total_frames, total_frames]) if guided else total_frames  # [N]
    if isinstance(model, DelayPatternLM):
        yield from _delay_frames(
            model, text_states, text_mask, num_frames, choose, use_cache, totals
        )
        return
    n = text_states.shape[0]
    conditioned = c.duration_conditioning

    experts = list(model.experts)
    summaries = [e.text_summary(text_states, text_mask) for e in experts]  # [N, D] each
    stacked = (
        StackedTemporal(
            [e.temporal for e in experts],
            [e.temporal_norm for e in experts],
            text_states,
            text_mask,
            num_frames,
            [e.duration for e in experts] if conditioned else None,
            totals,
        )
        if use_cache and batch_experts
        else None
    )
    # The experts' own text keys/values and caches: only when they step one at a time
    # (`StackedTemporal` holds its own).
    looped = experts if stacked is None else []
    text_kv = [e.text_kv(text_states) for e in looped]
    caches = [[KVCache(num_frames) for _ in e.temporal] if use_cache else None for e in looped]
    history: list[list[Tensor]] = [[] for _ in experts]  # uncached path: inputs so far

    # e_j(code) of every expert, looked up instead of projected each frame: [G, r, K, D].
    tables = expert_code_tables(experts, model.codebook_table, dtype)
    r, size = c.num_codebooks, c.codebook_size
    flat_tables = tables.view(-1, tables.shape[-1])  # row (k * r + j) * K + code
    offsets = torch.arange(len(experts) * r, device=text_states.device).view(-1, r) * size
    decoders = CachedDecoders(experts, n, dtype)
    books = torch.arange(r, device=text_states.device)

    def embed(k: int, codes: Tensor, first: int) -> Tensor:
        # [B, m] codes of codebooks first .. first+m-1 -> [N, D] sum of expert k's vectors.
        m = codes.shape[1]
        rows = (codes + offsets[k, first : first + m]).view(-1)
        e = flat_tables.index_select(0, rows)  # [B * m, D]
        e = e if m == 1 else e.view(b, m, -1).sum(1)  # [B, D]
        return torch.cat([e, e]) if guided else e

    previous: Tensor | None = None  # [B, r] codes of frame t-1
    for t in range(num_frames):
        # 1. Temporal steps of all experts: each reads only frame t-1.
        if previous is None:
            inputs = torch.stack([e.start.to(dtype).expand(n, -1) for e in experts])  # [G, N, D]
        else:
            inputs = tables[:, books, previous].sum(2)  # [G, B, r, D] -> [G, B, D]
            inputs = torch.cat([inputs, inputs], 1) if guided else inputs  # [G, N, D]
        if stacked is not None:
            hidden = stacked.step(inputs, t)  # [G, N, D]
        else:
            steps = []
            for k, expert in enumerate(looped):
                x = inputs[k][:, None]  # [N, 1, D]
                if use_cache:
                    timing = clip_timing(totals, 1, t) if conditioned else None
                    h = expert.run_temporal(
                        x, text_kv[k], text_mask, caches[k], offset=t, timing=timing
                    )
                else:
                    history[k].append(x)
                    timing = clip_timing(totals, t + 1) if conditioned else None
                    h = expert.run_temporal(
                        torch.cat(history[k], 1), text_kv[k], text_mask, timing=timing
                    )
                steps.append(h[:, -1])  # [N, D]
            hidden = torch.stack(steps)
        # 2. Decoders in order; each sees the codes sampled so far in this frame. Token 0 of
        # every expert's decoder is h_t, known already: it runs for all experts at once.
        decoders.start(hidden)
        drawn: list[Tensor] = []  # [B] per codebook
        for k in range(len(experts)):
            first = k * c.group
            token = summaries[k]  # before = summary + this expert's vectors of codes < first
            if first > 0:
                token = token + embed(k, torch.stack(drawn, 1), 0)  # [N, D]
            for i in range(c.group):
                drawn.append(choose(decoders.step(k, token, i + 1)))
                if i < c.group - 1:
                    token = token + embed(k, drawn[-1][:, None], first + i)
        previous = torch.stack(drawn, 1)  # [B, r]
        yield previous


def _delay_frames(
    model: DelayPatternLM,
    text_states: Tensor,
    text_mask: Tensor,
    num_frames: int,
    choose: Callable[[Tensor], Tensor],
    use_cache: bool,
    totals: Tensor,
) -> Iterator[Tensor]:
    """`generate_frames` for the delay-pattern LM; prompts already prepared ([N, L, Dt])."""
    c = model.config
    r, idle = c.num_codebooks, c.codebook_size
    n = text_states.shape[0]
    steps = model.pattern.steps(num_frames)
    table = model.projected_table()  # [r, K + 1, D]
    text_kv = None if use_cache else model.text_kv(text_states)
    summary = model.text_summary(text_states, text_mask)  # [N, D]
    stacked, heads, heads_bias = None, None, None
    if use_cache:
        durations = None if model.duration is None else [model.duration]
        stacked = StackedTemporal(
            [model.blocks], [model.norm], text_states, text_mask, steps, durations, totals
        )
        heads, heads_bias = fused_operand(list(model.heads))  # the r heads as one matmul
    history: list[Tensor] = []  # uncached path: inputs so far
    valid = model.pattern.valid_mask(steps, text_states.device)  # [r, S]
    tokens = None  # [B, r] codes of step s - 1
    seq: list[Tensor] = []  # [B, r] per step
    codebooks = torch.arange(r, device=text_states.device)
    for s in range(steps):
        if tokens is None:
            e = table[:, idle].sum(0).expand(n, -1)  # the all-idle step, [N, D]
        else:
            e = table[codebooks, tokens].sum(1)  # [B, r, D] -> [B, D]
            e = torch.cat([e, e]) if n != e.shape[0] else e
        x = (e + summary)[:, None]  # [N, 1, D]
        if stacked is not None:
            h = stacked.step(x.transpose(0, 1), s)[0]  # [N, D]
            logits = apply_operand(h, heads, heads_bias).view(n, r, -1)  # [N, r, K]
        else:
            history.append(x)
            timing = clip_timing(totals, s + 1) if model.duration is not None else None
            logits = model.run(torch.cat(history, 1), text_kv, text_mask, timing=timing)
            logits = logits[:, :, -1]
        active = valid[:, s]  # [r]
        drawn = choose(logits[:, active])  # [B, n_active]
        tokens = drawn.new_full((drawn.shape[0], r), idle)
        tokens[:, active] = drawn
        seq.append(tokens)
        if s >= r - 1:  # frame s - r + 1 is complete: codebook q was drawn at step t + q
            t = s - r + 1
            yield torch.stack([seq[t + q][:, q] for q in range(r)], dim=1)  # [B, r]


def generate(
    model: SirenLM | DelayPatternLM,
    text_states: Tensor,
    text_mask: Tensor,
    num_frames: int,
    **kwargs,
) -> Tensor:
    """Generate codes for a batch of prompts; see `generate_frames` for the arguments.

    Returns:
        [B, r, T] long.
    """
    frames = list(generate_frames(model, text_states, text_mask, num_frames, **kwargs))
    return torch.stack(frames, dim=-1)


def generate_for_captions(
    model: SirenLM | DelayPatternLM,
    text_encoder: Any,
    captions: list[str],
    num_frames: int,
    negative_captions: list[str] | None = None,
    **kwargs,
) -> Tensor:
    """Generate codes for captions: encode them (and the captions that classifier-free
    guidance contrasts them with) with `text_encoder.encode(list[str]) -> TextStates`, then
    `generate`; see `generate_frames` for `kwargs` (cfg_scale, sampling filters, generator).

    Args:
        negative_captions: one per caption, the text of its unconditional branch, so guidance
            mixes `negative + scale * (cond - negative)` (a negative prompt: what to steer
            away from); None, or "" for a clip, is the empty caption.

    Returns:
        [B, r, T] long.
    """
    text = text_encoder.encode(captions)
    if negative_captions is None or not any(negative_captions):
        empty = text_encoder.encode([""])  # [1, L', Dt]: the same for every clip
    elif len(negative_captions) != len(captions):
        raise ValueError(
            f"generate: {len(negative_captions)} negative captions for {len(captions)} captions"
        )
    else:
        empty = text_encoder.encode(list(negative_captions))  # [B, L', Dt]
    return generate(
        model,
        text.states,
        text.mask,
        num_frames,
        uncond_states=empty.states,
        uncond_mask=empty.mask,
        **kwargs,
    )
