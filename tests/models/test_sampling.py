import pytest
import torch
from siren_testing import make_model, make_text

from siren_lightning.models.sampling import (
    DEFAULT_SAMPLING,
    Sampler,
    SamplingConfig,
    check_sampling,
    filter_top_k,
    filter_top_p,
    generate,
    generate_frames,
    resolve_sampling,
    sample_logits,
    sampling_probabilities,
)

INF = float("-inf")


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.0, -1.0, 4.0, 5.0]])
    expected = torch.tensor([[INF, 3.0, 2.0, INF], [INF, INF, 4.0, 5.0]])
    assert torch.equal(filter_top_k(logits, 2), expected)
    assert torch.equal(filter_top_k(logits, 0), logits)


@pytest.mark.parametrize(
    ("p", "kept"), [(0.3, [0]), (0.5, [0]), (0.79, [0, 2]), (0.81, [0, 2, 3]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([0.5, 0.05, 0.3, 0.15])
    out = filter_top_p(probs.log()[None], p)[0]
    assert torch.isfinite(out).nonzero().flatten().tolist() == kept
    torch.testing.assert_close(out[kept], probs.log()[kept])


def test_sampling_follows_the_filtered_distribution():
    logits = torch.tensor([0.5, 0.05, 0.3, 0.15]).log().repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_logits(logits, temperature=1.0, top_k=3, top_p=0.79, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    # top-k 3 keeps {0, 2, 3}; top-p 0.79 then keeps {0, 2}: renormalised 0.625 / 0.375.
    assert freq[1] == 0 and freq[3] == 0
    assert abs(freq[0] - 0.625) < 0.02
    assert torch.equal(sample_logits(logits[:3], temperature=0.0), torch.zeros(3, dtype=torch.long))


def test_sampling_probabilities_are_the_distribution_drawn_from():
    # By hand: top-k 3 keeps {0, 2, 3}; top-p 0.79 then keeps {0, 2}: 0.625 / 0.375.
    logits = torch.tensor([0.5, 0.05, 0.3, 0.15]).log()[None]
    got = sampling_probabilities(logits, temperature=1.0, top_k=3, top_p=0.79)
    torch.testing.assert_close(got, torch.tensor([[0.625, 0.0, 0.375, 0.0]]))
    # Temperature 2 flattens the softmax: p^(1/2), renormalised.
    flat = torch.tensor([0.5, 0.05, 0.3, 0.15]).sqrt()
    torch.testing.assert_close(sampling_probabilities(logits, 2.0)[0], flat / flat.sum())
    assert torch.equal(sampling_probabilities(logits, 0.0), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # A guided Sampler's probabilities are those of the guided logits.
    cond, uncond = torch.randn(2, 3, 6).unbind(0)
    config = SamplingConfig(temperature=0.7, top_k=4, top_p=0.9, cfg_scale=3.0)
    probs = Sampler(config, guided=True).probabilities(torch.cat([cond, uncond]))
    expected = sampling_probabilities(uncond + 3.0 * (cond - uncond), 0.7, 4, 0.9)
    torch.testing.assert_close(probs, expected)


def _prompts(model):
    states, mask = make_text(2)
    return states.to(model.codebook_table.dtype), mask


def test_cached_and_uncached_greedy_generation_agree_with_teacher_forcing():
    model = make_model().double()
    states, mask = _prompts(model)
    uncond = torch.randn(1, 3, 12, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool)
    for cfg in (1.0, 3.0):
        kwargs = dict(
            temperature=0.0, cfg_scale=cfg, uncond_states=uncond[0], uncond_mask=uncond[1]
        )
        cached = generate(model, states, mask, 8, use_cache=True, **kwargs)
        looped = generate(model, states, mask, 8, use_cache=True, batch_experts=False, **kwargs)
        uncached = generate(model, states, mask, 8, use_cache=False, **kwargs)
        assert cached.shape == (2, 6, 8)
        assert torch.equal(cached, uncached)
        assert torch.equal(cached, looped)
    # Greedy codes are the argmax of the teacher-forced logits at every frame and codebook.
    codes = generate(model, states, mask, 8, temperature=0.0)
    logits = model(codes, states, mask).logits  # [B, r, T, K]
    assert torch.equal(logits.argmax(-1), codes)


def test_generation_is_batch_independent_and_guidance_is_exact():
    model = make_model().double()
    states, mask = _prompts(model)
    together = generate(model, states, mask, 6, temperature=0.0)
    for i in range(2):
        alone = generate(model, states[i : i + 1], mask[i : i + 1], 6, temperature=0.0)
        assert torch.equal(alone[0], together[i])
    # With the unconditional prompt equal to the prompt, guidance changes nothing.
    same = generate(
        model,
        states,
        mask,
        6,
        temperature=0.0,
        cfg_scale=4.0,
        uncond_states=states,
        uncond_mask=mask,
    )
    assert torch.equal(same, together)
    with pytest.raises(ValueError, match="uncond_states"):
        generate(model, states, mask, 2, cfg_scale=3.0)


def test_seeded_sampling_is_reproducible_and_streams_frames():
    model = make_model()
    states, mask = _prompts(model)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, states, mask, 10, temperature=1.0, top_k=8, top_p=0.9, generator=g)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 16
    frames = list(generate_frames(model, states, mask, 3, temperature=0.0))
    assert len(frames) == 3 and all(f.shape == (2, 6) for f in frames)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_p": 1.01}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -5}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"cfg_scale": float("inf")}, "cfg_scale must be finite"),
    ],
)
def test_sampling_refuses_nonsense_settings(setting, message):
    model = make_model()
    states, mask = make_text(1)
    with pytest.raises(ValueError, match=f"generate: {message}"):
        generate(model, states, mask, 2, **setting)
    check_sampling(temperature=0.0, top_k=0, top_p=1.0, cfg_scale=-1.0)  # greedy, all off: fine


def test_given_settings_beat_the_models_which_beat_the_defaults():
    assert DEFAULT_SAMPLING == {"temperature": 1.0, "top_k": 250, "top_p": 1.0, "cfg_scale": 3.0}
    model = {"temperature": 0.7, "top_p": 0.9, "cfg_scale": 2.0}
    given = {"temperature": 0.0, "top_k": None, "cfg_scale": 2.5}  # None: not given
    resolved = resolve_sampling("test", given, model, model_label="m/generation.json")
    assert resolved.values == {"temperature": 0.0, "top_k": 250, "top_p": 0.9, "cfg_scale": 2.5}
    assert resolved.sources == {
        "temperature": "given",
        "top_k": "default",
        "top_p": "m/generation.json",
        "cfg_scale": "given",
    }
    assert resolved.describe() == (
        "sampling: temperature 0 (given), top_k 250 (default), top_p 0.9 (m/generation.json), "
        "cfg_scale 2.5 (given)"
    )
    assert resolve_sampling("test").values == DEFAULT_SAMPLING  # nothing given, no model file
    assert resolve_sampling("test", None, {"top_k": 40.0}).values["top_k"] == 40  # an int
    with pytest.raises(ValueError, match=r"test: unknown sampling setting\(s\) \['temp'\]"):
        resolve_sampling("test", {"temp": 0.5})
    with pytest.raises(ValueError, match="test: top_p must be in"):
        resolve_sampling("test", {"top_p": 0.0}, model)
