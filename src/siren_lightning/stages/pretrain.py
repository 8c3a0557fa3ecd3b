"""Stage 1: teacher-forced training of `SirenLM` or the `DelayPatternLM` control (DESIGN.md 1, 5).

Letters: B batch, r codebooks, n trained codebooks, T frames, K codebook size, L text tokens,
Dt text width.

Code batches (from `SirenDataModule` in "codes" mode): `codes` [B, r, T] long, `mask` [B, T] bool
(True = real frame), `captions` list[str], and optionally cached `text_states` [B, L, Dt] with
`text_mask` [B, L]. The loss is the mean over the trained codebooks of each codebook's masked
cross-entropy; a chosen subset of experts (`train_groups`) can be trained alone since they share
no weights. Caption dropout replaces captions by the empty caption so that generation can use
classifier-free guidance (not in the official code; DESIGN.md section 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from siren_lightning.codec.base import seconds_to_frames, seconds_to_samples
from siren_lightning.data.code_cache import CodeCache
from siren_lightning.data.loudness import read_curves, window_control
from siren_lightning.data.manifest import read_manifest
from siren_lightning.data.resumable import global_seed, mix_seed
from siren_lightning.export import load_lm
from siren_lightning.generation_config import check_plan
from siren_lightning.lora import LoraSettings, add_lora, for_sampling
from siren_lightning.metrics.adherence import JUDGED, attribute_captions
from siren_lightning.models.base import CodecLM
from siren_lightning.models.sampling import check_sampling, generate, resolve_sampling
from siren_lightning.stages.chassis import (
    StageModule,
    check_codec_fits,
    check_optimizer,
    decay_groups,
    optimizer_factory,
)
from siren_lightning.stages.planner import CaptionPlan
from siren_lightning.text.encoder import TextEncoder


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine down to `min_ratio` at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def masked_codebook_stats(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    frame_weights: Tensor | None = None,
    token_ce: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Per-codebook masked cross-entropy and accuracy.

    Args:
        logits: [B, n, T, K]; targets: [B, n, T] long; mask: [B, n, T] bool.
        frame_weights: optional [B, T] weights of each frame's CE (all codebooks alike); the
            CE is then the weighted mean over the valid frames. Accuracy stays unweighted.
        token_ce: the per-token CE [B, n, T] of these logits and targets, when the caller has
            already computed it (it is not computed again).

    Returns:
        ce [n], accuracy [n] (means over the valid frames) and the valid frame counts [n].
    """
    b, n, t, k = logits.shape
    ce = token_ce
    if ce is None:
        ce = F.cross_entropy(logits.reshape(-1, k).float(), targets.reshape(-1), reduction="none")
        ce = ce.view(b, n, t)  # [B*n*T] -> [B, n, T]
    weights = mask.to(ce.dtype)
    count = weights.sum(dim=(0, 2))  # [n]
    denom = count.clamp_min(1.0)
    correct = (logits.argmax(-1) == targets).to(ce.dtype)
    accuracy = (correct * weights).sum((0, 2)) / denom
    if frame_weights is not None:
        weights = weights * frame_weights[:, None].to(ce.dtype)
        denom = weights.sum(dim=(0, 2)).clamp_min(1e-12)
    return (ce * weights).sum((0, 2)) / denom, accuracy, count


def transition_weights(
    codes: Tensor, mask: Tensor, silence_codes: Sequence[int], weight: float, frames: int
) -> Tensor:
    """Per-frame loss weights that stress where events start and end.

    A frame is silent when its codebook-0 code is one of `silence_codes` (what the codec spells
    digital silence with). A transition is a real frame whose silence differs from the frame
    before it. The `frames` frames before it, it, and the `frames - 1` after it get `weight`,
    every other frame 1. These are the frames where the caption and the timing decide (start
    now, stop now, at what level), and the history cannot: a few in a hundred, so plain
    teacher forcing barely trains them. The frames before matter at an event's end: the last
    sounding frame holds the event's fade-out edge, so the first silent frame is easy given it
    (the decision was that edge frame), as measured in docs/model.md "Events that do not end".

    Args:
        codes: [B, r, T] long; mask: [B, T] bool, True for real frames.

    Returns:
        [B, T] float (padded frames 1; the loss masks them anyway).
    """
    silent = torch.isin(codes[:, 0], torch.as_tensor(list(silence_codes), device=codes.device))
    change = torch.zeros_like(mask)
    change[:, 1:] = (silent[:, 1:] != silent[:, :-1]) & mask[:, 1:] & mask[:, :-1]
    # Frame u is in a window when a transition sits in u - frames + 1 .. u + frames.
    window = F.max_pool1d(
        F.pad(change[:, None].float(), (frames - 1, frames)), kernel_size=2 * frames, stride=1
    )[:, 0]
    return 1.0 + (weight - 1.0) * window * mask


def corrupt_history(codes: Tensor, mask: Tensor, rate: float) -> Tensor:
    """A copy of `codes` in which each real frame, with probability `rate`, is replaced by a
    frame drawn uniformly from the same clip's real frames (all r codebooks together).

    The LM reads it as its history while its targets stay the true codes, so it learns that one
    out-of-place frame (a silence frame drawn inside an event, a sounding one in a gap: the
    mistakes sampling makes) does not decide what comes next; the caption and the clip's
    timing must. Draws from torch's global generator (`StepSeed` makes it per-step exact).

    Args:
        codes: [B, r, T] long; mask: [B, T] bool, True for real frames.

    Returns:
        [B, r, T] long; padded frames and, at rate 0, everything are `codes` unchanged.
    """
    if rate <= 0:
        return codes
    b, _, t = codes.shape
    lengths = mask.sum(1).clamp(min=1)  # [B]
    # Bucketed batches are left-aligned: the real frames of clip i are 0 .. lengths[i] - 1.
    source = (torch.rand(b, t, device=codes.device) * lengths[:, None]).long()  # [B, T]
    replace = (torch.rand(b, t, device=codes.device) < rate) & mask
    index = torch.where(replace, source, torch.arange(t, device=codes.device).expand(b, t))
    return codes.gather(2, index[:, None].expand_as(codes))


