from types import SimpleNamespace

import pytest
import torch
from siren_testing import make_model, make_text

from siren_lightning.models.delay_lm import DelayPatternLM
from siren_lightning.models.siren import SirenConfig, SirenLM, count_parameters


@pytest.fixture
def model() -> SirenLM:
    return make_model()


def _codes(model, b=2, t=6, seed=2):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randint(c.codebook_size, (b, c.num_codebooks, t), generator=g)


@pytest.mark.parametrize(("name", "per_expert"), [("1.6b", 272.7e6), ("3.1b", 515.0e6)])
def test_paper_parameter_counts_on_meta_device(name, per_expert):
    with torch.device("meta"):
        model = SirenLM(SirenConfig.from_name(name))
    c = model.config
    assert (c.width, c.num_heads, c.mlp_hidden, c.text_dim, c.num_groups) == (
        1024,
        16,
        2816,
        768,
        6,
    )
    counts = [count_parameters(e) for e in model.experts]
    assert len(set(counts)) == 1
    assert abs(counts[0] - per_expert) / per_expert < 0.01
    assert count_parameters(model) == 6 * counts[0]  # the codebook table is a buffer
    assert model.codebook_table.shape == (12, 1024, 1024)


def test_tiny_preset_is_a_few_million_per_expert():
    with torch.device("meta"):
        model = SirenLM(SirenConfig.from_name("tiny"))
    assert 1e6 < count_parameters(model.experts[0]) < 5e6


def test_config_checks_and_overrides():
    assert SirenConfig.from_name("tiny", width=64, num_heads=2).mlp_hidden == 256
    with pytest.raises(ValueError, match="even"):
        SirenConfig(num_codebooks=7, group=7)
    with pytest.raises(ValueError, match="group 4 must divide"):
        SirenConfig(num_codebooks=6, group=4)
    with pytest.raises(ValueError, match="must divide width"):
        SirenConfig(width=100, num_heads=16)
    with pytest.raises(ValueError, match="unknown size"):
        SirenConfig.from_name("7b")
    config = SirenConfig.from_name("1.6b", dropout=0.0)
    assert SirenConfig(**config.to_dict()) == config


