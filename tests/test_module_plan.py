"""A planned run's `PretrainModule(plan=...)`: in-loop generation plans each caption at its clip's
length with the planner and guidance named there (so the audio-sample callback works on a planned
LM), a bad plan fails with one message, and `siren export` writes the plan into the export's
generation.json, keeping the sampling a file there already chose."""

import json
from types import SimpleNamespace

import pytest
import torch
from siren_testing import TableCodec, make_model, make_planned_model, make_planner_checkpoint

from siren_lightning import export
from siren_lightning.callbacks.samples import AudioSamplesCallback
from siren_lightning.data.loudness import guidance_curve, pad_curves
from siren_lightning.generation_config import (
    GENERATION_FILE,
    GenerationConfigError,
    model_plan,
    write_generation_config,
)
from siren_lightning.generation_config import main as set_sampling
from siren_lightning.models.sampling import DEFAULT_SAMPLING, generate_for_captions
from siren_lightning.stages.planner import plan_curves
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text import TextEncoder

CAPTIONS = ["a high beep twice", "a low hum fading out"]


@pytest.fixture(scope="module")
def text():
    return TextEncoder("minilm")


def _module(tmp_path, text, plan=None, model=None):
    model = model or make_planned_model(text_dim=384)
    (tmp_path / "loud").mkdir(exist_ok=True)
    torch.save({"c0": torch.rand(9)}, tmp_path / "loud" / "train.pt")
    return PretrainModule(
        model,
        text_encoder=text,
        codec=TableCodec(model.codebook_table.clone()),
        caption_dropout=0.0,
        control_cache=str(tmp_path / "loud"),
        plan=plan,
    )


def test_in_loop_generation_plans_each_caption_at_its_clips_length(tmp_path, text):
    planner = make_planner_checkpoint(tmp_path / "planner.ckpt", text_dim=384, spread=0.5)
    plan = {"planner": str(tmp_path / "planner.ckpt"), "control_scale": 1.5}
    module = _module(tmp_path, text, {**plan, "control_guidance": "steady"})
    frames = torch.tensor([5, 7])
    codes = module.sample_codes(CAPTIONS, 7, seed=3, total_frames=frames)

    # By hand: the planner's curve for each caption at its own length, zero-padded to 7 frames,
    # and its steady copy for guidance.
    curves = plan_curves(planner, text, CAPTIONS, [5, 7])
    steady = [guidance_curve(c, "steady") for c in curves]
    model = module.network.eval()

    def by_hand(contrast):
        return generate_for_captions(
            model,
            text,
            CAPTIONS,
            7,
            generator=torch.Generator().manual_seed(3),
            total_frames=frames,
            control=pad_curves(curves, 7),
            control_contrast=pad_curves(contrast, 7),
            control_scale=1.5,
            **DEFAULT_SAMPLING,  # what sample_codes draws with when no sampling is given
        )

    assert torch.equal(codes, by_hand(steady))
    reversed_ = [guidance_curve(c, "reversed") for c in curves]
    assert not torch.equal(codes, by_hand(reversed_))  # the plan's guidance kind is the one used

    # The audio-sample callback needs nothing more for a planned LM: it logs those codes' audio.
    logged = {}
    writer = SimpleNamespace(
        add_audio=lambda tag, audio, step, rate: logged.__setitem__(tag, audio),
        add_figure=lambda *a: None,
    )
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        global_step=4,
        loggers=[SimpleNamespace(experiment=writer)],
    )
    hop = module.codec.hop_length
    callback = AudioSamplesCallback(captions=CAPTIONS, seconds=7 * hop / module.codec.sample_rate)
    callback.on_validation_epoch_end(trainer, module)
    whole = module.sample_codes(CAPTIONS, 7, seed=0)  # each curve 7 frames long
    audio = module.codec.decode(whole)[:, 0]
    assert callback.logged == [4]
    for i, caption in enumerate(CAPTIONS):
        assert torch.equal(logged[f"samples/{i}: {caption}"][0], audio[i].clamp(-1, 1))


def test_a_planned_lm_without_a_plan_and_a_bad_plan_each_say_one_thing(tmp_path, text):
    module = _module(tmp_path, text)
    with pytest.raises(ValueError, match="give the module a `plan`"):
        module.sample_codes(CAPTIONS, 4)
    make_planner_checkpoint(tmp_path / "planner.ckpt", text_dim=384)
    planner = str(tmp_path / "planner.ckpt")
    with pytest.raises(ValueError, match="the LM takes no per-frame control"):
        PretrainModule(make_model(text_dim=384), caption_dropout=0.0, plan={"planner": planner})
    with pytest.raises(FileNotFoundError, match="plan.planner .*none.ckpt does not exist"):
        _module(tmp_path, text, {"planner": str(tmp_path / "none.ckpt")})
    with pytest.raises(GenerationConfigError, match=r"unknown plan key\(s\) \['scale'\]"):
        _module(tmp_path, text, {"planner": planner, "scale": 2})
    with pytest.raises(GenerationConfigError, match="control_guidance must be one of"):
        _module(tmp_path, text, {"planner": planner, "control_guidance": "upside-down"})


def test_export_names_the_runs_plan_and_keeps_chosen_sampling(tmp_path, text):
    (tmp_path / "plans").mkdir()
    make_planner_checkpoint(tmp_path / "plans" / "p.ckpt", text_dim=384)
    plan = {"planner": str(tmp_path / "plans" / "p.ckpt"), "control_scale": 2.0}
    module = _module(tmp_path, text, plan)
    blob = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(blob)
    torch.save(blob, tmp_path / "run.ckpt")

    out = export.export_checkpoint(tmp_path / "run.ckpt", tmp_path / "exports" / "model")
    written = json.loads((out / GENERATION_FILE).read_text())
    assert written["sampling"] == {}
    assert written["plan"] == {"planner": "../../plans/p.ckpt", "control_scale": 2.0}
    found = model_plan(out)
    assert found.planner.resolve() == (tmp_path / "plans" / "p.ckpt").resolve()
    assert (found.control_scale, found.control_guidance) == (2.0, "reversed")

    # New sampling keeps the plan; a re-export keeps the sampling chosen meanwhile.
    argv = [str(out), "--temperature", "0.2", "--chosen-on", "val, 10 clips"]
    assert set_sampling(argv) == 0
    assert json.loads((out / GENERATION_FILE).read_text())["plan"] == written["plan"]
    write_generation_config(out, {"temperature": 0.3}, "val, 20 clips")  # plan removed
    export.export_checkpoint(tmp_path / "run.ckpt", out)
    again = json.loads((out / GENERATION_FILE).read_text())
    assert again["sampling"] == {"temperature": 0.3} and again["plan"] == written["plan"]
    assert again["chosen_on"].startswith("val, 20 clips; plan: the training run's")

    # A run without a plan writes no file.
    plain = PretrainModule(make_model(text_dim=384), caption_dropout=0.0)
    blob = {"state_dict": plain.state_dict()}
    plain.on_save_checkpoint(blob)
    torch.save(blob, tmp_path / "plain.ckpt")
    assert not (
        export.export_checkpoint(tmp_path / "plain.ckpt", tmp_path / "p") / GENERATION_FILE
    ).exists()
