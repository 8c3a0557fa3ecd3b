import copy
import math
import zlib

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from siren_testing import make_model

from siren_lightning.align.rewards import LoudnessReward, Reward
from siren_lightning.stages.align import AlignModule, ObjectiveConfig, RolloutConfig

GROUPS = {"rollout": RolloutConfig, "objective": ObjectiveConfig}


def trainer(steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def module(parts, **kwargs) -> AlignModule:
    """An AlignModule on the tiny parts; keyword arguments go to the group that has them."""
    network, codec, text = parts
    groups = {"rollout": {"group_size": 4, "seconds": 0.16}, "objective": {}}
    rest = {"optimizer": {"init_args": {"lr": 1e-2}}, "reward": LoudnessReward()}
    for name, value in kwargs.items():
        group = next((g for g, c in GROUPS.items() if name in c.__dataclass_fields__), None)
        (rest if group is None else groups[group])[name] = value
    return AlignModule(
        network=network,
        codec=codec,
        text_encoder=text,
        rollout=RolloutConfig(**groups["rollout"]),
        objective=ObjectiveConfig(**groups["objective"]),
        **rest,
    )


@pytest.mark.parametrize("strategy", ["grpo", "dpo", "crpo"])
def test_an_update_changes_only_the_policy(tiny_parts, caption_loader, strategy):
    epochs = 1 if strategy == "crpo" else 2
    m = module(tiny_parts, policy_groups=[1], strategy=strategy, ppo_epochs=epochs)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer(2).fit(m, train_dataloaders=caption_loader())
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert all(k.startswith("network.experts.1.") for k in changed), sorted(changed)[:5]
    # the frozen reference equals the policy's stage-1 weights, bit for bit
    for name, value in m.reference["1"].state_dict().items():
        assert torch.equal(value, before[f"network.experts.1.{name}"])
    assert all(
        not p.requires_grad
        for k, e in enumerate(m.network.experts)
        if k != 1
        for p in e.parameters()
    )


def test_bad_arguments_are_one_clear_error(tiny_parts):
    with pytest.raises(ValueError, match="policy_groups"):
        module(tiny_parts, policy_groups=[7])
    with pytest.raises(ValueError, match="kl_estimator"):
        module(tiny_parts, kl_estimator="k2")
    with pytest.raises(ValueError, match="crpo makes one update per rollout batch"):
        module(tiny_parts, strategy="crpo", ppo_epochs=2)
    with pytest.raises(ValueError, match="exactly one of init_from and network"):
        AlignModule(reward=LoudnessReward())
    with pytest.raises(FileNotFoundError, match="make pretrain"):
        AlignModule(init_from="no/such/last.ckpt")


def mean_reward(m: AlignModule, seed: int = 123) -> float:
    m._generator = torch.Generator().manual_seed(seed)
    return float(m.rollout(["a loud low hum", "two quiet beeps"] * 4)["rewards"].mean())


@pytest.mark.slow
@pytest.mark.parametrize(("kl_estimator", "cfg_scale"), [("k3", 3.0), ("exact", 1.0)])
def test_alignment_raises_a_toy_reward(tiny_parts, caption_loader, kl_estimator, cfg_scale):
    m = module(
        tiny_parts,
        kl_estimator=kl_estimator,
        sampling={"cfg_scale": cfg_scale},
        group_size=8,
        optimizer={"init_args": {"lr": 1e-2}},
        kl_coef=0.01,
    )
    start = mean_reward(m)  # about -7.7 dB, std 0.5 dB over the 8 x 8 clips
    trainer(30).fit(m, train_dataloaders=caption_loader(batch_size=2))
    end = mean_reward(m)
    assert end > start + 1.0, (start, end)  # dB


@pytest.mark.parametrize(("cfg_scale", "timed"), [(1.0, False), (3.0, False), (3.0, True)])
def test_teacher_forced_guided_logits_are_what_the_sampler_drew_from(tiny_parts, cfg_scale, timed):
    from siren_lightning.align.heldout import group_logits
    from siren_lightning.models.sampling import generate

    network, _, text = tiny_parts
    if timed:  # a duration-conditioned model (the reference tiny Siren is one)
        network = make_model(seed=0, duration_conditioning=True)
    prompts, empty = text.encode(["a loud low hum", "two quiet beeps"]), text.encode([""])
    codes = generate(
        network,
        prompts.states,
        prompts.mask,
        12,
        uncond_states=empty.states,
        uncond_mask=empty.mask,
        cfg_scale=cfg_scale,
        temperature=0.0,  # greedy: every code is the argmax of the logits it was drawn from
    )
    experts = {k: network.experts[k] for k in (0, 2)}
    with torch.no_grad():
        logits = group_logits(
            network,
            experts,
            codes,
            prompts.states,
            prompts.mask,
            uncond=(empty.states, empty.mask),
            cfg_scale=cfg_scale,
        )
    assert torch.equal(logits.argmax(-1), codes[:, [0, 1, 4, 5]])


def test_truncated_rollouts_are_refused(tiny_parts):
    with pytest.raises(ValueError, match="exact log-probability"):
        module(tiny_parts, sampling={"top_k": 50})


def test_a_resumed_run_draws_the_rollouts_of_an_uninterrupted_one(
    tiny_parts, caption_loader, tmp_path
):
    def fit(parts, steps, ckpt_path=None, callbacks=()):
        m = module(parts, policy_groups=[0])
        L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_checkpointing=bool(callbacks),
            callbacks=list(callbacks),
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(m, train_dataloaders=caption_loader(), ckpt_path=ckpt_path)
        return m

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    straight = fit(copy.deepcopy(tiny_parts), 4, callbacks=[saver])
    (midway,) = tmp_path.glob("*step=2.ckpt")
    resumed = fit(copy.deepcopy(tiny_parts), 4, ckpt_path=midway)
    fresh = fit(copy.deepcopy(tiny_parts), 2)
    a, b = straight.network.state_dict(), resumed.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Steps 3-4 did train (the check is not vacuous).
    assert not all(torch.equal(a[k], v) for k, v in fresh.network.state_dict().items())


def test_a_checkpoint_of_another_architecture_is_refused_on_resume(tiny_parts):
    m = module(tiny_parts)
    record = m.network.config.to_dict()
    other = {**record, "num_heads": record["num_heads"] * 2}  # same shapes, another model
    with pytest.raises(ValueError, match=rf"num_heads: {other['num_heads']} there, "):
        m.on_load_checkpoint({"siren": {"model_class": "SirenLM", "model_config": other}})
    m.on_load_checkpoint({"siren": {"model_class": "SirenLM", "model_config": record}})


# Tests the review of issue 17 found missing: grouping, the KL's argument order, the sign.


class CaptionReward(Reward):
    """A reward of the caption alone (its CRC32 mod 1000); records the captions it scored."""

    name = "caption-index"

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def score(self, audio, sample_rate, captions):
        self.seen.append(list(captions))
        return torch.tensor([float(zlib.crc32(c.encode()) % 1000) for c in captions])


def capture_rollouts(m: AlignModule) -> list[dict]:
    """Keep every rollout batch the module draws (its codes, rewards and text states)."""
    seen, original = [], m.rollout

    def spy(captions):
        seen.append(original(captions))
        return seen[-1]

    m.rollout = spy
    return seen


def test_rollouts_are_caption_major_and_each_caption_is_its_own_baseline(
    tiny_parts, caption_loader
):
    """G samples of one caption form one group. A reward that depends only on the caption is
    constant within every group, so every advantage is 0 and GRPO (no KL, no entropy bonus)
    must leave the policy unchanged, bit for bit; a baseline shared across captions would not."""
    reward = CaptionReward()
    m = module(tiny_parts, reward=reward, kl_coef=0.0, group_size=4)
    before = {k: v.clone() for k, v in m.network.state_dict().items()}
    loader = caption_loader(batch_size=2)
    trainer(2).fit(m, train_dataloaders=loader)
    batches = [b["captions"] for b in loader]
    assert reward.seen == [[c for c in batch for _ in range(4)] for batch in batches]
    every = [c for batch in batches for c in batch]
    assert len(set(CaptionReward().score(None, 0, every).tolist())) == len(every) == 4
    after = m.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The same run with a reward that varies within the groups does train (not vacuous).
    m = module(copy.deepcopy(tiny_parts), kl_coef=0.0, group_size=4)
    trainer(1).fit(m, train_dataloaders=caption_loader(batch_size=2))
    after = m.network.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)


