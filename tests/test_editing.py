"""Infilling and generation past the training length (issue 18, items 2-3; `editing`), on Siren
and the delay LM: the kept candidate against hand-computed suffix log-probabilities, the
windows of long generation against teacher forcing, and the seams of long audio."""

from pathlib import Path

import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import make_model, make_text

from siren_lightning import editing
from siren_lightning.editing import (
    generate_long,
    infill,
    seam_jump,
    suffix_log_prob,
    window_plan,
)
from siren_lightning.models.sampling import generate

BUILDERS = {"siren": make_model, "delay": make_delay_model}
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_window_plan_by_hand():
    # 23 frames, windows of 10 re-reading 4: 0-9, then 6 new from 10, 16, and the last 1 at 22.
    assert window_plan(23, 10, 4) == [(0, 10), (10, 6), (16, 6), (22, 1)]
    assert window_plan(8, 10, 4) == [(0, 8)]
    assert window_plan(20, 10, 0) == [(0, 10), (10, 10)]
    with pytest.raises(ValueError, match="context"):
        window_plan(20, 10, 10)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_window_continues_its_last_frames_told_it_is_a_clip_of_w_frames(name, monkeypatch):
    model = BUILDERS[name](duration_conditioning=True).double()
    states, mask = make_text(2)
    states = states.double()
    t, w, c = 23, 10, 4
    calls = []  # (prompt, total_frames, codes) of every window's generation

    def spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        calls.append((kwargs["prompt_codes"], kwargs["total_frames"], out))
        return out

    monkeypatch.setattr(editing, "generate", spy)
    codes = generate_long(model, states, mask, t, w, c, temperature=0.0)
    assert codes.shape == (2, model.config.num_codebooks, t)
    plan = window_plan(t, w, c)
    assert len(calls) == len(plan)
    for (first, new), (prompt, told, made) in zip(plan, calls):
        assert told.tolist() == [w, w]
        if first:  # read the last c frames made so far; its new frames are the output's
            assert torch.equal(prompt, codes[..., first - c : first])
            assert torch.equal(made[..., c:], codes[..., first : first + new])
        context = 0 if first == 0 else c
        seen = codes[..., first - context : first + new]  # what the window read and made
        told = torch.full((2,), min(w, t))
        logits = model(seen, states, mask, total_frames=told).logits
        # Greedy: every new frame is the argmax given the window's context and its timing.
        assert torch.equal(logits.argmax(-1)[..., context:], codes[..., first : first + new])
    with pytest.raises(ValueError, match="prompt frames"):
        generate_long(model, states, mask, t, w, c, prompt_codes=codes[..., :w])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_window_reads_the_plan_of_the_frames_it_holds(name):
    # A planned LM (random control projections, so the curve moves the logits) generates 23
    # frames in windows of 10 re-reading 4. Greedy: each window's new frames are the argmax given
    # its frames and the plan's slice over those same frames, context included.
    model = BUILDERS[name](duration_conditioning=True, control_dim=1).double()
    with torch.no_grad():
        for module in [model] if name == "delay" else model.experts:
            module.control.proj.weight.normal_(0, 0.5)
    states, mask = make_text(2)
    states = states.double()
    t, w, c = 23, 10, 4
    control = torch.rand(2, t, 1, generator=torch.Generator().manual_seed(2)).double()
    codes = generate_long(model, states, mask, t, w, c, temperature=0.0, control=control)
    told = torch.full((2,), w)
    for first, new in window_plan(t, w, c):
        context = 0 if first == 0 else c
        seen = slice(first - context, first + new)
        logits = model(codes[..., seen], states, mask, total_frames=told, control=control[:, seen])
        assert torch.equal(logits.logits.argmax(-1)[..., context:], codes[..., first : first + new])
    # The plan is read: another curve over the later windows changes the frames made there only.
    other = control.clone()
    other[:, w:] = 1 - other[:, w:]
    moved = generate_long(model, states, mask, t, w, c, temperature=0.0, control=other)
    assert torch.equal(moved[..., :w], codes[..., :w]) and not torch.equal(moved, codes)


def test_long_generation_starts_with_its_prompt():
    model = make_model(duration_conditioning=True).double()
    states, mask = make_text(2)
    prompt = torch.randint(16, (2, 6, 3), generator=torch.Generator().manual_seed(1))
    codes = generate_long(model, states.double(), mask, 17, 8, 3, prompt_codes=prompt)
    assert codes.shape[-1] == 17 and torch.equal(codes[..., :3], prompt)