def test_forward_shapes_mask_and_group_subset(model):
    codes = _codes(model, b=2, t=5)
    states, text_mask = make_text(2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = model(codes, states, text_mask, mask)
    assert out.logits.shape == (2, 6, 5, 16)
    assert out.codebooks == [0, 1, 2, 3, 4, 5]
    assert out.mask.shape == (2, 6, 5) and out.mask[1, :, 3:].sum() == 0 and out.mask[0].all()
    sub = model(codes, states, text_mask, mask, groups=[2, 0])
    assert sub.codebooks == [4, 5, 0, 1]
    torch.testing.assert_close(sub.logits[:, :2], out.logits[:, 4:6])
    torch.testing.assert_close(sub.logits[:, 2:], out.logits[:, :2])


def test_bad_inputs_are_clear_errors(model):
    states, text_mask = make_text(2)
    with pytest.raises(ValueError, match="codes must be"):
        model(torch.zeros(2, 5, 4, dtype=torch.long), states, text_mask)
    with pytest.raises(ValueError, match="text_states must be"):
        model(_codes(model), torch.zeros(2, 5, 7), text_mask)
    with pytest.raises(ValueError, match="codebook_table has shape"):
        model.set_codebook_table(torch.zeros(6, 16, 9))


@pytest.mark.parametrize("group", [2, 3])
def test_causal_structure_by_perturbing_codes(group):
    # Codebook c of frame t may depend on frames < t and on codebooks < c of frame t only.
    model = make_model(num_codebooks=6, group=group).double()
    states, text_mask = make_text(2)
    states = states.double()
    codes = _codes(model, b=2, t=6)
    t = 3
    base = model(codes, states, text_mask).logits  # [B, r, T, K]
    for c in range(6):
        k0 = (c // group) * group  # the first codebook of c's expert
        later = codes.clone()
        later[:, c:, t] = (later[:, c:, t] + 1) % 16
        later[:, :, t + 1 :] = (later[:, :, t + 1 :] + 3) % 16
        out = model(later, states, text_mask).logits
        torch.testing.assert_close(out[:, c, : t + 1], base[:, c, : t + 1], rtol=0, atol=0)
        for j in range(c):  # every lower codebook of the same frame matters
            lower = codes.clone()
            lower[:, j, t] = (lower[:, j, t] + 1) % 16
            changed = model(lower, states, text_mask).logits[:, c, t]
            assert not torch.allclose(changed, base[:, c, t]), (c, j, k0)
        past = codes.clone()
        past[:, 5, t - 1] = (past[:, 5, t - 1] + 1) % 16  # the previous frame, any codebook
        assert not torch.allclose(model(past, states, text_mask).logits[:, c, t], base[:, c, t])


def test_future_steps_get_zero_gradient(model):
    model = model.double()
    states, text_mask = make_text(2)
    codes = _codes(model, b=2, t=6)
    vectors = model.codebook_vectors(codes).requires_grad_(True)  # [B, r, T, D_lat]
    t = 2
    for k, expert in enumerate(model.experts):
        logits = expert(vectors, states.double(), text_mask)  # [B, 2, T, K]
        for i in range(2):
            c = 2 * k + i
            (grad,) = torch.autograd.grad(logits[:, i, t].sum(), vectors, retain_graph=True)
            assert grad[:, :, t + 1 :].abs().max() == 0
            assert grad[:, c:, t].abs().max() == 0
            assert (grad[:, :c, t].abs().amax(dim=(0, 2)) > 0).all()
            assert (grad[:, :, t - 1].abs().amax(dim=(0, 2)) > 0).all()


def test_experts_share_nothing_and_table_is_frozen(model):
    states, text_mask = make_text(2)
    out = model(_codes(model), states, text_mask, groups=[1])
    out.logits.sum().backward()
    touched = {n.split(".")[1] for n, p in model.named_parameters() if p.grad is not None}
    assert touched == {"1"}
    assert "codebook_table" not in dict(model.named_parameters())
    assert "codebook_table" in model.state_dict()


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for enabled in (False, True):
        model = make_model(dropout=0.0).train()
        model.set_gradient_checkpointing(enabled)
        states, text_mask = make_text(2)
        model(_codes(model), states, text_mask).logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_paper_size_forward_shapes_on_meta_device():
    with torch.device("meta"):
        model = SirenLM(SirenConfig.from_name("1.6b"))
        codes = torch.zeros(2, 12, 300, dtype=torch.long)
        states, text_mask = torch.zeros(2, 20, 768), torch.ones(2, 20, dtype=torch.bool)
        out = model(codes, states, text_mask, groups=[0, 5])
    assert out.logits.shape == (2, 4, 300, 1024) and out.codebooks == [0, 1, 10, 11]


@pytest.mark.parametrize("cls", [SirenLM, DelayPatternLM])
def test_from_codec_takes_the_codebooks_and_their_table_from_the_codec(cls):
    table = torch.randn(6, 16, 8)
    codec = SimpleNamespace(
        n_codebooks=6, codebook_size=16, latent_dim=8, codebook_table=lambda: table
    )
    model = cls.from_codec(codec, "tiny", {"width": 32, "num_heads": 4, "text_dim": 12})
    c = model.config
    assert (c.num_codebooks, c.codebook_size, c.latent_dim, c.width) == (6, 16, 8, 32)
    assert torch.equal(model.codebook_table, table)
    # Which codebooks each group predicts: Siren's expert k makes 2k, 2k+1; the delay LM all.
    groups = [model.codebooks_of(k) for k in range(model.num_groups)]
    expected = [[0, 1], [2, 3], [4, 5]] if cls is SirenLM else [[0, 1, 2, 3, 4, 5]]
    assert groups == expected