def moved_policy(parts, **kwargs) -> AlignModule:
    """A module whose policy (expert 0) differs from its reference copy."""
    m = module(parts, **kwargs)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.network.experts[0].heads.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("kl_estimator", ["k3", "exact"])
def test_the_kl_penalty_is_kl_of_the_policy_from_the_reference(
    tiny_parts, caption_loader, kl_estimator
):
    """With every advantage 0 the loss is the penalty alone: KL(policy || reference), computed
    here by hand from the two distributions, not the reverse KL(reference || policy)."""
    m = moved_policy(
        tiny_parts, reward=CaptionReward(), kl_coef=1.0, kl_estimator=kl_estimator, ppo_epochs=1
    )
    policy = copy.deepcopy(m.network.experts[0])  # as it scores the rollouts
    rollouts = capture_rollouts(m)
    fit = trainer(1)
    fit.fit(m, train_dataloaders=caption_loader(batch_size=2))
    (r,) = rollouts
    targets = r["codes"][:, m.codebooks]  # [B, 2, T]
    with torch.no_grad():
        logp_all = m._logits({0: policy}, r, None).log_softmax(-1)  # [B, 2, T, K]
        ref_all = m._logits(m.reference_experts(), r, None).log_softmax(-1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    ref = ref_all.gather(-1, targets[..., None])[..., 0]
    if kl_estimator == "k3":
        forward = ((ref - logp).exp() - (ref - logp) - 1).mean()
        reverse = ((logp - ref).exp() - (logp - ref) - 1).mean()
    else:
        forward = (logp_all.exp() * (logp_all - ref_all)).sum(-1).mean()
        reverse = (ref_all.exp() * (ref_all - logp_all)).sum(-1).mean()
    assert abs(float(forward - reverse)) > 0.1 * float(forward)  # the order matters here
    logged = float(fit.callback_metrics["train/loss"])
    assert logged == pytest.approx(float(forward), rel=1e-4)


def test_one_grpo_step_raises_the_likelihood_of_the_better_rollouts(tiny_parts, caption_loader):
    """A small first update moves the policy up the advantage-weighted log-likelihood
    sum_i A_i log pi(rollout_i) of the rollouts it was computed from (a flipped advantage sign
    moves it down). A_i is computed here by hand: (r - group mean) / group std."""
    m = module(
        tiny_parts, kl_coef=0.0, optimizer={"init_args": {"lr": 1e-4}}, ppo_epochs=1, group_size=4
    )
    before = copy.deepcopy(m.network.experts[0])
    rollouts = capture_rollouts(m)
    trainer(1).fit(m, train_dataloaders=caption_loader(batch_size=2))
    (r,) = rollouts
    rewards = r["rewards"].view(2, 4)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / rewards.std(1, keepdim=True)).flatten()
    targets = r["codes"][:, m.codebooks]

    def objective(expert) -> float:
        with torch.no_grad():
            logp = m._logits({0: expert}, r, None).log_softmax(-1)
            logp = logp.gather(-1, targets[..., None])[..., 0].mean((1, 2))  # [B]
        return float((adv * logp).sum())

    assert objective(m.network.experts[0]) > objective(before) + 1e-4