def hold_history(codes: Tensor, mask: Tensor, rate: float) -> Tensor:
    """A copy of `codes` in which each real frame, with probability `rate`, repeats the frame
    before it as the LM reads it (so a run of held frames repeats the last kept one).

    Held frames make the history lag: an event's sound runs on past its end, silence past an
    onset, while the targets stay the true codes. The LM learns to end and start events from
    the caption and the clip's timing rather than from the edge of the previous frame (the last
    sounding frame holds the fade-out edge that gives an end away under teacher forcing, and
    that generation must produce itself). Frame 0 is always kept. Draws from torch's global
    generator (`StepSeed` makes it per-step exact).

    Args:
        codes: [B, r, T] long; mask: [B, T] bool, True for real frames.

    Returns:
        [B, r, T] long; padded frames and, at rate 0, everything are `codes` unchanged.
    """
    if rate <= 0:
        return codes
    b, _, t = codes.shape
    steps = torch.arange(t, device=codes.device).expand(b, t)
    held = (torch.rand(b, t, device=codes.device) < rate) & mask
    held[:, 0] = False
    # Each frame reads the last kept frame at or before it.
    index = torch.where(held, torch.zeros_like(steps), steps).cummax(dim=1).values
    return codes.gather(2, index[:, None].expand_as(codes))


def self_history(
    codes: Tensor,
    mask: Tensor,
    logits: Tensor,
    codebooks: Sequence[int],
    rate: float,
    temperature: float = 1.0,
) -> Tensor:
    """A copy of `codes` in which each real frame, with probability `rate`, holds the LM's own
    draw for it: codes sampled from teacher-forced `logits` (the codebooks the LM predicts; the
    others stay true).

    Generation reads its own draws, teacher forcing the true codes; mixing the model's draws
    into the history it reads, against true targets, shows it the mistakes it makes (parallel
    scheduled sampling, Duckworth et al. 2019) at the rate it makes them. Draws from torch's
    global generator (`StepSeed` makes it per-step exact).

    Args:
        codes: [B, r, T] long; mask: [B, T] bool; logits: [B, n, T, K] of codebooks
            `codebooks` (n of them).

    Returns:
        [B, r, T] long; padded frames and, at rate 0, everything are `codes` unchanged.
    """
    if rate <= 0:
        return codes
    b, n, t, k = logits.shape
    probs = (logits.detach().float() / temperature).softmax(-1)
    drawn = torch.multinomial(probs.reshape(-1, k), 1).view(b, n, t)
    replace = (torch.rand(b, t, device=codes.device) < rate) & mask  # whole frames
    out = codes.clone()
    index = torch.as_tensor(list(codebooks), device=codes.device)
    out[:, index] = torch.where(replace[:, None], drawn, codes[:, index])
    return out


def rollout_history(
    network: nn.Module,
    codes: Tensor,
    mask: Tensor,
    text_states: Tensor,
    text_mask: Tensor,
    start: int,
    frames: int,
    *,
    total_frames: Tensor | None = None,
    uncond: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    **sampling: Any,
) -> Tensor:
    """A copy of `codes` whose frames `start .. start + frames - 1` are the LM's own
    continuation of the true frames before `start`, drawn frame by frame as generation draws
    them (KV cache, guidance and the sampling filters).

    Parallel scheduled sampling (`self_history`) mixes in single draws from teacher-forced
    logits; generation fails on *runs* of its own frames (an event that drifts into a hole, or
    runs on past its end), which only sequential draws reproduce. Read as the history against
    the true targets, the run shows the LM the state its own sampling leaves it in and asks it
    to return to where the caption and the clock say the clip is (Bengio et al. 2015 scheduled
    sampling, done with the real sampler over a window).

    Args:
        network: the LM (its training mode is restored after the draws).
        codes: [B, r, T] long; mask: [B, T] bool, True for real frames (left-aligned).
        text_states: [B, L, Dt]; text_mask: [B, L] bool (the clips' captions).
        start: the first drawn frame, 1 <= start < T.
        frames: how many frames are drawn (the window is cut at T).
        total_frames: [B] each whole clip's frames (duration-conditioned LMs).
        uncond: (states [1 or B, L', Dt], mask) of the empty caption, needed when the
            sampling's `cfg_scale` is not 1.
        sampling: `generate_frames`'s settings (temperature, top_k, top_p, cfg_scale).

    Returns:
        [B, r, T] long: padded frames and frames outside the window are `codes` unchanged.
    """
    t = codes.shape[-1]
    if not 1 <= start < t or frames < 1:
        raise ValueError(
            f"rollout_history: need 1 <= start < {t} and frames >= 1, got {start}, {frames}"
        )
    end = min(start + frames, t)
    uncond_states, uncond_mask = (None, None) if uncond is None else uncond
    was_training = network.training
    network.eval()
    try:
        drawn = generate(
            for_sampling(network),
            text_states,
            text_mask,
            end,
            prompt_codes=codes[..., :start],
            total_frames=total_frames,
            uncond_states=uncond_states,
            uncond_mask=uncond_mask,
            generator=generator,
            **sampling,
        )  # [B, r, end]
    finally:
        network.train(was_training)
    out = codes.clone()
    window = mask[:, start:end]  # [B, W]
    out[..., start:end] = torch.where(window[:, None], drawn[..., start:end], codes[..., start:end])
    return out


def clip_text_gap(ce_own: Tensor, ce_other: Tensor, mask: Tensor) -> Tensor:
    """Per clip, the mean over its valid (codebook, frame) tokens of the CE under another
    caption minus the CE under its own (nats per token).

    `PretrainModule(caption_contrast_weight)` adds `relu(margin - gap)` to the loss: the LM
    learns to find its own caption more likely than one that differs in a few words (the
    maximum-mutual-information objective of conditional LMs), hinged so that a clip whose
    caption already matters by `margin` nats adds nothing.

    Args:
        ce_own, ce_other: [B, n, T] per-token CE; mask: [B, n, T] bool.

    Returns:
        [B] float.
    """
    weights = mask.to(ce_own.dtype)
    return ((ce_other - ce_own) * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1.0)


