"""Per-frame control (`control_dim`): frame t's features join every Siren expert's temporal
input at t, and the delay LM's input at delay step t (codebook 0 of frame t), in teacher
forcing and in cached generation alike; an LM grown to take them computes what it computed
before until its control projections learn."""

import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import make_model, make_text

from siren_lightning.export import load_grown
from siren_lightning.models.delay_lm import DelayPatternLM
from siren_lightning.models.sampling import generate


def _codes(b=2, t=12, seed=0):
    return torch.randint(16, (b, 6, t), generator=torch.Generator().manual_seed(seed))


BUILDERS = {"siren": make_model, "delay": make_delay_model}
both_lms = pytest.mark.parametrize("lm", sorted(BUILDERS))


def _trained_control(model):
    with torch.no_grad():
        for module in [model] if isinstance(model, DelayPatternLM) else model.experts:
            module.control.proj.weight.normal_(0, 0.5)
    return model


@both_lms
def test_a_grown_lm_is_the_lm_it_grew_from(lm):
    plain = BUILDERS[lm](duration_conditioning=True)
    grown = BUILDERS[lm](seed=5, duration_conditioning=True, control_dim=2)
    load_grown(grown, plain.state_dict(), 0)  # control projections stay zero
    codes, (states, mask) = _codes(), make_text(2)
    control = torch.rand(2, 12, 2)
    torch.testing.assert_close(
        grown(codes, states, mask, control=control).logits, plain(codes, states, mask).logits
    )
    with pytest.raises(RuntimeError, match="missing"):  # anything else missing still fails
        state = {k: v for k, v in plain.state_dict().items() if "heads" not in k}
        load_grown(grown, state, 0)


@both_lms
def test_frame_t_reads_the_control_of_frame_t_and_no_later(lm):
    # Siren: every codebook of frame t reads the control of frames <= t. Delay LM: codebook q of
    # frame t is drawn at step t + q, so it reads frames <= t + q.
    model = _trained_control(BUILDERS[lm](control_dim=1))
    codes, (states, mask) = _codes(), make_text(2)
    control = torch.rand(2, 12, 1)
    base = model(codes, states, mask, control=control).logits  # [B, r, T, K]
    moved = control.clone()
    moved[:, 5] += 1.0
    out = model(codes, states, mask, control=moved).logits
    lag = torch.arange(6)[:, None] if lm == "delay" else torch.zeros(6, 1, dtype=torch.long)
    reads = (torch.arange(12)[None] + lag) >= 5  # [r, T]: the moved frame is in its past
    changed = (out - base).abs().amax(dim=(0, 3)) > 1e-5  # [r, T]
    assert torch.equal(changed, reads)


@both_lms
@pytest.mark.parametrize("prompt", [0, 4])
def test_cached_generation_follows_the_control_as_teacher_forcing_reads_it(lm, prompt):
    # Greedy draws: every generated frame is the teacher-forced argmax under the same control.
    model = _trained_control(BUILDERS[lm](control_dim=1, duration_conditioning=True))
    states, mask = make_text(2)
    t = 10
    control = torch.rand(2, t, 1)
    given = _codes(t=prompt) if prompt else None
    drawn = generate(model, states, mask, t, temperature=0.0, control=control, prompt_codes=given)
    logits = model(drawn, states, mask, total_frames=torch.tensor([t, t]), control=control).logits
    torch.testing.assert_close(logits.argmax(-1)[..., prompt:], drawn[..., prompt:], rtol=0, atol=0)
    other = generate(
        model, states, mask, t, temperature=0.0, control=1 - control, prompt_codes=given
    )
    assert not torch.equal(other, drawn)  # the control decides


@both_lms
def test_control_is_checked(lm):
    states, mask, build = *make_text(2), BUILDERS[lm]
    with pytest.raises(ValueError, match="control_dim 1 needs control"):
        build(control_dim=1)(_codes(), states, mask)
    with pytest.raises(ValueError, match="takes none"):
        build()(_codes(), states, mask, control=torch.rand(2, 12, 1))
    with pytest.raises(ValueError, match="control must be"):
        generate(build(control_dim=1), states, mask, 10, control=torch.rand(2, 4, 1))


