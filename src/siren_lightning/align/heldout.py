"""Held-out evaluation of a policy: captions never used for rollouts, graded by the other scorer.

Letters: B clips, r codebooks, n policy codebooks, T frames, K codebook size, N samples.

`evaluate_policy` generates one clip per held-out caption (fixed seed, the sampling settings of
`siren generate`), writes the WAVs, and returns:
- `reward`: mean training reward of the clips (what the policy was pushed towards);
- the evaluation protocol's metrics (`metrics.protocol.Evaluator`, preset `tiny`: `clap_score`
  with `tiny-clap-eval`, `fd` of its embeddings against the clips' reference audio, and the
  attribute `kl`/`is_*` it also computes);
- `kl_ref`: mean exact per-token KL(policy || reference) of the distributions the codes are
  drawn from (guided by the same scale, before the top-k filter) over the policy's codebooks on
  the generated codes (0 for the reference itself).
Both the in-loop evaluation of `AlignModule` and `siren align-report` call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from siren_lightning.align.objectives import kl_exact
from siren_lightning.codec.base import seconds_to_frames
from siren_lightning.data.manifest import check_file_ids
from siren_lightning.models.blocks import clip_timing
from siren_lightning.models.sampling import contrast_control, generate, guide, resolve_sampling


@dataclass(frozen=True)
class HeldoutClip:
    """One held-out prompt: clip id, its first caption and its reference audio file."""

    id: str
    caption: str
    audio: Path


def heldout_clips(clips: Sequence[Any], limit: int | None = None) -> list[HeldoutClip]:
    """The first `limit` clips of a split (manifest `Clip`s) as held-out prompts."""
    if limit is not None and limit < 1:  # a negative slice end would drop clips silently
        raise ValueError(f"heldout_clips: limit must be >= 1 (or None: all), got {limit}")
    chosen = list(clips)[: limit if limit is not None else None]
    if not chosen:
        raise ValueError("held-out evaluation: the split has no clips")
    return [HeldoutClip(c.id, c.captions[0], Path(c.audio)) for c in chosen]


def group_logits(
    network: nn.Module,
    experts: Mapping[int, nn.Module],
    codes: Tensor,
    text_states: Tensor,
    text_mask: Tensor,
    uncond: tuple[Tensor, Tensor] | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    total_frames: Tensor | None = None,
    control: Tensor | None = None,
    control_contrast: Tensor | None = None,
    control_scale: float = 0.0,
) -> Tensor:
    """Teacher-forced logits of the given experts' codebooks, as the sampler draws from them.

    Args:
        network: the `SirenLM` whose frozen codebook table embeds the codes.
        experts: group index k -> the expert to run for it (the policy's own, or the frozen
            reference copy), in the order of the output.
        codes: [B, r, T] long; text_states [B, L, Dt]; text_mask [B, L] bool.
        uncond: the empty caption's states [1, L', Dt] and mask [1, L'] (needed when
            cfg_scale != 1).
        cfg_scale: classifier-free guidance (`models.sampling.guide`, the function the sampler
            mixes its logits with).
        temperature: the logits are divided by it (as the sampler does).
        total_frames: [B] clip lengths the sampler was asked for (T when None); duration-
            conditioned networks are told each frame's place in its clip, as when sampling.
        control: [B, T', C] per-frame control (`control_dim` > 0), under which both the caption
            and the empty caption are read, as when sampling.
        control_contrast, control_scale: control guidance (`models.sampling.contrast_control`,
            the sampler's mix): with a scale != 0 the caption is also read under the copy.

    Returns:
        [B, n, T, K], n = g x len(experts).
    """
    vectors = network.codebook_vectors(codes)  # [B, r, T, D_lat]
    b, _, t = codes.shape
    timing = None
    if network.config.duration_conditioning:
        if total_frames is None:
            total_frames = torch.full((b,), t, device=codes.device)
        timing = clip_timing(total_frames, t)  # [B, T, 2]

    def run(states: Tensor, mask: Tensor, curve: Tensor | None = control) -> Tensor:
        states = states.to(vectors.dtype)
        curve = None if curve is None else curve[:, :t].to(vectors.dtype)
        outs = [e(vectors, states, mask, timing, control=curve) for e in experts.values()]
        return torch.cat(outs, dim=1)

    cond = logits = run(text_states, text_mask)
    if cfg_scale != 1.0:
        if uncond is None:
            raise ValueError("group_logits: cfg_scale != 1 needs the empty caption's states")
        empty = run(uncond[0].expand(b, -1, -1), uncond[1].expand(b, -1))
        logits = guide(cond, empty, cfg_scale)
    if control_scale != 0:
        if control_contrast is None:
            raise ValueError("group_logits: control_scale != 0 needs control_contrast")
        logits = contrast_control(
            logits, cond, run(text_states, text_mask, control_contrast), control_scale
        )
    return logits / temperature if temperature != 1.0 else logits


def policy_codebooks(network: nn.Module, groups: Sequence[int]) -> list[int]:
    """Codebook indices predicted by the experts `groups` (2k, 2k+1 for g = 2)."""
    return [j for k in groups for j in network.codebooks_of(k)]


@torch.no_grad()
def evaluate_policy(
    network: nn.Module,
    text_encoder: Any,
    codec: Any,
    clips: Sequence[HeldoutClip],
    out_dir: str | Path,
    *,
    reward: Any = None,
    evaluator: Any = None,
    reference: Mapping[int, nn.Module] | None = None,
    seconds: float = 2.0,
    sampling: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    plan: Any = None,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Generate, score and grade one clip per held-out caption.

    Args:
        network: eval-mode `SirenLM`.
        text_encoder: `encode(captions) -> TextStates`.
        codec: `decode(codes) -> audio [B, 1, N]`, `sample_rate`, `hop_length`.
        clips: the held-out prompts.
        out_dir: the WAVs are written here as `<id>.wav`.
        reward: the training reward (logged as `reward`), or None.
        evaluator: a `metrics.protocol.Evaluator` (never built on the reward model), or None.
        reference: group k -> frozen reference expert; gives `kl_ref` when set.
        seconds, sampling, seed, batch_size: generation settings (`siren generate`'s defaults,
            `DEFAULT_SAMPLING`, for the sampling settings not given: held-out clips are
            sampled the way users sample).
        plan: a `stages.planner.CaptionPlan` for an LM that follows a plan (`control_dim` > 0):
            each clip is generated, and its KL read, under the planner's curve for its caption
            and the plan's control guidance.

    Returns:
        metrics (name -> float) and the first clips' audio (caption -> [N]) for logging.
    """
    import soundfile as sf

    check_file_ids([c.id for c in clips], "held-out evaluation")  # ids name the WAVs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampling = resolve_sampling("held-out evaluation", sampling).values
    frames = seconds_to_frames(seconds, codec.sample_rate, codec.hop_length)
    device = network.codebook_table.device
    generator = torch.Generator(device=device).manual_seed(seed)
    empty = text_encoder.encode([""])
    rewards, kls, audio_log = [], [], {}
    files: dict[str, Path] = {}
    for start in range(0, len(clips), batch_size):
        batch = list(clips[start : start + batch_size])
        captions = [c.caption for c in batch]
        # Encoded here, not inside a caption-level helper: the KL below needs the same states.
        text = text_encoder.encode(captions)
        control = {} if plan is None else plan.controls(captions, frames, device)
        codes = generate(
            network,
            text.states,
            text.mask,
            frames,
            uncond_states=empty.states,
            uncond_mask=empty.mask,
            generator=generator,
            **sampling,
            **control,
        )  # [B, r, T]
        audio = codec.decode(codes).float()  # [B, 1, N]
        if reward is not None:
            rewards.append(reward(audio, codec.sample_rate, captions).cpu())
        if reference:
            groups = list(reference)
            policy = {k: network.experts[k] for k in groups}
            guide = {
                "uncond": (empty.states, empty.mask),
                "cfg_scale": sampling["cfg_scale"],
                "temperature": sampling["temperature"],
                **control,
            }
            logits = group_logits(network, policy, codes, text.states, text.mask, **guide)
            ref_logits = group_logits(network, reference, codes, text.states, text.mask, **guide)
            kls.append(kl_exact(logits, ref_logits).mean(dim=(1, 2)).cpu())  # [B]
        for clip, wav in zip(batch, audio.cpu(), strict=True):
            path = out_dir / f"{clip.id}.wav"
            sf.write(str(path), wav[0].numpy(), codec.sample_rate, subtype="FLOAT")
            files[clip.id] = path
            if len(audio_log) < 3:
                audio_log[clip.caption] = wav[0]
    metrics: dict[str, float] = {}
    if rewards:
        metrics["reward"] = float(torch.cat(rewards).mean())
    if reference:
        metrics["kl_ref"] = float(torch.cat(kls).mean())
    if evaluator is not None:
        results = evaluator.evaluate(
            files, {c.id: c.audio for c in clips}, {c.id: c.caption for c in clips}
        )
        # Metrics the preset cannot compute (FAD offline, IS on < 10 clips) are None.
        metrics.update({k: v for k, v in results["metrics"].items() if v is not None})
    return metrics, audio_log