def future_code_loss(
    hidden: Tensor, heads: nn.ModuleList, offsets: Sequence[int], codes: Tensor, mask: Tensor
) -> Tensor:
    """Multi-frame prediction (Gloeckle et al. 2024): CE of codebook 0 `offsets` frames ahead.

    `PretrainModule(future_weight)` adds its mean to the loss. Teacher forcing lets the next
    frame copy the last one: a sounding frame is followed by sound in all but one frame of an
    event, so nothing asks the LM to know when the event will end (docs/model.md "Where holes
    start, and planning ahead"). Predicting codebook 0 d frames ahead from the temporal output of frame t (which
    reads the frames before t) does: for the d frames before each end the target is silence,
    which only the caption, the clock and the event's own start can foretell.

    Args:
        hidden: [B, T, D] expert 0's temporal outputs.
        heads: one linear D -> K per offset (training-only; not part of the LM or its export).
        offsets: d >= 1 per head: head i reads frame t's output and predicts frame t + d_i.
        codes: [B, T] the codebook-0 codes; mask: [B, T] bool, True for real frames.

    Returns:
        [len(offsets)] CE per offset, each the mean over the pairs (t, t + d) both real.
    """
    out = []
    for head, d in zip(heads, offsets, strict=True):
        valid = mask[:, :-d] & mask[:, d:]  # [B, T - d]
        logits = head(hidden[:, :-d][valid]).float()  # [V, K]
        if logits.shape[0] == 0:
            out.append(logits.sum())  # 0, attached to the graph
            continue
        out.append(F.cross_entropy(logits, codes[:, d:][valid]))
    return torch.stack(out)


def read_attributes(manifest: str) -> dict[str, dict[str, Any]]:
    """{clip id: attributes} of a manifest whose clips carry the judged SynthCaps attributes.

    Raises:
        ValueError: when a clip lacks pitch, count or envelope (one message, the first id).
    """
    out = {}
    for clip in read_manifest(manifest):
        if not all(k in (clip.attributes or {}) for k in JUDGED):
            raise ValueError(
                f"attributes_manifest {manifest}: clip {clip.id} has no {'/'.join(JUDGED)} "
                "attributes (a SynthCaps manifest has them)"
            )
        out[clip.id] = dict(clip.attributes)
    return out


