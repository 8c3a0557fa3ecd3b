"""Generation from existing codes (issue 18, items 1-3): continuation, infilling and clips
longer than the model was trained on, for `SirenLM` and `DelayPatternLM` alike.

Letters: B clips, N candidates per clip, r codebooks, T frames, P prompt frames, W window frames,
C context frames.

All three run the model's own generation (`models.sampling.generate`; `prompt_codes` are read
in one forward by the model's `begin`, the prefill) and take its keyword arguments (sampling
settings, `uncond_states`/`uncond_mask`, `generator`).

- Continuation is `generate(..., prompt_codes=codes)`; `encode_prompt` turns audio into them.
- `infill`: the frames [A, B) of a clip are regenerated from the frames before them (the
  prompt), N candidates per clip, and the candidate under which the model finds the clip's true
  frames [B, T) most likely (teacher-forced log-probability, `suffix_log_prob`) is kept. No
  retraining; the suffix is read only through the score. With N = 1 it is naive continuation.
- `generate_long`: a sliding window of W frames (at most the training length) that re-prompts
  each window with the last C frames made so far and keeps its W - C new frames. Every window
  is told it is a clip of W frames (positions and `total_frames` restart with the window), so
  the model never sees a position or a clip length it was not trained on; what lies further
  back than C frames is forgotten. Each window costs a prefill of C frames and W - C steps,
  so the cost per second of audio does not grow with the length.
- `seam_jump`: the spectral change across a boundary, the measure of an edit's seams.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from siren_lightning.models.sampling import generate


def encode_prompt(
    codec: Any, path: str | Path, seconds: float | None = None, device: str | torch.device = "cpu"
) -> Tensor:
    """The codes of an audio file (or of its first `seconds`), read at the codec's rate.

    A file at another rate is resampled; several channels are averaged (`data.audio.load_audio`).

    Returns:
        [1, r, P] long codes, P = ceil(samples / hop).
    """
    from siren_lightning.data.audio import load_audio

    audio = load_audio(path, codec.sample_rate, allow_silent=True)  # [N]
    if seconds is not None:
        if not seconds > 0:
            raise ValueError(f"prompt seconds must be positive, got {seconds}")
        audio = audio[: round(seconds * codec.sample_rate)]
    with torch.no_grad():
        return codec.encode(audio.to(device)[None, None])  # [1, r, P]


def _repeat(x: Tensor | None, n: int, batch: int) -> Tensor | None:
    """Each of the B rows n times in a row ([1, ...] rows are shared and left as they are)."""
    if x is None or x.shape[0] == 1 and batch != 1:
        return x
    return x.repeat_interleave(n, dim=0)


@torch.no_grad()
def suffix_log_prob(
    model: Any,
    codes: Tensor,
    text_states: Tensor,
    text_mask: Tensor,
    start: int,
    control: Tensor | None = None,
) -> Tensor:
    """Teacher-forced log-probability of frames start.. of each clip, summed over codebooks.

    Args:
        codes: [M, r, T] long; text_states: [M, L, Dt]; text_mask: [M, L] bool.
        start: the first scored frame (T: nothing scored, all zeros).
        control: [M, T, C] per-frame plan, for an LM with `control_dim` > 0.

    Returns:
        [M] float64.
    """
    m, r, t = codes.shape
    if start >= t:
        return torch.zeros(m, dtype=torch.float64, device=codes.device)
    plan = {} if control is None else {"control": control}
    logits = model(codes, text_states, text_mask, **plan).logits
    logits = logits[:, :, start:]  # [M, r, T - start, K]
    logp = logits.double().log_softmax(-1).gather(-1, codes[:, :, start:, None])
    return logp.sum(dim=(1, 2, 3))


class Infill(NamedTuple):
    """What `infill` returns.

    Attributes:
        codes: [B, r, T] the clips with frames [A, B) replaced by the chosen candidate.
        candidates: [B, N, r, B - A] every candidate span.
        scores: [B, N] each candidate's `suffix_log_prob` of the clip's frames B..
        chosen: [B] the index of the kept candidate (the best score; 0 when nothing follows).
    """

    codes: Tensor
    candidates: Tensor
    scores: Tensor
    chosen: Tensor


def check_span(start: int, end: int, num_frames: int) -> None:
    """One clear message for a span [start, end) that is empty or not inside the clip."""
    if not 0 <= start < end <= num_frames:
        raise ValueError(
            f"infill: the span [{start}, {end}) must satisfy 0 <= start < end <= {num_frames} "
            "(the clip's frames)"
        )


@torch.no_grad()
def infill(
    model: Any,
    text_states: Tensor,
    text_mask: Tensor,
    codes: Tensor,
    start: int,
    end: int,
    candidates: int = 8,
    **kwargs: Any,
) -> Infill:
    """Regenerate frames [start, end) of each clip given the frames around them.

    The N candidates continue the frames before the span (`prompt_codes`, read in one prefill);
    each clip is told its whole length T (`total_frames`). The kept candidate is the one under
    which the clip's own frames end.. are most likely (`suffix_log_prob`, conditional text, no
    guidance). A planned LM reads `control` [B, T, C] (and `control_contrast` with it) over the
    whole clip, in generation and in scoring.

    Args:
        text_states: [B, L, Dt]; text_mask: [B, L] bool.
        codes: [B, r, T] long, the clips to edit.
        start, end: the span in frames.
        candidates: N >= 1 (1: naive continuation, the suffix is pasted back unread).
        kwargs: `models.sampling.generate`'s (sampling settings, uncond_states/uncond_mask,
            generator).

    Returns:
        `Infill`.
    """
    b, r, t = codes.shape
    check_span(start, end, t)
    if candidates < 1:
        raise ValueError(f"infill: candidates must be >= 1, got {candidates}")
    for name in ("uncond_states", "uncond_mask", "control", "control_contrast"):
        kwargs[name] = _repeat(kwargs.get(name), candidates, b)
    states = text_states.repeat_interleave(candidates, dim=0)  # [B*N, L, Dt]
    mask = text_mask.repeat_interleave(candidates, dim=0)
    drawn = generate(
        model,
        states,
        mask,
        end,
        prompt_codes=codes[..., :start].repeat_interleave(candidates, dim=0) if start else None,
        total_frames=torch.full((b * candidates,), t, device=codes.device),
        **kwargs,
    )  # [B*N, r, end]
    whole = torch.cat([drawn, codes[..., end:].repeat_interleave(candidates, dim=0)], -1)
    dtype = model.codebook_table.dtype
    control = kwargs["control"] if kwargs["control"] is None else kwargs["control"].to(dtype)
    scores = suffix_log_prob(model, whole, states.to(dtype), mask, end, control)
    scores = scores.view(b, candidates)
    chosen = scores.argmax(1)  # ties (nothing after the span): the first candidate
    whole = whole.view(b, candidates, r, t)
    best = whole[torch.arange(b, device=codes.device), chosen]  # [B, r, T]
    return Infill(best, whole[..., start:end], scores, chosen)


def window_plan(num_frames: int, window: int, context: int) -> list[tuple[int, int]]:
    """The windows of `generate_long`: (first new frame, new frames) of each.

    The first window makes min(W, T) frames from scratch; each later one is prompted with the
    C frames before its first new frame and makes up to W - C.
    """
    if not 0 <= context < window:
        raise ValueError(f"generate_long: need 0 <= context {context} < window {window}")
    plan, made = [(0, min(window, num_frames))], min(window, num_frames)
    while made < num_frames:
        new = min(window - context, num_frames - made)
        plan.append((made, new))
        made += new
    return plan


@torch.no_grad()
def generate_long(
    model: Any,
    text_states: Tensor,
    text_mask: Tensor,
    num_frames: int,
    window: int,
    context: int,
    prompt_codes: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """T frames (any number) by a sliding window of W frames re-prompted with the last C.

    Every window is told it is a clip of W frames (`total_frames`); `prompt_codes` [B, r, P]
    (P < W) start the first window. T <= W is one plain generation told its own length T. A
    per-frame plan (`control` [B, T, C], and `control_contrast` with it) is read window by
    window: each window gets the plan of the frames it holds, its C context frames included.

    Args:
        text_states: [B, L, Dt]; text_mask: [B, L] bool.
        num_frames: T; window: W (the training length or less); context: C (0 <= C < W).
        kwargs: `models.sampling.generate`'s, except `total_frames`.

    Returns:
        [B, r, T] long.
    """
    if "total_frames" in kwargs:
        raise ValueError("generate_long: every window is told its own length W; no total_frames")
    b = text_states.shape[0]
    if prompt_codes is not None and prompt_codes.shape[-1] >= min(window, num_frames):
        raise ValueError(
            f"generate_long: {prompt_codes.shape[-1]} prompt frames leave nothing to generate "
            f"in the first window of {min(window, num_frames)} frames"
        )
    per_frame = {k: kwargs.pop(k) for k in ("control", "control_contrast") if k in kwargs}

    def plan_of(start: int, stop: int) -> dict[str, Tensor]:
        """The per-frame plan of output frames [start, stop)."""
        return {k: v[:, start:stop] for k, v in per_frame.items() if v is not None}

    plan = window_plan(num_frames, window, context)
    told = torch.full((b,), min(window, num_frames), device=text_states.device)
    out = generate(
        model,
        text_states,
        text_mask,
        plan[0][1],
        prompt_codes=prompt_codes,
        total_frames=told,
        **plan_of(0, plan[0][1]),
        **kwargs,
    )  # [B, r, min(W, T)]
    for first, new in plan[1:]:
        prompt = out[..., first - context : first] if context else None
        codes = generate(
            model,
            text_states,
            text_mask,
            context + new,
            prompt_codes=prompt,
            total_frames=told,
            **plan_of(first - context, first + new),
            **kwargs,
        )  # [B, r, C + new]
        out = torch.cat([out, codes[..., context:]], -1)
    return out


def mel_frames(audio: Tensor, sample_rate: int, n_mels: int = 64, hop: int = 256) -> Tensor:
    """Log-mel spectrogram (window 1024, centred frames), floored 60 dB under the clip's peak
    (bands with no energy stay at the floor instead of measuring leakage): [N] ->
    [N // hop + 1, n_mels]."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate, n_fft=1024, hop_length=hop, n_mels=n_mels, power=1.0
    )(audio.float())
    return mel.clamp_min(float(mel.max()) * 1e-3 + 1e-5).log().T


def seam_jump(audio: Tensor, sample_rate: int, boundary: float, width: float = 0.2) -> float:
    """The spectral change across a boundary: mean absolute difference, over mel bands,
    between the mean log-mel spectra of the `width` seconds before and after it (frames of the
    whole clip's spectrogram, by where they are centred).

    Args:
        audio: [N] samples; boundary, width: seconds.
    """
    hop = 256
    mel = mel_frames(audio, sample_rate, hop=hop)  # [F, n_mels]
    centres = torch.arange(mel.shape[0]) * hop / sample_rate  # seconds
    before = mel[(centres >= boundary - width) & (centres < boundary)]
    after = mel[(centres >= boundary) & (centres < boundary + width)]
    if len(before) == 0 or len(after) == 0:
        return math.nan
    return float((before.mean(0) - after.mean(0)).abs().mean())
