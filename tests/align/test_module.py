import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from siren_lightning.align.module import AlignModule
from siren_lightning.align.rewards import LoudnessReward


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
    network, codec, text = parts
    defaults = dict(
        group_size=4, seconds=0.16, eval_every_n_steps=0, lr=1e-2, reward=LoudnessReward()
    )
    return AlignModule(network=network, codec=codec, text_encoder=text, **{**defaults, **kwargs})


@pytest.mark.parametrize("strategy", ["grpo", "dpo"])
def test_an_update_changes_only_the_policy(tiny_parts, caption_loader, strategy):
    m = module(tiny_parts, policy_groups=[1], strategy=strategy, ppo_epochs=2)
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
        rollout_sampling={"cfg_scale": cfg_scale},
        group_size=8,
        lr=1e-2,
        kl_coef=0.01,
    )
    start = mean_reward(m)  # about -7.7 dB, std 0.5 dB over the 8 x 8 clips
    trainer(30).fit(m, train_dataloaders=caption_loader(batch_size=2))
    end = mean_reward(m)
    assert end > start + 1.0, (start, end)  # dB


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_teacher_forced_guided_logits_are_what_the_sampler_drew_from(tiny_parts, cfg_scale):
    from siren_lightning.align.heldout import group_logits
    from siren_lightning.models.sampling import generate

    network, _, text = tiny_parts
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
        module(tiny_parts, rollout_sampling={"top_k": 50})


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
