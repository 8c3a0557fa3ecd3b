"""Alignment of an LM that follows a per-frame plan (`control_dim` > 0): rollouts are drawn under
the planner's curve for each caption, with the plan's control guidance, and the update scores
the codes under exactly the distribution they were drawn from."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from siren_testing import (
    HashTextEncoder,
    TableCodec,
    make_model,
    make_planned_model,
    make_planner_checkpoint,
)

from siren_lightning.align.heldout import group_logits
from siren_lightning.align.rewards import LoudnessReward
from siren_lightning.models.sampling import generate
from siren_lightning.stages.align import AlignModule, RolloutConfig
from siren_lightning.stages.planner import CaptionPlan

CAPTIONS = ["a loud low hum", "two quiet beeps"]
LEVELS = {"spread": 0.3, "level": 0.6}  # curves that vary enough to move greedy draws


@pytest.mark.parametrize("control_scale", [0.0, 1.5])
def test_teacher_forced_logits_under_the_plan_are_what_the_sampler_drew_from(
    tmp_path, control_scale
):
    network, text = make_planned_model(), HashTextEncoder(12)
    planner = make_planner_checkpoint(tmp_path / "planner.ckpt", **LEVELS)
    plan = CaptionPlan(planner, text, scale=control_scale, guidance="reversed")
    arguments = plan.controls(CAPTIONS, 12)
    control, contrast = arguments["control"], arguments.get("control_contrast")  # [2, 12, 1]
    assert (contrast is None) == (control_scale == 0)
    prompts, empty = text.encode(CAPTIONS), text.encode([""])
    guidance = {"control": control, "control_contrast": contrast, "control_scale": control_scale}
    codes = generate(
        network,
        prompts.states,
        prompts.mask,
        12,
        uncond_states=empty.states,
        uncond_mask=empty.mask,
        cfg_scale=3.0,
        temperature=0.0,  # greedy: every code is the argmax of the logits it was drawn from
        **guidance,
    )
    experts = {k: network.experts[k] for k in (0, 2)}
    args = (network, experts, codes, prompts.states, prompts.mask)
    kwargs = {"uncond": (empty.states, empty.mask), "cfg_scale": 3.0}
    with torch.no_grad():
        logits = group_logits(*args, **kwargs, **guidance)
        planless = group_logits(*args, **kwargs, control=1 - control)
    assert torch.equal(logits.argmax(-1), codes[:, [0, 1, 4, 5]])
    assert not torch.equal(planless.argmax(-1), codes[:, [0, 1, 4, 5]])  # the plan is read
    if control_scale:  # and so is the guidance copy
        unguided = group_logits(*args, **kwargs, control=control)
        assert not torch.equal(unguided.argmax(-1), codes[:, [0, 1, 4, 5]])


def test_rollouts_follow_each_captions_plan_and_an_update_trains_the_policy(
    tmp_path, caption_loader
):
    network, text = make_planned_model(), HashTextEncoder(12)
    codec = TableCodec(network.codebook_table.clone())
    planner = make_planner_checkpoint(tmp_path / "planner.ckpt", **LEVELS)
    rollout = RolloutConfig(group_size=3, seconds=0.16, control_scale=1.5)
    module = AlignModule(
        network=network,
        codec=codec,
        text_encoder=text,
        reward=LoudnessReward(),
        rollout=rollout,
        planner=str(tmp_path / "planner.ckpt"),
    )
    r = module.rollout(CAPTIONS)
    arguments = CaptionPlan(planner, text, 1.5).controls(CAPTIONS, 16)
    curves, contrast = arguments["control"], arguments["control_contrast"]
    assert torch.equal(r["control"]["control"], curves.repeat_interleave(3, 0))
    assert torch.equal(r["control"]["control_contrast"], contrast.repeat_interleave(3, 0))
    assert r["control"]["control_scale"] == 1.5
    before = {k: v.clone() for k, v in module.network.experts[0].state_dict().items()}
    L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, train_dataloaders=caption_loader())
    after = module.network.experts[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_planned_lm_needs_its_planner_and_a_plain_one_takes_none(tmp_path):
    text = HashTextEncoder(12)
    codec = TableCodec(make_model().codebook_table.clone())
    kwargs = {"codec": codec, "text_encoder": text, "reward": LoudnessReward()}
    with pytest.raises(ValueError, match="give planner"):
        AlignModule(network=make_planned_model(), **kwargs)
    make_planner_checkpoint(tmp_path / "planner.ckpt", **LEVELS)
    with pytest.raises(ValueError, match="takes no control"):
        AlignModule(network=make_model(), planner=str(tmp_path / "planner.ckpt"), **kwargs)
    with pytest.raises(ValueError, match="not found"):
        AlignModule(network=make_planned_model(), planner=str(tmp_path / "none.ckpt"), **kwargs)


def test_the_report_grades_both_rows_under_the_plan(tmp_path):
    # `report.compare(plan=)`: every clip is generated under its caption's planned curve at its
    # own duration, with the plan's control guidance, as `score_model` does given those curves.
    import copy

    import soundfile as sf

    from siren_lightning.align import report
    from siren_lightning.data.manifest import Clip
    from siren_lightning.text_following import score_model

    network, text = make_planned_model(), HashTextEncoder(12)
    codec = TableCodec(network.codebook_table.clone())
    planner = make_planner_checkpoint(tmp_path / "planner.ckpt", **LEVELS)
    plan = CaptionPlan(planner, text, scale=1.5, guidance="reversed", source="p.ckpt")
    stated = {"pitch": "low", "count": "once", "envelope": "steady"}
    clips = [
        Clip(f"c{i}", tmp_path / "x.wav", [c], duration=0.2 + 0.1 * i, attributes=stated)
        for i, c in enumerate(["a hum", "a beep", "two clicks"])
    ]
    after = copy.deepcopy(network)
    with torch.no_grad():
        for p in after.experts[0].heads.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    out = report.compare(
        {"before": network, "after": after},
        network,
        [0],
        text,
        codec,
        clips,
        tmp_path / "report",
        seeds=[0],
        batch_size=2,
        kl_clips=2,
        kl_seconds=0.3,
        plan=plan,
    )
    assert out["plan"] == {"planner": "p.ckpt", "scale": 1.5, "guidance": "reversed"}
    table = (tmp_path / "report" / "report.md").read_text()
    assert "under the planner's curves (p.ckpt), control guidance 1.5 (reversed copy)" in table
    assert out["rows"]["after"]["kl_ref"]["mean"] > 0
    frames = [20, 30, 40]  # 0.2, 0.3, 0.4 s at 100 frames a second (1600 Hz, hop 16)
    curves = plan.curves([c.captions[0] for c in clips], frames)
    controls = {c.id: k[:, 0] for c, k in zip(clips, curves, strict=True)}
    score_model(
        network,
        text,
        codec,
        clips,
        tmp_path / "hand",
        [0],
        None,
        2,
        None,
        controls,
        "reversed",
        1.5,
    )
    planless = {c.id: torch.zeros(n) for c, n in zip(clips, frames, strict=True)}
    score_model(network, text, codec, clips, tmp_path / "flat", [0], None, 2, None, planless)
    for c in clips:
        graded = sf.read(str(tmp_path / "report" / "before" / "seed0" / f"{c.id}.wav"))[0]
        assert (graded == sf.read(str(tmp_path / "hand" / "seed0" / f"{c.id}.wav"))[0]).all()
    assert any(
        not (
            sf.read(str(tmp_path / "report" / "before" / "seed0" / f"{c.id}.wav"))[0]
            == sf.read(str(tmp_path / "flat" / "seed0" / f"{c.id}.wav"))[0]
        ).all()
        for c in clips
    )
