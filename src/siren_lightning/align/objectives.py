"""Pure loss pieces of the alignment stage (DESIGN.md section 6).

Letters: P prompts, G samples per prompt (a group), B = P*G rollouts, n policy codebooks,
T frames, K codebook size.

Token log-probabilities are of the policy's own codes (codebooks 2k, 2k+1 of each policy expert
k), teacher-forced on the sampled sequence; every function here takes them as tensors, so each
is checked against a hand computation in `tests/align/test_objectives.py`.

The KL penalty to the reference is per token. Two forms are offered:
- `"k3"` (default, as in GRPO): ``exp(ref - logp) - (ref - logp) - 1`` at the sampled code, an
  unbiased, always non-negative estimate of KL(policy || reference) that needs only the two
  log-probabilities of the sampled code;
- `"exact"`: ``sum_v p(v) (log p(v) - log q(v))`` over the K entries of the vocabulary.
The module logs the exact value either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KL_ESTIMATORS = ("k3", "exact")
STRATEGIES = ("grpo", "dpo", "crpo")


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages: (r - group mean) / (group std + eps).

    Args:
        rewards: [P, G] rewards of G samples for each of P prompts.
        eps: keeps a group of equal rewards at advantage 0.

    Returns:
        [P, G]. The std is the unbiased one (`torch.std`); a group of one sample gets 0.
    """
    if rewards.ndim != 2:
        raise ValueError(f"group_advantages: rewards must be [P, G], got {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def token_log_probs(logits: Tensor, codes: Tensor) -> Tensor:
    """Log-probability of each code under its logits: [..., K], [...] long -> [...] float32."""
    logp = logits.float().log_softmax(dim=-1)
    return logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference) at the sampled code.

    Args:
        logp, ref_logp: [...] log-probabilities of the same codes under policy and reference.

    Returns:
        [...] ``exp(ref - logp) - (ref - logp) - 1`` (>= 0).
    """
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1.0


def kl_exact(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Per-token KL(policy || reference) over the vocabulary: [..., K], [..., K] -> [...]."""
    logp = logits.float().log_softmax(dim=-1)
    ref = ref_logits.float().log_softmax(dim=-1)
    return (logp.exp() * (logp - ref)).sum(dim=-1)


def entropy(logits: Tensor) -> Tensor:
    """Per-token entropy of the policy in nats: [..., K] -> [...]."""
    logp = logits.float().log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` where `mask` is True (all when None); 0 when nothing is valid."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_eps: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO's clipped policy-gradient loss, per token, and the fraction of clipped ratios.

    Args:
        logp: [B, n, T] log-probabilities under the policy being trained (with gradient).
        old_logp: [B, n, T] the same under the policy that sampled the rollouts (no gradient).
        advantages: [B] one advantage per rollout, broadcast to its tokens.
        clip_eps: ratios outside [1 - eps, 1 + eps] stop contributing gradient.
        mask: [B, n, T] bool, True for real tokens.

    Returns:
        loss: scalar, ``-mean(min(ratio A, clip(ratio) A))`` over the valid tokens;
        clipped: scalar, fraction of valid tokens whose clipped term was the one taken.
    """
    adv = advantages.reshape(-1, *([1] * (logp.ndim - 1))).to(logp.dtype)  # [B, 1, 1]
    ratio = (logp - old_logp).exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    was_clipped = (clipped < unclipped).to(logp.dtype)
    return loss, masked_mean(was_clipped.detach(), mask)


def best_and_worst(rewards: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The best and the worst sample of each group.

    Args:
        rewards: [P, G].

    Returns:
        chosen [P] and rejected [P] indices into the flattened [P*G] rollouts, and valid [P]
        bool (False where the group's rewards are all equal: no preference).
    """
    if rewards.ndim != 2:
        raise ValueError(f"best_and_worst: rewards must be [P, G], got {tuple(rewards.shape)}")
    p, g = rewards.shape
    offset = torch.arange(p, device=rewards.device) * g
    best, worst = rewards.argmax(dim=1), rewards.argmin(dim=1)
    valid = rewards.max(dim=1).values > rewards.min(dim=1).values
    return offset + best, offset + worst, valid


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Direct preference optimisation on (chosen, rejected) pairs.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: [P] sequence log-probabilities
            (sums over the policy's tokens) under the policy and the reference.
        beta: inverse temperature of the implicit reward.
        valid: [P] bool, pairs to use (all when None).

    Returns:
        loss: scalar ``-mean(log sigmoid(beta ((pc - rc) - (pr - rr))))`` over valid pairs
        (0 when none is valid); accuracy: fraction of valid pairs whose margin is positive.
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # [P]
    losses = -F.logsigmoid(margin)
    accuracy = (margin > 0).to(margin.dtype).detach()
    return masked_mean(losses, valid), masked_mean(accuracy, valid)
