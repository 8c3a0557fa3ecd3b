import math

import pytest
import torch

from siren_lightning.align.objectives import (
    best_and_worst,
    clipped_surrogate,
    dpo_loss,
    entropy,
    group_advantages,
    kl_exact,
    kl_k3,
    token_log_probs,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [0.0, 10.0, 5.0]])
    adv = group_advantages(rewards, eps=0.0 + 1e-6)
    # group 0: mean 2, unbiased std 1; group 1: all equal -> 0; group 2: mean 5, std 5.
    expected = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        group_advantages(torch.ones(4))


def test_kl_k3_and_exact_by_hand():
    # policy p = [0.5, 0.5], reference q = [0.25, 0.75]
    logits = torch.tensor([0.5, 0.5]).log()
    ref_logits = torch.tensor([0.25, 0.75]).log()
    exact = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kl_exact(logits, ref_logits)) == pytest.approx(exact, abs=1e-6)
    # k3 at code 0: log r = log q - log p = log 0.5 -> 0.5 - log 0.5 - 1
    k3 = kl_k3(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert float(k3) == pytest.approx(0.5 - math.log(0.5) - 1.0, abs=1e-6)
    assert float(kl_k3(torch.tensor(-1.3), torch.tensor(-1.3))) == 0.0


def test_k3_averaged_over_policy_samples_is_the_exact_kl():
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(8), torch.randn(8)
    codes = torch.multinomial(logits.softmax(-1), 200_000, replacement=True)
    logp = token_log_probs(logits.expand(codes.shape[0], -1), codes)
    ref = token_log_probs(ref_logits.expand(codes.shape[0], -1), codes)
    assert float(kl_k3(logp, ref).mean()) == pytest.approx(
        float(kl_exact(logits, ref_logits)), rel=0.03
    )


def test_entropy_and_log_probs():
    k = 16
    assert float(entropy(torch.zeros(k))) == pytest.approx(math.log(k))
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    torch.testing.assert_close(
        token_log_probs(logits, torch.tensor([1])), torch.tensor([math.log(0.75)])
    )


def test_clipped_surrogate_by_hand():
    # three rollouts of one token: ratios 1.5, 0.5, 1.0; advantages +1, +1, -1; eps 0.2
    old = torch.zeros(3, 1, 1)
    logp = torch.tensor([math.log(1.5), math.log(0.5), 0.0]).view(3, 1, 1).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, clip_eps=0.2)
    # min(1.5, 1.2) = 1.2 (clipped); min(0.5, 0.8) = 0.5; min(-1, -1) = -1
    assert float(loss.detach()) == pytest.approx(-(1.2 + 0.5 - 1.0) / 3, abs=1e-6)
    assert float(clipped) == pytest.approx(1 / 3)
    loss.backward()
    grad = logp.grad.flatten()
    assert grad[0] == 0  # the clipped ratio gives no gradient
    assert float(grad[1]) == pytest.approx(-0.5 / 3)  # d(-ratio*A/3)/dlogp = -ratio*A/3
    assert float(grad[2]) == pytest.approx(1.0 / 3)


def test_dpo_loss_and_pairs_by_hand():
    rewards = torch.tensor([[0.1, 0.9, 0.5], [2.0, 2.0, 2.0]])
    chosen, rejected, valid = best_and_worst(rewards)
    assert chosen.tolist()[0] == 1 and rejected.tolist()[0] == 0
    assert valid.tolist() == [True, False]  # a group of equal rewards has no preference
    loss, accuracy = dpo_loss(
        torch.tensor([-1.0, 0.0]),
        torch.tensor([-2.0, 0.0]),
        torch.tensor([-1.5, 0.0]),
        torch.tensor([-1.5, 9.0]),
        beta=0.5,
        valid=valid,
    )
    # margin = 0.5 * ((-1 + 1.5) - (-2 + 1.5)) = 0.5; loss = log(1 + exp(-0.5))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert float(accuracy) == 1.0