def _planned(model, name):
    """The LM with random control projections, so that its per-frame plan moves the logits."""
    with torch.no_grad():
        for module in [model] if name == "delay" else model.experts:
            module.control.proj.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("planned", [False, True])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_infill_keeps_the_candidate_under_which_the_true_suffix_is_most_likely(name, planned):
    # A planned LM reads its clips' plans (each clip its own) when it draws and when it scores.
    extra = {"control_dim": 1} if planned else {}
    model = BUILDERS[name](duration_conditioning=True, **extra).double()
    model = _planned(model, name) if planned else model
    states, mask = make_text(2)
    states = states.double()
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(16, (2, 6, 10), generator=g)
    control = torch.rand(2, 10, 1, generator=g).double() if planned else None
    plan = {"control": control} if planned else {}
    start, end, n = 3, 6, 5
    result = infill(
        model, states, mask, codes, start, end, candidates=n, generator=g, temperature=1.5, **plan
    )
    assert torch.equal(result.codes[..., :start], codes[..., :start])
    assert torch.equal(result.codes[..., end:], codes[..., end:])
    assert result.candidates.shape == (2, n, 6, end - start)
    for i in range(2):
        hand = []
        for k in range(n):  # the suffix's log-probability, computed here from the logits
            whole = codes[i : i + 1].clone()
            whole[..., start:end] = result.candidates[i, k]
            own = {"control": control[i : i + 1]} if planned else {}
            logp = model(whole, states[i : i + 1], mask[i : i + 1], **own).logits.log_softmax(-1)
            hand.append(
                sum(logp[0, q, f, whole[0, q, f]].item() for q in range(6) for f in range(end, 10))
            )
        torch.testing.assert_close(
            result.scores[i], torch.tensor(hand, dtype=torch.float64), rtol=0, atol=1e-9
        )
        assert result.chosen[i] == max(range(n), key=hand.__getitem__)
        assert torch.equal(result.codes[i, :, start:end], result.candidates[i, result.chosen[i]])
    assert len({tuple(c.flatten().tolist()) for c in result.candidates[0]}) > 1  # not one draw
    if planned:  # greedy: the span is the argmax of the teacher-forced logits under the plan
        greedy = infill(
            model, states, mask, codes, start, end, candidates=1, temperature=0.0, **plan
        )
        # What the draws read: the frames before the span's end (the delay LM's last steps
        # read no later frame), told the clip's length, under the plan's first frames.
        drawn, told = greedy.codes[..., :end], torch.full((2,), 10)
        logits = model(drawn, states, mask, total_frames=told, control=control[:, :end]).logits
        span = slice(start, end)
        assert torch.equal(logits.argmax(-1)[..., span], greedy.codes[..., span])
    with pytest.raises(ValueError, match="span"):
        infill(model, states, mask, codes, 6, 6)
    with pytest.raises(ValueError, match="span"):
        infill(model, states, mask, codes, 4, 11)


def test_suffix_log_prob_of_nothing_is_zero():
    model = make_model().double()
    states, mask = make_text(2)
    codes = torch.randint(16, (2, 6, 5))
    assert torch.equal(suffix_log_prob(model, codes, states.double(), mask, 5), torch.zeros(2))


def test_seam_jump_is_zero_in_steady_sound_and_large_at_a_change():
    sr = 16000
    t = torch.arange(sr) / sr
    tone = torch.sin(2 * torch.pi * 440 * t)
    assert seam_jump(tone, sr, 0.5) < 1e-3
    changed = torch.cat([tone[: sr // 2], 0.1 * torch.sin(2 * torch.pi * 2000 * t[sr // 2 :])])
    assert seam_jump(changed, sr, 0.5) > 0.3


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


@pytest.mark.parametrize("model_dir", ["siren_tiny_reference", "delay_tiny_reference"])
def test_no_seam_of_long_generation_is_louder_than_the_audio_around_it(model_dir, tmp_path):
    """Reference model and codec, 8 s in windows of 2 s re-reading 0.6 s (5 seams a clip):
    the 50 ms around each seam is not louder than 1.5x the louder of the 250 ms on either side
    (a click or burst at a seam would be; the ratio is about 1 in steady sound)."""
    import soundfile as sf

    from siren_lightning.generate import generate_audio, load_generation_stack

    model, codec, encoder = load_generation_stack(ASSETS / model_dir)
    captions = ["a low steady hum", "a high beep twice", "clicks three times, fading out"]
    records = generate_audio(
        model,
        encoder,
        codec,
        captions,
        tmp_path,
        seconds=8.0,
        seed=0,
        window_seconds=2.0,
        context_seconds=0.6,
    )
    hop, sr = codec.hop_length, codec.sample_rate
    seams = [first * hop for first, _ in window_plan(400, 100, 30)[1:]]
    assert len(seams) == 5
    for record in records:
        assert record["window_frames"] == 100 and record["frames"] == 400
        audio = torch.from_numpy(sf.read(record["path"], dtype="float32")[0])
        assert audio.shape == (8 * sr,)
        h, w = sr // 40, sr // 4  # 25 ms either side of the seam; 250 ms beside that
        for c in seams:
            around = max(_rms(audio[c - h - w : c - h]), _rms(audio[c + h : c + h + w]))
            assert _rms(audio[c - h : c + h]) <= 1.5 * around + 1e-4, (record["caption"], c)
