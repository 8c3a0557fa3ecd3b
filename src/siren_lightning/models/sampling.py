"""Sampling for `SirenLM` and `DelayPatternLM`: the filters, classifier-free guidance and the
loop driver (DESIGN.md section 5; not in the official code).

Letters: B captions, N = B (or 2B with classifier-free guidance), r codebooks, T frames,
K codebook size, L text tokens, Dt text width.

The models own their generation: `model.begin(prompts, T)` allocates its caches and
`model.step(state, sampler)` runs one step (Siren: one frame, experts in order; the delay LM:
one delay step), drawing each code with `sampler(logits)`. This module only
- checks the settings (`SamplingConfig`, `check_sampling`, defaults defined once here) and
  chooses the ones in effect (`resolve_sampling`: given > the model's own > the defaults);
- stacks the unconditional prompt under the prompt when guiding (`prepare_prompts`);
- turns logits into codes (`Sampler`: `guide`, then temperature, top-k, top-p);
- drives the loop (`generate_frames`, `generate`, `generate_for_captions`).

Classifier-free guidance is `guide`: ``uncond + scale * (cond - uncond)``; the unconditional
prompt is the empty caption's states (or a negative caption's, per clip: `generate_for_captions`). `align.heldout`
scores policies with the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How codes are drawn; the defaults are what `siren generate`, the callbacks, the held-out
    evaluation and `siren adherence` use unless told otherwise.

    Attributes:
        temperature: logits are divided by it; 0 samples greedily.
        top_k: keep the k most likely codes (0: all).
        top_p: nucleus filter (1: off).
        cfg_scale: classifier-free guidance scale (1: conditional logits only).
    """

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 1.0
    cfg_scale: float = 3.0

    def __post_init__(self) -> None:
        check_sampling("SamplingConfig", **asdict(self))


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


# The defaults as a plain dict (for `**sampling` calls).
DEFAULT_SAMPLING: dict[str, float] = asdict(SamplingConfig())


class ResolvedSampling(NamedTuple):
    """The sampling settings in effect and where each came from (`resolve_sampling`).

    Attributes:
        values: all four settings, for `generate(**values)`.
        sources: setting -> "given", the model's label (its generation.json) or "default".
    """

    values: dict[str, Any]
    sources: dict[str, str]

    def describe(self) -> str:
        """One line: `sampling: temperature 0.7 (model generation.json), top_k 250 (default), ...`."""
        cells = [f"{k} {v:g} ({self.sources[k]})" for k, v in self.values.items()]
        return "sampling: " + ", ".join(cells)


