"""The models' own generation (`begin`/`step`, driven by `models.sampling`): guidance against a
hand mix of teacher-forced logits, per-clip negative captions and continuation of given codes."""

import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import make_model, make_text

from siren_lightning.align.heldout import group_logits
from siren_lightning.models.sampling import generate, guide

BUILDERS = {"siren": make_model, "delay": make_delay_model}


def _setup(name):
    model = BUILDERS[name]().double()
    states, mask = make_text(2)
    g = torch.Generator().manual_seed(5)
    negative = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)  # one per clip
    return model, states.double(), mask, negative, torch.ones(2, 4, dtype=torch.bool)


def test_guide_is_uncond_plus_scale_times_the_difference_by_hand():
    cond, uncond = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 3.0, 1.0])
    # 0 + 3 * 1, 3 + 3 * (-1), 1 + 3 * (-2)
    assert torch.equal(guide(cond, uncond, 3.0), torch.tensor([3.0, 0.0, -5.0]))
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    assert torch.equal(guide(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_guided_greedy_codes_are_the_argmax_of_hand_mixed_teacher_forced_logits(name):
    model, states, mask, negative, negative_mask = _setup(name)
    scale = 3.0
    codes = generate(
        model,
        states,
        mask,
        6,
        temperature=0.0,
        cfg_scale=scale,
        uncond_states=negative,
        uncond_mask=negative_mask,
    )
    cond = model(codes, states, mask).logits  # [B, r, T, K]
    uncond = model(codes, negative, negative_mask).logits
    mixed = uncond + scale * (cond - uncond)  # written here, not taken from `guide`
    assert torch.equal(mixed.argmax(-1), codes)
    # The per-clip negative caption is that clip's own: each clip alone gives the same codes.
    for i in range(2):
        alone = generate(
            model,
            states[i : i + 1],
            mask[i : i + 1],
            6,
            temperature=0.0,
            cfg_scale=scale,
            uncond_states=negative[i : i + 1],
            uncond_mask=negative_mask[i : i + 1],
        )
        assert torch.equal(alone[0], codes[i])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_generation_continues_given_codes(name):
    model, states, mask, _, _ = _setup(name)
    r, size = model.config.num_codebooks, model.config.codebook_size
    prompt = torch.randint(size, (2, r, 3), generator=torch.Generator().manual_seed(2))
    codes = generate(model, states, mask, 7, temperature=0.0, prompt_codes=prompt)
    uncached = generate(
        model, states, mask, 7, temperature=0.0, prompt_codes=prompt, use_cache=False
    )
    assert torch.equal(codes, uncached)
    assert torch.equal(codes[..., :3], prompt)
    # Every later code is the greedy choice given everything before it, the prompt included.
    logits = model(codes, states, mask).logits
    assert torch.equal(logits.argmax(-1)[..., 3:], codes[..., 3:])
    with pytest.raises(ValueError, match="prompt_codes must be"):
        generate(model, states, mask, 7, prompt_codes=prompt[:, :2])


def test_align_group_logits_mix_with_the_sampler_guidance():
    model, states, mask, negative, negative_mask = _setup("siren")
    codes = generate(model, states, mask, 5, temperature=0.0)
    experts = {1: model.experts[1]}
    got = group_logits(
        model, experts, codes, states, mask, uncond=(negative, negative_mask), cfg_scale=2.5
    )  # [B, g, T, K] for codebooks 2, 3
    cond = model(codes, states, mask).logits[:, 2:4]
    uncond = model(codes, negative, negative_mask).logits[:, 2:4]
    torch.testing.assert_close(got, uncond + 2.5 * (cond - uncond))