def _check_ranges(warmup_steps: int, total_steps: int | None, min_lr_ratio: float) -> None:
    """One clear message per out-of-range schedule setting."""
    if warmup_steps < 0:
        raise ValueError(f"PretrainModule: warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and total_steps <= warmup_steps:
        raise ValueError(
            f"PretrainModule: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"PretrainModule: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


# The paper's optimizer (DESIGN.md 1): AdamW lr 3e-4, betas (0.9, 0.95), weight decay 0.05.
PRETRAIN_OPTIMIZER = {
    "class_path": "torch.optim.AdamW",
    "init_args": {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.05},
}


class PretrainModule(StageModule):
    """Teacher forcing for `SirenLM` (or `DelayPatternLM`) on code batches.

    Args:
        network: the LM to train. Either model returns `SirenOutput` and has a config with
            `num_groups` / `group` (the delay-pattern LM is one group of all r codebooks).
        text_encoder: frozen encoder for batches without cached `text_states` and for the empty
            caption of caption dropout. Its weights are not written into checkpoints.
        codec: optional codec (`n_codebooks`, `codebook_size`, `codebook_table()`), or a spec
            for `siren_lightning.codec.checkpoint.load_codec` (folder, .ckpt, `dac:16khz`);
            `setup` checks it against the LM and copies its table into the LM when the LM has
            none. Not part of the checkpoint; its SHA-256 and spec are.
        optimizer: the optimizer over the trainable parameters, from YAML (`class_path` and
            `init_args`; default `PRETRAIN_OPTIMIZER`, whose values a YAML may override one by
            one); its weight decay applies to parameters with 2+ dimensions only.
        warmup_steps: linear warm-up steps (of the optimizer's learning rate).
        total_steps: length of the cosine schedule; the trainer's estimate when None.
        min_lr_ratio: final learning rate as a fraction of the optimizer's.
        train_groups: experts to train (all when None); the others stay frozen.
        caption_dropout: probability of replacing a caption by the empty caption.
        history_noise: probability that a frame of the history the LM reads is replaced by
            another frame of the same clip (`corrupt_history`; training steps only, the targets
            stay true). A deviation from the paper (docs/model.md "Noisy history"); 0 is the
            paper's teacher forcing.
        history_hold: probability that a frame of the history the LM reads repeats the one
            before it (`hold_history`; training steps only, the targets stay true; applied
            before `history_noise` when both are set). A deviation from the paper.
        history_self: probability that a frame of the history the LM reads is the LM's own
            draw for that frame (`self_history`: one no-grad teacher-forced pass, codes drawn at
            `history_self_temperature`; training steps only, the targets stay true). Parallel
            scheduled sampling: the history holds the mistakes generation makes (a silent frame
            inside an event, an event that runs on) at the rate the model makes them. Applied
            before holding and noise. A deviation from the paper.
        history_self_temperature: the temperature of those draws.
        history_rollout: probability that a training clip's history holds a run of the LM's
            own frames (`rollout_history`: the true frames up to a start drawn per batch, then
            `history_rollout_frames` frames generated as `siren generate` would; training steps
            only, the targets stay true). Scheduled sampling over a window: the history holds
            the drift that generation's own runs of frames make (holes inside events, events
            that run on), and the loss asks the LM to return to the clip. Applied after
            `history_swap`, before the other history settings. A deviation from the paper
            (docs/model.md "Training on its own runs").
        history_rollout_frames: the frames drawn in each run.
        history_rollout_sampling: the sampling settings of the runs (`generate`'s temperature,
            top_k, top_p, cfg_scale); what is not given is `DEFAULT_SAMPLING`.
        history_swap: probability that a training clip's history is its copy in
            `history_cache`, cropped to the same window (training steps only, the targets
            stay true; applied before the other history settings). With the copy rendered
            with steady events (`siren prepare synthcaps --render-envelope steady`), the
            history no longer gives away where the level goes, and only the caption and the
            clock can. A deviation from the paper (docs/model.md "A history that hides the
            level").
        history_cache: a code cache (`siren tokenize`, the same codec) holding that copy of
            every training clip, under the same ids.
        transition_weight: loss weight of the frames where events start and end
            (`transition_weights`; training steps only). 1 is the paper's plain mean; a
            deviation from the paper otherwise (docs/model.md "Events that do not end").
        transition_frames: the half-width of each transition's window: that many frames
            before it and from it on get `transition_weight`.
        silence_codes: the codebook-0 codes that spell silence (`siren silence-codes` prints
            them for a codec); needed when `transition_weight` is not 1.
        caption_contrast_weight: weight of the hinge on `clip_text_gap` in the training loss (0: off, the
            paper's plain CE). Each training clip is also scored under its caption with one
            judged attribute (pitch, count or envelope, drawn per clip) swapped, worded alike
            (`attribute_captions`), and the hinge on the gap joins the loss. Both captions are
            made afresh by `make_caption` from the clip's attributes (the cached caption states
            are not used), so it needs `attributes_manifest`. A deviation from the paper
            (docs/model.md "Contrasted captions").
        caption_contrast_margin: the gap, in nats per token, beyond which a clip adds nothing.
        attributes_manifest: a JSONL manifest whose clips have SynthCaps attributes, read for
            `caption_contrast_weight` (the training clips' ids must be in it).
        future_weight: weight of `future_code_loss` in the training loss (0: off, the paper's
            plain CE). Expert 0's temporal output of each frame also predicts codebook 0 of the
            frames `future_offsets` ahead, through linear heads that only training uses. A
            deviation from the paper (docs/model.md "Where holes start, and planning
            ahead"); SirenLM only.
        future_offsets: the frames ahead, each >= 1.
        control_cache: a folder of `siren loudness` files (`*.pt`, {clip id: [T] curve}) for an
            LM with `control_dim` 1: every step (training and validation) gives the LM each
            clip's loudness curve over its window as per-frame control. A deviation from the
            paper (docs/model.md "A plan to follow").
        gradient_checkpointing: recompute block activations in the backward pass.
        predict_seconds: the length `siren predict` generates a clip at when its manifest gives
            no duration (else each clip's own duration).
        predict_sampling: `siren predict`'s sampling (`temperature`, `top_k`, `top_p`,
            `cfg_scale`; what is not given is `siren generate`'s default).
        plan: where an LM with `control_dim` 1 takes its per-frame plan when it generates in
            the loop (`sample_codes`: the audio-sample and FD/CLAP callbacks, and
            `TextFollowingCallback` unless it names its own planner), in generation.json's shape:
            `{"planner": ckpt, "control_scale": S, "control_guidance": "reversed"}`. Training
            reads the clips' own curves (`control_cache`), never the planner's. `siren export`
            writes it into the export's generation.json, so the model plans with no flag.
        init_weights: start the LM from the weights of a PretrainModule `.ckpt` or a folder
            written by `siren export` (model.safetensors); e.g. train experts [2, 3] on top of a
            run that trained [0, 1]. Unlike `ckpt_path`, no optimizer or loop state is taken.
        lora: fine-tune with LoRA adapters (`siren_lightning.lora`) on the transformer linear
            layers of the trained experts (`train_groups`, unless the settings name groups),
            on top of `init_weights`; every other weight stays frozen. `siren export` then
            writes the adapters alone, or the merged model with `--merge`.
    """

    def __init__(
        self,
        network: CodecLM,
        text_encoder: TextEncoder | None = None,
        codec: nn.Module | str | None = None,
        optimizer: OptimizerCallable = PRETRAIN_OPTIMIZER,
        warmup_steps: int = 2000,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        train_groups: Sequence[int] | None = None,
        caption_dropout: float = 0.1,
        history_noise: float = 0.0,
        history_hold: float = 0.0,
        history_self: float = 0.0,
        history_self_temperature: float = 1.0,
        history_rollout: float = 0.0,
        history_rollout_frames: int = 16,
        history_rollout_sampling: dict[str, float] | None = None,
        history_swap: float = 0.0,
        history_cache: str | None = None,
        transition_weight: float = 1.0,
        transition_frames: int = 4,
        silence_codes: Sequence[int] | None = None,
        caption_contrast_weight: float = 0.0,
        caption_contrast_margin: float = 0.5,
        attributes_manifest: str | None = None,
        future_weight: float = 0.0,
        future_offsets: Sequence[int] = (2, 4, 8, 16),
        control_cache: str | None = None,
        plan: dict[str, Any] | None = None,
        predict_seconds: float = 5.0,
        predict_sampling: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        init_weights: str | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        _check_ranges(warmup_steps, total_steps, min_lr_ratio)
        self.make_optimizer = optimizer_factory(optimizer, PRETRAIN_OPTIMIZER)
        check_optimizer(self.make_optimizer, "PretrainModule")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(
                f"PretrainModule: caption_dropout must be in [0, 1), got {caption_dropout}"
            )
        rates = {
            "history_noise": history_noise,
            "history_hold": history_hold,
            "history_self": history_self,
            "history_rollout": history_rollout,
            "history_swap": history_swap,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"PretrainModule: {name} must be in [0, 1), got {rate}")
        if history_rollout_frames < 1:
            raise ValueError(
                f"PretrainModule: history_rollout_frames must be >= 1, got {history_rollout_frames}"
            )
        if history_rollout > 0:
            self._rollout_sampling = resolve_sampling(
                "PretrainModule history_rollout_sampling", given=history_rollout_sampling
            ).values
            if self._rollout_sampling["cfg_scale"] != 1.0 and text_encoder is None:
                raise ValueError(
                    "PretrainModule: history_rollout with cfg_scale != 1 needs a text_encoder "
                    "for the empty caption"
                )
        control_dim = getattr(network.config, "control_dim", 0)
        if (control_cache is None) != (control_dim == 0):
            raise ValueError(
                f"PretrainModule: an LM with control_dim {control_dim} needs control_cache (a "
                "folder of `siren loudness` curves) exactly when control_dim > 0; got "
                f"control_cache {control_cache!r}"
            )
        if plan is not None:
            check_plan(plan, "PretrainModule: plan")
            if control_dim == 0:
                raise ValueError(
                    "PretrainModule: plan given, but the LM takes no per-frame control "
                    "(control_dim 0)"
                )
            if not Path(plan["planner"]).is_file():
                raise FileNotFoundError(
                    f"PretrainModule: plan.planner {plan['planner']} does not exist (a "
                    "PlannerModule checkpoint: experiments/planner_tiny_clean.yaml)"
                )
        if not predict_seconds > 0:
            raise ValueError(
                f"PretrainModule: predict_seconds must be positive, got {predict_seconds}"
            )
        check_sampling("PretrainModule: predict_sampling", **(predict_sampling or {}))
        if history_swap > 0 and history_cache is None:
            raise ValueError(
                "PretrainModule: history_swap needs history_cache (a code cache of the same "
                "clips rendered otherwise)"
            )
        if transition_weight <= 0 or transition_frames < 1:
            raise ValueError(
                "PretrainModule: transition_weight must be > 0 and transition_frames >= 1, got "
                f"{transition_weight} and {transition_frames}"
            )
        if transition_weight != 1.0 and not silence_codes:
            raise ValueError(
                "PretrainModule: transition_weight needs silence_codes (the codebook-0 codes of "
                "digital silence: `siren silence-codes --codec CODEC` prints them)"
            )
        if caption_contrast_weight < 0 or caption_contrast_margin <= 0:
            raise ValueError(
                "PretrainModule: caption_contrast_weight must be >= 0 and caption_contrast_margin "
                f"> 0, got {caption_contrast_weight} and {caption_contrast_margin}"
            )
        if caption_contrast_weight > 0 and (attributes_manifest is None or text_encoder is None):
            raise ValueError(
                "PretrainModule: caption_contrast_weight needs attributes_manifest (a manifest "
                "with SynthCaps attributes) and a text_encoder to encode the swapped captions"
            )
        if caption_contrast_weight > 0 and future_weight > 0:
            raise ValueError(
                "PretrainModule: caption_contrast_weight and future_weight are not combined; "
                "set one of them to 0"
            )
        if isinstance(codec, str) and not codec.startswith("dac:") and not Path(codec).exists():
            raise FileNotFoundError(
                f"PretrainModule: codec {codec!r} does not exist (a codec folder with codec.json, "
                "a CodecModule .ckpt, a DAC .pth, or dac:16khz)"
            )
        # The LoRA settings go in as a plain dict: checkpoints load with weights_only=True.
        # (The optimizer is in the run's config.yaml; a callable does not load with weights_only.)
        self.save_hyperparameters(ignore=["network", "text_encoder", "codec", "lora", "optimizer"])
        self.hparams["lora"] = None if lora is None else lora.to_dict()
        if init_weights is not None:
            load_lm(init_weights, who="PretrainModule: init_weights", into=network)
        self.network = network
        self.text_encoder = text_encoder
        self.init_codec(codec)
        self._codec_hash: str | None = None
        c, num_groups = network.config, network.num_groups
        groups = list(range(num_groups)) if train_groups is None else sorted(set(train_groups))
        if not groups or any(not 0 <= k < num_groups for k in groups):
            raise ValueError(
                f"PretrainModule: train_groups {train_groups} must be a non-empty subset of "
                f"0..{num_groups - 1}"
            )
        if caption_dropout > 0 and text_encoder is None:
            raise ValueError(
                "PretrainModule: caption_dropout > 0 needs a text_encoder to encode the empty "
                "caption; pass one or set caption_dropout: 0"
            )
        if text_encoder is not None and text_encoder.dim != c.text_dim:
            raise ValueError(
                f"PretrainModule: the text encoder gives {text_encoder.dim}-d states but the LM "
                f"expects text_dim={c.text_dim}"
            )
        self.train_groups = groups
        self.codebooks = [j for k in groups for j in network.codebooks_of(k)]
        self.future_heads = self._future_heads(network, groups, future_weight, future_offsets)
        self.train_only(groups)
        if lora is not None:
            if init_weights is None:
                raise ValueError(
                    "PretrainModule: lora fine-tunes a trained model; set init_weights"
                )
            if lora.groups is None and train_groups is not None:
                lora = LoraSettings(**{**lora.to_dict(), "groups": groups})
            add_lora(network, lora)
        self.lora = lora
        network.set_gradient_checkpointing(gradient_checkpointing)
        self.val_ce = nn.ModuleList(MeanMetric() for _ in self.codebooks)
        self.val_acc = nn.ModuleList(MeanMetric() for _ in self.codebooks)
        self.val_loss = MeanMetric()
        self._attributes: dict[str, dict[str, Any]] = {}
        self._history_codes: dict[str, Tensor] = {}
        self._control: dict[str, Tensor] = {}
        self._caption_plan: CaptionPlan | None = None

    @staticmethod
    def _future_heads(
        network: CodecLM, groups: list[int], weight: float, offsets: Sequence[int]
    ) -> nn.ModuleList | None:
        if weight < 0:
            raise ValueError(f"PretrainModule: future_weight must be >= 0, got {weight}")
        if weight == 0:
            return None
        if not offsets or any(int(d) < 1 for d in offsets):
            raise ValueError(
                f"PretrainModule: future_offsets must be frames ahead >= 1, got {list(offsets)}"
            )
        if not hasattr(network, "experts") or 0 not in groups:
            raise ValueError(
                "PretrainModule: future_weight needs a SirenLM whose expert 0 is trained (its "
                f"temporal outputs predict codebook 0 ahead); got {type(network).__name__} "
                f"training groups {groups}"
            )
        c = network.config
        return nn.ModuleList(nn.Linear(c.width, c.codebook_size, bias=False) for _ in offsets)

    # Setup checks.

    def setup(self, stage: str) -> None:
        self._check_caches()
        if self.hparams.caption_contrast_weight > 0 and not self._attributes:
            self._attributes = read_attributes(self.hparams.attributes_manifest)
        if self.hparams.control_cache is not None and not self._control:
            self._control = read_curves(self.hparams.control_cache, "PretrainModule control_cache")
        if self.hparams.history_swap > 0 and not self._history_codes:
            cache = CodeCache(self.hparams.history_cache, self._codec_sha256())
            self._history_codes = cache.codes_of(cache.index["ids"])
        codec, c = self.codec, self.network.config
        if codec is None:
            return
        check_codec_fits(codec, c)
        if not self.network.codebook_table.any():
            with torch.no_grad():
                self.network.set_codebook_table(codec.codebook_table().float().cpu())

    def _check_caches(self) -> None:
        """Code caches must match the LM's r and K and the codec's SHA-256 (before training)."""
        trainer = self._trainer
        caches = getattr(getattr(trainer, "datamodule", None), "cache_codecs", None) or {}
        c = self.network.config
        for split, info in caches.items():
            r, k = info.get("n_codebooks"), info.get("codebook_size")
            if (r, k) != (None, None) and (r, k) != (c.num_codebooks, c.codebook_size):
                raise ValueError(
                    f"the {split} code cache {info['path']} holds r={r} codebooks of K={k}, the "
                    f"LM was built for r={c.num_codebooks}, K={c.codebook_size}"
                )
            sha = self._codec_sha256() if self._codec[0] is not None else None
            found = info.get("codec_sha256")
            if sha is not None and found is not None and found != sha:
                raise ValueError(
                    f"the {split} code cache {info['path']} was written by codec {found[:16]}..., "
                    f"but this run's codec ({self.codec_spec or type(self.codec).__name__}) is "
                    f"{sha[:16]}...; re-run `siren tokenize` with this codec or point to the "
                    "matching cache"
                )

    def on_fit_start(self) -> None:
        if not self.network.codebook_table.any():
            raise ValueError(
                "PretrainModule: the LM's codebook_table is all zeros; give the module a codec, "
                "build SirenLM with codec.codebook_table(), or resume from a checkpoint"
            )

    def _codec_sha256(self) -> str | None:
        if self._codec_hash is None and hasattr(self.codec, "sha256"):
            self._codec_hash = self.codec.sha256()
        return self._codec_hash

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_architecture(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["siren"] = self.checkpoint_record(
            self.codec_spec, self._codec_sha256(), self.train_groups
        )
        if self.hparams.plan is not None:  # absolute: `siren export` names it from its folder
            plan = self.hparams.plan
            checkpoint["siren"]["plan"] = {**plan, "planner": str(Path(plan["planner"]).resolve())}
        if self.lora is not None:
            checkpoint["siren"]["lora"] = {
                **self.lora.to_dict(),
                "base": str(Path(self.hparams.init_weights).resolve()),
            }

    # Text conditioning.

    def _empty_caption(self) -> tuple[Tensor, Tensor]:
        out = self.text_encoder.encode([""])
        return out.states, out.mask

    def text_inputs(self, batch: dict[str, Any], dropout: float) -> tuple[Tensor, Tensor]:
        """Text states [B, L, Dt] and mask [B, L] of a batch, with captions dropped at `dropout`."""
        b = batch["codes"].shape[0]
        drop = torch.rand(b, device=self.device) < dropout if dropout > 0 else None
        if "text_states" in batch:
            states, mask = batch["text_states"], batch["text_mask"].bool()
            if drop is not None and drop.any():
                empty, empty_mask = self._empty_caption()
                n = max(states.shape[1], empty.shape[1])
                states = F.pad(states, (0, 0, 0, n - states.shape[1]))
                mask = F.pad(mask, (0, n - mask.shape[1]), value=False)
                empty = F.pad(empty.to(states), (0, 0, 0, n - empty.shape[1]))
                empty_mask = F.pad(empty_mask, (0, n - empty_mask.shape[1]), value=False)
                states = torch.where(drop[:, None, None], empty, states)
                mask = torch.where(drop[:, None], empty_mask, mask)
            return states, mask
        if self.text_encoder is None:
            raise ValueError(
                "PretrainModule: the batch has no text_states and the module has no text_encoder"
            )
        captions = list(batch["captions"])
        if drop is not None:
            captions = ["" if d else cap for cap, d in zip(captions, drop.tolist())]
        out = self.text_encoder.encode(captions)
        return out.states, out.mask

    @torch.no_grad()
    def sample_codes(
        self,
        captions: list[str],
        num_frames: int,
        seed: int = 0,
        **kwargs: Any,
    ) -> Tensor:
        """Generate codes [B, r, T] for captions (in-loop samples; needs the text encoder).

        Args:
            kwargs: sampling settings (`temperature`, `top_k`, `top_p`, `cfg_scale`; what is
                not given is `siren generate`'s default, `DEFAULT_SAMPLING`, so in-loop curves
                and offline `siren adherence` sample alike) and other arguments of
                `generate_for_captions` (e.g. `total_frames`).
        """
        from siren_lightning.models.sampling import (
            DEFAULT_SAMPLING,
            generate_for_captions,
            resolve_sampling,
        )

        given = {k: v for k, v in kwargs.items() if k in DEFAULT_SAMPLING}
        settings = resolve_sampling("PretrainModule.sample_codes", given=given).values
        rest = {k: v for k, v in kwargs.items() if k not in DEFAULT_SAMPLING}

        if self.text_encoder is None:
            raise ValueError("PretrainModule.sample_codes needs a text_encoder")
        if getattr(self.network.config, "control_dim", 0) and rest.get("control") is None:
            rest |= self._planned_controls(captions, num_frames, rest.get("total_frames"))
        was_training = self.network.training
        self.network.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        codes = generate_for_captions(
            for_sampling(self.network),  # LoRA adapters merged into a copy
            self.text_encoder,
            captions,
            num_frames,
            generator=generator,
            **settings,
            **rest,
        )
        self.network.train(was_training)
        return codes

    @torch.no_grad()
    def sample_audio(
        self, captions: list[str], num_frames: int, seed: int = 0, **kwargs: Any
    ) -> Tensor:
        """Audio [B, N] (CPU float, N = num_frames * hop) for B captions: `sample_codes`
        decoded by the module's codec (in-loop samples, FD/CLAP, adherence, `siren predict`)."""
        if self.codec is None:
            raise ValueError("PretrainModule.sample_audio needs a codec to decode the codes")
        codes = self.sample_codes(captions, num_frames, seed=seed, **kwargs)
        device = next(self.codec.parameters(), codes).device
        return self.codec.decode(codes.to(device)).float().cpu()[:, 0]  # [B, 1, N] -> [B, N]

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """`siren predict`: audio for a batch of a manifest's captions (`collate_captions`), each
        at its clip's duration (else `predict_seconds`), planned when the LM takes a plan.

        The seed is drawn from the run's seed, the batch index and the rank, so a rerun with the
        same seed and batches makes the same audio.

        Returns:
            ids, captions, seconds, seed, sample_rate, sampling, control (the planner, if the
            module plans) and `audio`: one waveform [N_i]
            (float, CPU) per clip, N_i its duration in samples at the codec's rate.
        """
        codec, h = self.codec, self.hparams
        if codec is None:
            raise ValueError("PretrainModule.predict_step needs a codec to decode the codes")
        seconds = [h.predict_seconds if s is None else float(s) for s in batch["seconds"]]
        frames = [seconds_to_frames(s, codec.sample_rate, codec.hop_length) for s in seconds]
        seed = mix_seed(global_seed(), 0, batch_idx, self.global_rank)
        sampling = resolve_sampling("siren predict", given=h.predict_sampling or {}).values
        told = torch.tensor(frames, device=self.device)
        audio = self.sample_audio(
            batch["captions"], max(frames), seed=seed, total_frames=told, **sampling
        )  # [B, N]
        return {
            "ids": list(batch["ids"]),
            "captions": list(batch["captions"]),
            "seconds": seconds,
            "seed": seed,
            "sample_rate": codec.sample_rate,
            "sampling": sampling,
            "control": (h.plan or {}).get("planner"),
            "audio": [  # cut as `siren generate` cuts: round(seconds x rate) samples
                audio[i, : seconds_to_samples(s, codec.sample_rate)] for i, s in enumerate(seconds)
            ],
        }

    def _planned_controls(
        self, captions: list[str], num_frames: int, total_frames: Tensor | None
    ) -> dict[str, Any]:
        """`generate`'s control arguments from the module's `plan`: each caption's curve at its
        clip's length (`total_frames`, else `num_frames`), with their guidance copies."""
        plan = self.caption_plan
        if plan is None:
            raise ValueError(
                "PretrainModule.sample_codes: this LM follows a per-frame plan (control_dim "
                f"{self.network.config.control_dim}); give the module a `plan` (its planner "
                "checkpoint) or pass `control`"
            )
        frames = num_frames if total_frames is None else [int(n) for n in total_frames.tolist()]
        return plan.controls(captions, frames, self.device, length=num_frames)

    @property
    def caption_plan(self) -> CaptionPlan | None:
        """The module's `plan` loaded (its planner, control scale and guidance), or None."""
        plan, loaded = self.hparams.plan, self._caption_plan
        if plan is None:
            return None
        if loaded is None or next(loaded.planner.parameters()).device != self.device:
            # Loaded on the module's device at first use, and again if the module has moved
            # since (the planner is not a submodule: it is neither trained nor checkpointed).
            self._caption_plan = CaptionPlan.load(
                plan["planner"],
                self.text_encoder,
                float(plan.get("control_scale", 0.0)),
                plan.get("control_guidance", "reversed"),
                device=self.device,
            )
        return self._caption_plan

    # Steps.

    def _history(
        self,
        batch: dict[str, Any],
        states: Tensor,
        text_mask: Tensor,
    ) -> Tensor | None:
        """The history a training step's LM reads: its own draws mixed in, held and corrupted
        as the hyperparameters say, or None (it reads `codes`: the paper's teacher forcing)."""
        h = self.hparams
        rates = (h.history_hold, h.history_noise, h.history_self, h.history_swap)
        rates += (h.history_rollout,)
        if all(rate <= 0 for rate in rates):
            return None
        codes, mask = batch["codes"], batch["mask"].bool()
        history = self._swapped_history(batch) if h.history_swap > 0 else codes
        if h.history_rollout > 0:
            history = self._rollout(batch, history, states, text_mask)
        if h.history_self > 0:
            with torch.no_grad():
                out = self._forward(batch, states, text_mask, None)
            history = self_history(
                history,
                mask,
                out.logits,
                out.codebooks,
                h.history_self,
                h.history_self_temperature,
            )
        held = hold_history(history, mask, h.history_hold)
        return corrupt_history(held, mask, h.history_noise)

    def _rollout(
        self, batch: dict[str, Any], history: Tensor, states: Tensor, text_mask: Tensor
    ) -> Tensor:
        """`history` [B, r, T] with the clips drawn at rate `history_rollout` holding
        `rollout_history`'s run from one start per batch (inside every chosen clip)."""
        h, mask = self.hparams, batch["mask"].bool()
        rows = (torch.rand(mask.shape[0]) < h.history_rollout).nonzero()[:, 0].tolist()
        lengths, offsets = mask.sum(1), batch.get("frame_offset")
        # A window cut from inside its clip would be timed from its own start: keep those true.
        rows = [
            i for i in rows if int(lengths[i]) >= 2 and (offsets is None or int(offsets[i]) == 0)
        ]
        if not rows:
            return history
        index = torch.as_tensor(rows, device=mask.device)
        start = int(torch.randint(1, int(lengths[index].min()), ()))
        total = batch.get("total_frames")
        sampling = self._rollout_sampling
        uncond = self._empty_caption() if sampling["cfg_scale"] != 1.0 else None
        out = history.clone()
        out[index] = rollout_history(
            self.network,
            history[index],
            mask[index],
            states[index],
            text_mask[index],
            start,
            h.history_rollout_frames,
            total_frames=None if total is None else total[index],
            uncond=uncond,
            **sampling,
        )
        return out

    def _swapped_history(self, batch: dict[str, Any]) -> Tensor:
        """The batch's codes [B, r, T] with each clip's window, with probability `history_swap`,
        taken from its copy in `history_cache` (the same frames of the same clip)."""
        codes, mask = batch["codes"], batch["mask"].bool()
        t = codes.shape[-1]
        offsets = batch.get("frame_offset")
        out = codes.clone()
        pick = (torch.rand(codes.shape[0]) < self.hparams.history_swap).tolist()
        for i, (clip, chosen) in enumerate(zip(batch["ids"], pick, strict=True)):
            if not chosen:
                continue
            if clip not in self._history_codes:
                raise ValueError(
                    f"PretrainModule: clip {clip} is not in history_cache "
                    f"{self.hparams.history_cache}"
                )
            start = 0 if offsets is None else int(offsets[i])
            piece = self._history_codes[clip][:, start : start + t].to(codes.device)
            n = min(piece.shape[-1], int(mask[i].sum()))
            out[i, :, :n] = piece[:, :n]
        return out

    def _frame_weights(self, codes: Tensor, mask: Tensor) -> Tensor | None:
        h = self.hparams
        if h.transition_weight == 1.0:
            return None
        return transition_weights(
            codes, mask, h.silence_codes, h.transition_weight, h.transition_frames
        )

    def _forward(
        self, batch: dict[str, Any], states: Tensor, text_mask: Tensor, history: Tensor | None
    ) -> Any:
        return self.network(
            batch["codes"],
            states,
            text_mask,
            batch["mask"].bool(),
            groups=self.train_groups,
            total_frames=batch.get("total_frames"),
            frame_offset=batch.get("frame_offset"),
            history=history,
            **({"return_hidden": True} if self.future_heads is not None else {}),
            **({"control": self._batch_control(batch)} if self._control else {}),
        )

    def clip_curves(self, ids: list[str]) -> list[Tensor]:
        """Each clip's own whole loudness curve [T] from `control_cache` (the plan a clip was
        made with: an oracle plan for generating its caption)."""
        if not self._control:
            raise ValueError("PretrainModule.clip_curves: no control_cache was given")
        missing = [clip for clip in ids if clip not in self._control]
        if missing:
            raise ValueError(f"control: clip {missing[0]} has no loudness curve")
        return [self._control[clip].float() for clip in ids]

    def _batch_control(self, batch: dict[str, Any]) -> Tensor:
        codes = batch["codes"]
        control = window_control(
            self._control, list(batch["ids"]), batch.get("frame_offset"), codes.shape[-1]
        )
        return control.to(codes.device)

    def _stats(
        self, batch: dict[str, Any], dropout: float, augment: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Per-codebook CE, accuracy and frame counts of a batch, and `future_code_loss` per
        offset (None when off). With `augment` (training steps), the history the LM reads is
        held and corrupted and the loss transition-weighted as the hyperparameters say;
        without it, plain teacher forcing."""
        codes, mask = batch["codes"], batch["mask"].bool()
        states, text_mask = self.text_inputs(batch, dropout)
        history = self._history(batch, states, text_mask) if augment else None
        out = self._forward(batch, states, text_mask, history)
        weights = self._frame_weights(codes, mask) if augment else None
        stats = masked_codebook_stats(out.logits, codes[:, out.codebooks], out.mask, weights)
        return (*stats, self._future_ce(out, codes, mask))

    def _future_ce(self, out: Any, codes: Tensor, mask: Tensor) -> Tensor | None:
        if self.future_heads is None:
            return None
        hidden = out.hidden[:, self.train_groups.index(0)]  # expert 0's [B, T, D]
        offsets = self.hparams.future_offsets
        return future_code_loss(hidden, self.future_heads, offsets, codes[:, 0], mask)

    def _contrast_stats(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """A training step's per-codebook CE [n] under each clip's own caption, and per clip
        that kept its caption (caption dropout) the hinge [B'] and the text gap [B'] against
        the same caption with one judged attribute swapped. Both captions of a clip are made
        from its attributes with one caption seed, so only the swapped words differ; both
        passes read the same history, so the gap is the caption's alone."""
        codes, mask = batch["codes"], batch["mask"].bool()
        b, h = codes.shape[0], self.hparams
        try:
            attributes = [self._attributes[i] for i in batch["ids"]]
        except KeyError as err:
            raise ValueError(
                f"PretrainModule: clip {err} is not in attributes_manifest {h.attributes_manifest}"
            ) from None
        rows = attribute_captions(attributes, int(torch.randint(2**31 - 1, ())))
        swap = torch.randint(len(JUDGED), (b,)).tolist()
        kept = (torch.rand(b) >= h.caption_dropout).tolist()
        own = [c if k else "" for c, k in zip(rows["own"], kept)]
        other = [rows[JUDGED[j]][i] for i, j in enumerate(swap)]
        text = self.text_encoder.encode(own + other)
        history = self._history(batch, text.states[:b], text.mask[:b])
        # Both halves in one pass: own captions first, swapped second, the same history.
        keys = ("codes", "mask", "total_frames", "frame_offset")
        twice = {k: torch.cat([batch[k]] * 2) for k in keys if k in batch}
        out = self._forward(
            twice, text.states, text.mask, None if history is None else torch.cat([history] * 2)
        )
        targets = codes[:, out.codebooks]  # [B, n, T]
        logits = out.logits.float()
        k = logits.shape[-1]
        tokens = F.cross_entropy(
            logits.reshape(-1, k), targets.repeat(2, 1, 1).reshape(-1), reduction="none"
        ).view(2 * b, *targets.shape[1:])
        ce, _, _ = masked_codebook_stats(
            logits[:b], targets, out.mask[:b], self._frame_weights(codes, mask), tokens[:b]
        )
        keep = torch.tensor(kept, device=codes.device)
        gap = clip_text_gap(tokens[:b][keep], tokens[b:][keep], out.mask[:b][keep])
        return ce, F.relu(h.caption_contrast_margin - gap), gap

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        b = batch["codes"].shape[0]
        if self.hparams.caption_contrast_weight > 0:
            ce, hinge, gap = self._contrast_stats(batch)
            contrast = hinge.mean() if hinge.numel() else ce.new_zeros(())
            loss = ce.mean() + self.hparams.caption_contrast_weight * contrast
            self.log("train/caption_contrast", contrast, batch_size=b)
            if gap.numel():
                self.log("train/caption_gap", gap.mean(), batch_size=b)
        else:
            ce, _, _, future = self._stats(batch, self.hparams.caption_dropout, augment=True)
            loss = ce.mean()
            if future is not None:
                loss = loss + self.hparams.future_weight * future.mean()
                self.log("train/future_ce", future.mean(), batch_size=b)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for i, cb in enumerate(self.codebooks):
            self.log(f"train/ce_cb{cb:02d}", ce[i], batch_size=b)
        start = 0  # ce follows self.codebooks: each trained group's codebooks in turn
        for k in self.train_groups:
            n = len(self.network.codebooks_of(k))
            self.log(f"train/ce_group{k}", ce[start : start + n].mean(), batch_size=b)
            start += n
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        ce, acc, count, future = self._stats(batch, 0.0)
        if future is not None:
            for d, value in zip(self.hparams.future_offsets, future):
                self.log(f"val/future_ce_{d:02d}", value, batch_size=batch["codes"].shape[0])
        for i, cb in enumerate(self.codebooks):
            self.val_ce[i].update(ce[i], count[i])
            self.val_acc[i].update(acc[i], count[i])
            self.log(f"val/ce_cb{cb:02d}", self.val_ce[i])
            self.log(f"val/acc_cb{cb:02d}", self.val_acc[i])
        self.val_loss.update(ce.mean(), count.mean())
        self.log("val/loss", self.val_loss, prog_bar=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        ce, acc, _, _ = self._stats(batch, 0.0)
        b = batch["codes"].shape[0]
        self.log("test/loss", ce.mean(), batch_size=b)
        for i, cb in enumerate(self.codebooks):
            self.log(f"test/acc_cb{cb:02d}", acc[i], batch_size=b)

    # Optimisation.

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.network.parameters() if p.requires_grad]
        if self.future_heads is not None:
            params += list(self.future_heads.parameters())
        optimizer = self.make_optimizer(decay_groups(params))
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