def resolve_sampling(
    owner: str,
    given: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    model_label: str = "model generation.json",
) -> ResolvedSampling:
    """The one place the settings in effect are chosen: given > the model's own > the defaults.

    Args:
        owner: who asks, for error messages.
        given: explicit settings (flags, arguments); a None value counts as not given.
        model: the model's own defaults (`generation_config.read_generation_config`), if any.
        model_label: how `sources` names the model's defaults.
    """
    layers = (("default", DEFAULT_SAMPLING), (model_label, model or {}), ("given", given or {}))
    values, sources = {}, {}
    for label, layer in layers:
        unknown = set(layer) - set(DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(f"{owner}: unknown sampling setting(s) {sorted(unknown)}")
        for name, value in layer.items():
            if value is not None:
                values[name], sources[name] = value, label
    check_sampling(owner, **values)
    values["top_k"] = int(values["top_k"])
    return ResolvedSampling(values, sources)


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
    probs = sampling_probabilities(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sampling_probabilities(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """The distribution `sample_logits` draws from: [N, K] logits -> [N, K] probabilities
    (temperature 0: all of it on the argmax)."""
    if temperature <= 0.0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = filter_top_p(filter_top_k(logits.float() / temperature, top_k), top_p)
    return logits.softmax(dim=-1)


def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance, the one place it is written: ``uncond + scale * (cond - uncond)``.

    Args:
        cond, uncond: logits of the same shape [..., K] with and without the caption.
        scale: 1 gives `cond`, 0 gives `uncond`.
    """
    return uncond + scale * (cond - uncond)


def contrast_control(guided: Tensor, cond: Tensor, contrast: Tensor, scale: float) -> Tensor:
    """Guidance towards what the control curve says: ``guided + scale * (cond - contrast)``.

    Args:
        guided: the text-guided logits [..., K] (`guide`, or `cond` without text guidance).
        cond, contrast: logits with the caption under the curve, and under a copy of the curve
            without what the plan should add (`data.loudness.guidance_curve`).
        scale: 0 gives `guided`.
    """
    return guided + scale * (cond - contrast)


class Sampler:
    """Logits to codes: guidance (when on), then temperature, top-k and top-p.

    Args:
        config: the sampling settings.
        guided: the rows are [conditional; unconditional] (N = 2B) and are mixed by `guide`.
        generator: seeds the draws.
        control_scale: != 0: a last row block read the captions under a copy of each control
            curve, and `contrast_control` adds control_scale x (cond - that block).
    """

    def __init__(
        self,
        config: SamplingConfig,
        guided: bool,
        generator: torch.Generator | None = None,
        control_scale: float = 0.0,
    ) -> None:
        self.config, self.guided, self.generator = config, guided, generator
        self.control_scale = control_scale

    def __call__(self, logits: Tensor) -> Tensor:
        """[N, ..., K] logits -> [B, ...] long codes."""
        c = self.config
        logits = self._guided(logits)
        flat = logits.reshape(-1, logits.shape[-1])
        codes = sample_logits(flat, c.temperature, int(c.top_k), c.top_p, self.generator)
        return codes.view(logits.shape[:-1])

    def probabilities(self, logits: Tensor) -> Tensor:
        """[N, ..., K] logits -> [B, ..., K] the distribution `__call__` draws from (an
        analysis hook: benchmarks/event_edges.py records it)."""
        c = self.config
        logits = self._guided(logits)
        flat = logits.reshape(-1, logits.shape[-1])
        probs = sampling_probabilities(flat, c.temperature, int(c.top_k), c.top_p)
        return probs.view(logits.shape)

    def _guided(self, logits: Tensor) -> Tensor:
        blocks = logits.chunk(1 + int(self.guided) + int(self.control_scale != 0))
        cond = blocks[0]
        mixed = guide(cond, blocks[1], self.config.cfg_scale) if self.guided else cond
        if self.control_scale != 0:
            mixed = contrast_control(mixed, cond, blocks[-1], self.control_scale)
        return mixed


class Prompts(NamedTuple):
    """The text conditioning a model generates from (made by `prepare_prompts`).

    Attributes:
        states: [N, L, Dt] token states: the conditional rows, then the unconditional ones
            when `guided`, then the conditional ones again when `contrasted` (N = copies x B).
        mask: [N, L] bool.
        total_frames: [N] length of each requested clip, for duration-conditioned models.
        guided: the rows hold an unconditional block (classifier-free guidance).
        control: [N, T, C] per-frame control features (LMs with `control_dim` > 0), the
            same for the unconditional rows; None for none.
        contrasted: the last block holds the captions again under a copy of each control
            curve (`generate(control_contrast=)`).
    """

    states: Tensor
    mask: Tensor
    total_frames: Tensor
    guided: bool
    control: Tensor | None = None
    contrasted: bool = False

    @property
    def copies(self) -> int:
        """Rows per clip: the conditional one, the unconditional one when `guided`, the
        control-contrast one when `contrasted`."""
        return 1 + int(self.guided) + int(self.contrasted)

    @property
    def batch(self) -> int:
        """B, the clips generated."""
        return self.states.shape[0] // self.copies

    def tile(self, x: Tensor, dim: int = 0) -> Tensor:
        """[.., B, ..] per-clip values (e.g. the codes just drawn) -> [.., N, ..], one copy for
        every row block."""
        return torch.cat([x] * self.copies, dim) if self.copies > 1 else x


def _pad_tokens(states: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad [B, L, Dt] states and [B, L] mask to `length` tokens."""
    extra = length - states.shape[1]
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def prepare_prompts(
    text_states: Tensor,
    text_mask: Tensor,
    num_frames: int,
    *,
    text_dim: int,
    dtype: torch.dtype,
    uncond_states: Tensor | None = None,
    uncond_mask: Tensor | None = None,
    guided: bool = False,
    total_frames: Tensor | None = None,
    control: Tensor | None = None,
    control_contrast: Tensor | None = None,
) -> Prompts:
    """Check the prompts and stack the unconditional ones under them when guiding.

    Args:
        text_states: [B, L, Dt]; text_mask: [B, L] bool.
        num_frames: T, the frames generated (every clip's length when `total_frames` is None).
        text_dim: Dt the model expects; dtype: of its activations.
        uncond_states, uncond_mask: [1 or B, L', Dt], [1 or B, L'] (needed when guided): the
            empty caption, or one negative caption per clip.
        total_frames: [B] length of each requested clip (a batch generated to its longest clip
            and cut per clip passes each clip's own length here).
        control: [B, T, C] per-frame control features (the same for the unconditional rows).
        control_contrast: [B, T, C] a copy of the control without what the plan should add
            (e.g. its steady copy): a last row block reads the captions under it, for
            `contrast_control`.
    """
    if text_states.dim() != 3 or text_states.shape[-1] != text_dim:
        raise ValueError(
            f"generate: text_states must be [B, L, Dt={text_dim}], got {tuple(text_states.shape)}"
        )
    b = text_states.shape[0]
    if total_frames is None:
        total_frames = torch.full((b,), num_frames, device=text_states.device)
    if total_frames.shape != (b,):
        raise ValueError(f"generate: total_frames must be [B={b}], got {tuple(total_frames.shape)}")
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
        total_frames = torch.cat([total_frames, total_frames])  # [2B]
        control = None if control is None else torch.cat([control, control])  # [2B, T, C]
    contrasted = control_contrast is not None
    if contrasted:
        if control is None or control_contrast.shape != control[:b].shape:
            got = None if control is None else tuple(control[:b].shape)
            raise ValueError(
                f"generate: control_contrast {tuple(control_contrast.shape)} needs a control of "
                f"the same shape, got {got}"
            )
        text_states = torch.cat([text_states, text_states[:b]])  # the captions once more
        text_mask = torch.cat([text_mask, text_mask[:b]])
        total_frames = torch.cat([total_frames, total_frames[:b]])
        control = torch.cat([control, control_contrast])
    return Prompts(text_states.to(dtype), text_mask, total_frames, guided, control, contrasted)


@torch.no_grad()
def generate_frames(
    model: Any,
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
    prompt_codes: Tensor | None = None,
    wrap_sampler: Callable[[Sampler], Callable[[Tensor], Tensor]] | None = None,
    control: Tensor | None = None,
    control_contrast: Tensor | None = None,
    control_scale: float = 0.0,
) -> Iterator[Tensor]:
    """Generate codes frame by frame (streaming): the loop over `model.begin` / `model.step`.

    Args:
        model: a `SirenLM` or a `DelayPatternLM` in eval mode.
        text_states: [B, L, Dt]; text_mask: [B, L] bool.
        num_frames: T.
        uncond_states, uncond_mask: [1 or B, L', Dt], [1 or B, L'] states of the empty caption
            (or of one negative caption per clip); needed when cfg_scale != 1.
        cfg_scale: classifier-free guidance scale (1: conditional logits only).
        temperature, top_k, top_p: sampling filters (temperature 0: greedy).
        generator: seeds the draws.
        use_cache: False recomputes every step over the whole prefix (reference path).
        batch_experts: Siren only: with the cache, run all experts' temporal steps as one
            batched step (the stacked layout); False runs them one after another.
        total_frames: [B] length of each requested clip, which duration-conditioned models
            are told (num_frames for every clip when None).
        prompt_codes: [B, r, P] codes the clips start with (P <= T): frames 0 .. P-1 are
            these codes, not draws, and the rest continue them. `model.begin` feeds them in
            one forward (prefill); the first `model.step` makes frame P.
        wrap_sampler: wraps the sampler the model's steps call (an analysis hook, e.g. one that
            replaces some draws by given codes: benchmarks/where_text_is_lost.py).
        control: [B, T, C] per-frame control features, for LMs with `control_dim` > 0 (e.g.
            the loudness curve a `LoudnessPlanner` draws for the caption).
        control_contrast: [B, T, C] a copy of `control` without what the plan should add;
            with control_scale != 0 the draws follow ``guided + control_scale * (cond -
            contrast)`` (`contrast_control`), guided being the text-guided logits.
        control_scale: the weight of that term (0: off, the copy is not read).

    Yields:
        [B, r] long codes of each frame.
    """
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
    check_sampling("generate", **settings)
    config = SamplingConfig(**settings)
    c = model.config
    if num_frames > c.max_frames and use_cache:
        raise ValueError(f"generate: {num_frames} frames exceed config.max_frames {c.max_frames}")
    prompts = prepare_prompts(
        text_states,
        text_mask,
        num_frames,
        text_dim=c.text_dim,
        dtype=model.codebook_table.dtype,
        uncond_states=uncond_states,
        uncond_mask=uncond_mask,
        guided=cfg_scale != 1.0,
        total_frames=total_frames,
        control=control,
        control_contrast=control_contrast if control_scale != 0 else None,
    )
    if control_scale != 0 and control_contrast is None:
        raise ValueError("generate: control_scale != 0 needs control_contrast")
    model.check_control(control, text_states.shape[0], num_frames)
    if prompt_codes is not None:
        b, r = prompts.batch, c.num_codebooks
        if prompt_codes.dim() != 3 or prompt_codes.shape[:2] != (b, r):
            raise ValueError(
                f"generate: prompt_codes must be [B={b}, r={r}, P], got {tuple(prompt_codes.shape)}"
            )
        if prompt_codes.shape[-1] > num_frames:
            raise ValueError(
                f"generate: {prompt_codes.shape[-1]} prompt frames exceed num_frames {num_frames}"
            )
    sampler = Sampler(config, prompts.guided, generator, control_scale)
    if wrap_sampler is not None:
        sampler = wrap_sampler(sampler)
    state = model.begin(prompts, num_frames, use_cache, batch_experts, prompt_codes)
    given = 0 if prompt_codes is None else prompt_codes.shape[-1]
    try:
        for t in range(given):  # `begin` has read them (the prefill)
            yield prompt_codes[:, :, t]
        for _ in range(num_frames - given):
            yield model.step(state, sampler)
    finally:
        model.end(state)  # frees the caches the attention modules hold


def generate(
    model: Any, text_states: Tensor, text_mask: Tensor, num_frames: int, **kwargs: Any
) -> Tensor:
    """Generate codes for a batch of prompts; see `generate_frames` for the arguments.

    Returns:
        [B, r, T] long.
    """
    frames = list(generate_frames(model, text_states, text_mask, num_frames, **kwargs))
    return torch.stack(frames, dim=-1)


def encode_captions(
    text_encoder: Any, captions: list[str], negative_captions: list[str] | None = None
) -> dict[str, Tensor]:
    """The text conditioning of captions, as `generate`'s keyword arguments.

    Encodes the captions and the captions classifier-free guidance contrasts them with
    (`text_encoder.encode(list[str]) -> TextStates`).

    Args:
        negative_captions: one per caption, the text of its unconditional branch, so guidance
            mixes `negative + scale * (cond - negative)` (a negative prompt: what to steer
            away from); None, or "" for every clip, is the empty caption.

    Returns:
        text_states [B, L, Dt], text_mask [B, L], uncond_states [1 or B, L', Dt], uncond_mask.
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
    return dict(
        text_states=text.states,
        text_mask=text.mask,
        uncond_states=empty.states,
        uncond_mask=empty.mask,
    )


def generate_for_captions(
    model: Any,
    text_encoder: Any,
    captions: list[str],
    num_frames: int,
    negative_captions: list[str] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Generate codes for captions: `encode_captions`, then `generate`; see `generate_frames`
    for `kwargs` (cfg_scale, sampling filters, generator, prompt_codes).

    Returns:
        [B, r, T] long.
    """
    text = encode_captions(text_encoder, captions, negative_captions)
    return generate(model, num_frames=num_frames, **text, **kwargs)
