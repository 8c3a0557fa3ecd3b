from pathlib import Path

import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import make_text

from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
from siren_lightning.models.sampling import generate, generate_frames
from siren_lightning.models.siren import SirenConfig, SirenLM, count_parameters
from siren_lightning.stages.chassis import network_from_spec


def _codes(model, b=2, t=6, seed=2):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randint(c.codebook_size, (b, c.num_codebooks, t), generator=g)


@pytest.mark.parametrize("name", ["tiny", "1.6b", "3.1b"])
def test_presets_match_siren_parameter_counts_within_5_percent(name):
    with torch.device("meta"):
        siren = count_parameters(SirenLM(SirenConfig.from_name(name)))
        baseline = DelayPatternLM(DelayLMConfig.from_name(name))
    assert abs(count_parameters(baseline) - siren) / siren < 0.05
    assert "codebook_table" not in dict(baseline.named_parameters())  # a frozen buffer
    r = baseline.config.num_codebooks
    assert baseline.num_groups == 1 and baseline.codebooks_of(0) == list(range(r))
    with pytest.raises(ValueError, match="only group is 0"):
        baseline.codebooks_of(1)


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="must divide width"):
        DelayLMConfig(width=100, num_heads=16)
    with pytest.raises(ValueError, match="unknown size"):
        DelayLMConfig.from_name("7b")
    with pytest.raises(ValueError, match="unknown fields"):
        DelayLMConfig.from_dict({"experts": 3})
    config = DelayLMConfig.from_name("tiny", dropout=0.0)
    assert config.mlp_hidden == 768
    assert DelayLMConfig.from_dict(config.to_dict()) == config
    # config.json files of older versions wrote the derived group = r, num_groups = 1.
    old = {**config.to_dict(), "group": config.num_codebooks, "num_groups": 1}
    assert DelayLMConfig.from_dict(old) == config
    assert "group" not in config.to_dict()


def test_forward_shapes_mask_and_errors():
    model = make_delay_model()
    states, text_mask = make_text(2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = model(_codes(model, t=5), states, text_mask, mask)
    assert out.logits.shape == (2, 6, 5, 16) and out.codebooks == list(range(6))
    assert out.mask.shape == (2, 6, 5) and out.mask[1, :, 3:].sum() == 0 and out.mask[0].all()
    torch.testing.assert_close(
        model(_codes(model, t=5), states, text_mask, mask, groups=[0]).logits, out.logits
    )
    with pytest.raises(ValueError, match="codes must be"):
        model(torch.zeros(2, 5, 4, dtype=torch.long), states, text_mask)
    with pytest.raises(ValueError, match="text_states must be"):
        model(_codes(model), torch.zeros(2, 5, 7), text_mask)
    with pytest.raises(ValueError, match="groups must be"):
        model(_codes(model), states, text_mask, groups=[1])
    with pytest.raises(ValueError, match="codebook_table has shape"):
        model.set_codebook_table(torch.zeros(6, 16, 9))


def test_code_at_step_s_never_sees_codes_it_should_not():
    # Codebook q of frame t is predicted at delay step t + q from steps < t + q: it may depend on
    # code (q', t') only if t' + q' < t + q (lower codebooks of later frames run ahead: the
    # pattern's approximation), never on codebooks >= q of frame t or on anything at a later step.
    model = make_delay_model().double()
    states, text_mask = make_text(2)
    states = states.double()
    codes = _codes(model, b=2, t=6)
    base = model(codes, states, text_mask).logits  # [B, r, T, K]
    r, t_all = 6, 6
    for q in range(r):
        for t in range(t_all):
            for q2 in range(r):
                for t2 in range(t_all):
                    changed = codes.clone()
                    changed[:, q2, t2] = (changed[:, q2, t2] + 1) % 16
                    out = model(changed, states, text_mask).logits[:, q, t]
                    if t2 + q2 >= t + q:
                        torch.testing.assert_close(out, base[:, q, t], rtol=0, atol=0)
                    else:
                        assert not torch.allclose(out, base[:, q, t]), (q, t, q2, t2)


def test_future_steps_get_zero_gradient():
    model = make_delay_model().double()
    states, text_mask = make_text(2)
    states = states.double()
    codes = _codes(model, b=2, t=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    x = model.embed(model.step_inputs(codes, mask)).detach().requires_grad_(True)  # [B, S, D]
    logits = model.run(x, model.text_kv(states), text_mask)  # [B, r, S, K]
    for s in range(x.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, :, s].sum(), x, retain_graph=True)
        assert grad[:, s + 1 :].abs().sum() == 0
        assert (grad[:, : s + 1].abs().amax(dim=(0, 2)) > 0).all()


def test_padded_frames_read_like_a_shorter_clip():
    model = make_delay_model().double()
    states, text_mask = make_text(1)
    codes = _codes(model, b=1, t=6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    padded = model(codes, states.double(), text_mask, mask).logits[:, :, :4]
    garbage = codes.clone()
    garbage[:, :, 4:] = 3
    again = model(garbage, states.double(), text_mask, mask).logits[:, :, :4]
    torch.testing.assert_close(padded, again, rtol=0, atol=0)


def test_cached_and_uncached_greedy_generation_agree_with_teacher_forcing():
    model = make_delay_model().double()
    states, mask = make_text(2)
    states = states.double()
    uncond = torch.randn(1, 3, 12, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool)
    for cfg in (1.0, 3.0):
        kwargs = dict(
            temperature=0.0, cfg_scale=cfg, uncond_states=uncond[0], uncond_mask=uncond[1]
        )
        cached = generate(model, states, mask, 7, use_cache=True, **kwargs)
        uncached = generate(model, states, mask, 7, use_cache=False, **kwargs)
        assert cached.shape == (2, 6, 7)
        assert torch.equal(cached, uncached)
    codes = generate(model, states, mask, 7, temperature=0.0)
    logits = model(codes, states, mask).logits  # [B, r, T, K]
    assert torch.equal(logits.argmax(-1), codes)


def test_seeded_sampling_streams_frames_and_guidance_is_exact():
    model = make_delay_model()
    states, mask = make_text(2)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, states, mask, 9, temperature=1.0, top_k=8, top_p=0.9, generator=g)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 16  # never the idle token
    frames = list(generate_frames(model, states, mask, 3, temperature=0.0))
    assert len(frames) == 3 and all(f.shape == (2, 6) for f in frames)
    greedy = generate(model, states, mask, 5, temperature=0.0)
    same = generate(
        model,
        states,
        mask,
        5,
        temperature=0.0,
        cfg_scale=4.0,
        uncond_states=states,
        uncond_mask=mask,
    )
    assert torch.equal(same, greedy)
    alone = generate(model, states[1:], mask[1:], 5, temperature=0.0)
    assert torch.equal(alone[0], greedy[1])


def test_hub_mixin_round_trip(tmp_path):
    model = make_delay_model()
    model.save_pretrained(tmp_path / "m")
    loaded = DelayPatternLM.from_pretrained(str(tmp_path / "m"), strict=True)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_baseline_tiny_yaml_matches_siren_tiny_yaml_parameters_within_5_percent(monkeypatch):
    import yaml

    root = Path(__file__).resolve().parents[2] / "experiments"
    monkeypatch.chdir(root.parent)  # the YAMLs name the codec relative to the repository

    def network(name):
        config = yaml.safe_load((root / name).read_text())
        return network_from_spec(config["model"]["init_args"]["network"])

    siren = count_parameters(network("siren_tiny.yaml"))
    baseline = count_parameters(network("baseline_tiny.yaml"))
    assert abs(baseline - siren) / siren < 0.05, (siren, baseline)
