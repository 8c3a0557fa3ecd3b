"""Planning ahead (`PretrainModule(future_weight)`, `future_code_loss`): expert 0's temporal
output of frame t also predicts codebook 0 of frame t + d, through training-only heads."""

import math

import pytest
import torch
from delay_testing import make_delay_model  # noqa: E402
from siren_testing import make_model, make_text  # noqa: E402
from torch import nn

from siren_lightning.stages.pretrain import PretrainModule, future_code_loss  # noqa: E402


def _one_hot_heads(k: int, n: int) -> nn.ModuleList:
    heads = nn.ModuleList(nn.Linear(k, k, bias=False) for _ in range(n))
    with torch.no_grad():
        for head in heads:
            head.weight.copy_(torch.eye(k) * 50.0)  # logits = 50 x hidden
    return heads


def test_future_loss_by_hand_uniform_heads():
    # Zero heads give uniform logits: every offset's CE is ln K, whatever the codes.
    k, b, t = 8, 2, 12
    heads = nn.ModuleList(nn.Linear(5, k, bias=False) for _ in range(3))
    for head in heads:
        nn.init.zeros_(head.weight)
    codes = torch.randint(k, (b, t))
    got = future_code_loss(
        torch.randn(b, t, 5), heads, [1, 3, 6], codes, torch.ones(b, t, dtype=torch.bool)
    )
    torch.testing.assert_close(got, torch.full((3,), math.log(k)))


def test_future_loss_pairs_frame_t_with_frame_t_plus_d_and_skips_padding():
    # hidden[t] spells codes[t + d] one-hot: CE ~0 when the pairing is t -> t + d, ~50 nats
    # off by one. Frames past a clip's padding start hold wrong spellings: they must be left out.
    k, b, t, d = 6, 2, 10, 3
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(k, (b, t), generator=g)
    codes[:, 1:] = (
        codes[:, :-1] + 1 + codes[:, 1:] % (k - 1)
    ) % k  # no code repeats its predecessor
    hidden = torch.zeros(b, t, k)
    hidden[:, : t - d] = nn.functional.one_hot(codes[:, d:], k).float()
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 7:] = False  # clip 1 is 7 frames: pairs (t, t + 3) with t + 3 >= 7 are padding
    hidden[1, 4:] = nn.functional.one_hot((codes[1, 4:] + 1) % k, k).float()  # wrong there
    got = future_code_loss(hidden, _one_hot_heads(k, 1), [d], codes, mask)
    assert got.item() < 1e-6
    shifted = future_code_loss(hidden, _one_hot_heads(k, 1), [d - 1], codes, mask)
    assert shifted.item() > 10.0


def test_return_hidden_keeps_the_logits_and_gives_expert_outputs():
    model = make_model().eval()
    states, mask = make_text(2)
    codes = torch.randint(0, 16, (2, 6, 7))
    plain = model(codes, states, mask)
    out = model(codes, states, mask, groups=[0, 2], return_hidden=True)
    assert plain.hidden is None
    assert out.hidden.shape == (2, 2, 7, model.config.width)
    torch.testing.assert_close(out.logits, plain.logits[:, [0, 1, 4, 5]], rtol=0, atol=0)
    # Frame t's output reads only the frames before it: changing frame 4 moves t >= 5 alone.
    changed = codes.clone()
    changed[:, :, 4] = (changed[:, :, 4] + 1) % 16
    after = model(changed, states, mask, groups=[0, 2], return_hidden=True).hidden
    torch.testing.assert_close(after[:, :, :5], out.hidden[:, :, :5], rtol=0, atol=0)
    assert not torch.allclose(after[:, :, 5:], out.hidden[:, :, 5:])


def _batch(b=2, t=24):
    states, text_mask = make_text(b)
    codes = torch.randint(0, 16, (b, 6, t), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(b, t, dtype=torch.bool)
    return {"codes": codes, "mask": mask, "text_states": states, "text_mask": text_mask}


def test_training_adds_the_weighted_future_loss_and_only_expert_0_learns_from_it(monkeypatch):
    torch.manual_seed(0)
    module = PretrainModule(
        make_model(), caption_dropout=0.0, warmup_steps=0, total_steps=10, future_weight=0.5
    )
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **k: logged.__setitem__(name, value))
    batch = _batch()
    loss = module.training_step(batch, 0)
    ce = torch.stack([logged[f"train/ce_cb{j:02d}"] for j in range(6)]).mean()
    torch.testing.assert_close(loss, ce + 0.5 * logged["train/future_ce"])
    # The future loss alone reaches expert 0 and its heads, no other expert.
    module.zero_grad()
    _, _, _, future = module._stats(batch, 0.0)
    future.mean().backward()
    grads = {k: e.temporal[0].attn.qkv.weight.grad for k, e in enumerate(module.network.experts)}
    assert grads[0].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for k, g in grads.items() if k)
    assert all(h.weight.grad.abs().sum() > 0 for h in module.future_heads)
    # The heads are trained (in the optimizer) and never part of the LM (its export).
    groups = module.configure_optimizers()["optimizer"].param_groups
    params = {id(p) for group in groups for p in group["params"]}
    assert all(id(p) in params for p in module.future_heads.parameters())
    assert not any(k.startswith("future") for k in module.network.state_dict())


def test_future_weight_is_checked():
    with pytest.raises(ValueError, match="future_weight must be >= 0"):
        PretrainModule(make_model(), caption_dropout=0.0, future_weight=-1.0)
    with pytest.raises(ValueError, match="future_offsets must be"):
        PretrainModule(make_model(), caption_dropout=0.0, future_weight=1.0, future_offsets=[0])
    with pytest.raises(ValueError, match="needs a SirenLM whose expert 0"):
        PretrainModule(make_model(), caption_dropout=0.0, future_weight=1.0, train_groups=[1])
    with pytest.raises(ValueError, match="needs a SirenLM whose expert 0"):
        PretrainModule(make_delay_model(), caption_dropout=0.0, future_weight=1.0)