def test_pretraining_gives_the_lm_each_windows_curve(tmp_path, monkeypatch):
    from siren_lightning.stages.pretrain import PretrainModule

    curves = {"a": torch.arange(20.0) / 20, "b": torch.arange(20.0) / 40}
    torch.save(curves, tmp_path / "train.pt")
    with pytest.raises(ValueError, match="needs control_cache"):
        PretrainModule(make_model(control_dim=1), caption_dropout=0.0)
    module = PretrainModule(
        make_model(control_dim=1), caption_dropout=0.0, warmup_steps=0, control_cache=str(tmp_path)
    )
    module.setup("fit")
    seen = []
    forward = module.network.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["control"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(module.network, "forward", spy)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    states, text_mask = make_text(2)
    mask = torch.ones(2, 12, dtype=torch.bool)
    batch = {"codes": _codes(), "mask": mask, "text_states": states, "text_mask": text_mask}
    batch |= {"ids": ["a", "b"], "frame_offset": torch.tensor([5, 0])}
    module.training_step(batch, 0)
    module.validation_step(batch, 0)
    want = torch.stack([curves["a"][5:17], curves["b"][:12]])[..., None]
    assert len(seen) == 2 and all(torch.equal(c, want) for c in seen)


@both_lms
@pytest.mark.parametrize("text_guided", [True, False])
@pytest.mark.parametrize("use_cache", [True, False])
def test_control_guidance_adds_the_contrast_with_the_curves_copy(lm, text_guided, use_cache):
    # Greedy draws: each frame is the argmax of g + c (cond - contrast), cond read under
    # (caption, control), contrast under (caption, copy), g = uncond + s (cond - uncond) with
    # uncond under (empty caption, control), or g = cond without text guidance.
    model = _trained_control(BUILDERS[lm](control_dim=1, duration_conditioning=True))
    states, mask = make_text(2)
    empty_states, empty_mask = make_text(1, seed=3)
    t, scale, control_scale = 10, 2.5, 1.5
    control, copy = torch.rand(2, t, 1), torch.rand(2, t, 1)
    kwargs = dict(uncond_states=empty_states, uncond_mask=empty_mask, cfg_scale=scale)
    kwargs = kwargs if text_guided else {}
    drawn = generate(
        model,
        states,
        mask,
        t,
        temperature=0.0,
        control=control,
        use_cache=use_cache,
        control_contrast=copy,
        control_scale=control_scale,
        **kwargs,
    )
    frames = torch.tensor([t, t])
    cond = model(drawn, states, mask, total_frames=frames, control=control).logits
    contrast = model(drawn, states, mask, total_frames=frames, control=copy).logits
    guided = cond
    if text_guided:
        empty = (empty_states.expand(2, -1, -1), empty_mask.expand(2, -1))
        uncond = model(drawn, *empty, total_frames=frames, control=control).logits
        guided = uncond + scale * (cond - uncond)
    mixed = guided + control_scale * (cond - contrast)
    torch.testing.assert_close(mixed.argmax(-1), drawn, rtol=0, atol=0)
    plain = generate(model, states, mask, t, temperature=0.0, control=control, **kwargs)
    assert not torch.equal(plain, drawn)  # the copy is read
    off = generate(
        model,
        states,
        mask,
        t,
        temperature=0.0,
        control=control,
        control_contrast=copy,
        control_scale=0.0,
        **kwargs,
    )
    assert torch.equal(plain, off)  # scale 0: no contrast rows at all
    with pytest.raises(ValueError, match="needs control_contrast"):
        generate(model, states, mask, t, control=control, control_scale=1.0)
    with pytest.raises(ValueError, match="same shape"):
        generate(
            model,
            states,
            mask,
            t,
            control=control,
            control_contrast=copy[:, :5],
            control_scale=1.0,
            **kwargs,
        )