def test_crpo_is_dpo_on_best_and_worst_plus_the_chosen_samples_nll(tiny_parts, caption_loader):
    """TangoFlux's CRPO loss, for an LM: DPO on the best and the worst rollout of each fresh
    group, plus the chosen rollouts' negative log-likelihood per token. At the first update
    the policy is its reference, so every DPO margin is 0 and DPO's part is log 2."""
    m = module(tiny_parts, strategy="crpo", ppo_epochs=1, crpo_nll_coef=0.5, group_size=4)
    rollouts = capture_rollouts(m)
    fit = trainer(1)
    fit.fit(m, train_dataloaders=caption_loader(batch_size=2))
    (r,) = rollouts
    best = r["rewards"].view(2, 4).argmax(1) + torch.tensor([0, 4])  # rows of the winners
    targets = r["codes"][best][:, m.codebooks]  # [2, 2, T]
    with torch.no_grad():
        logp = m._logits(m.reference_experts(), r, best).log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None])[..., 0].mean((1, 2)).mean()
    expected = math.log(2.0) + 0.5 * float(nll)
    assert float(fit.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(fit.callback_metrics["train/chosen_nll"]) == pytest.approx(float(nll), rel=1e-5)


def test_the_default_optimizer_is_the_old_adamw_over_the_policy_alone(tiny_parts):
    network, codec, text = tiny_parts
    m = AlignModule(
        network=network,
        codec=codec,
        text_encoder=text,
        reward=LoudnessReward(),
    )
    opt = m.configure_optimizers()
    assert type(opt) is torch.optim.AdamW
    assert (opt.defaults["lr"], opt.defaults["betas"], opt.defaults["weight_decay"]) == (
        1e-5,
        (0.9, 0.95),
        0.0,
    )
    given = {id(p) for g in opt.param_groups for p in g["params"]}
    assert given == {id(p) for p in network.experts[0].parameters()}
