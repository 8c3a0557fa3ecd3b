import copy
import json

import lightning as L
import pytest
import soundfile as sf
import torch

from siren_lightning.align import report
from siren_lightning.align.heldout import evaluate_policy, heldout_clips
from siren_lightning.align.rewards import LoudnessReward, TinyCLAPReward
from siren_lightning.callbacks.heldout import HeldoutEvaluation
from siren_lightning.data.datamodule import SirenDataModule
from siren_lightning.data.manifest import read_manifest
from siren_lightning.export import export_checkpoint, load_lm
from siren_lightning.stages.align import AlignModule, RolloutConfig


def perturbed(network, group=0, scale=0.5, seed=3):
    other = copy.deepcopy(network)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.experts[group].heads.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


@pytest.fixture(scope="module")
def tiny_evaluator():
    from siren_lightning.metrics.protocol import build_evaluator

    return build_evaluator("tiny", tiny_clap="tiny-clap-eval")


@pytest.mark.slow
def test_heldout_evaluation_grades_with_the_eval_clap(
    tiny_parts, synthcaps_small, tiny_evaluator, tmp_path
):
    network, codec, text = tiny_parts
    clips = heldout_clips(read_manifest(synthcaps_small["val"]), 10)
    evaluator = tiny_evaluator
    reference = {0: copy.deepcopy(network.experts[0])}
    kwargs = dict(reward=LoudnessReward(), reference=reference, seconds=0.6)
    metrics, audio = evaluate_policy(
        network, text, codec, clips, tmp_path / "a", evaluator=evaluator, **kwargs
    )
    assert metrics["kl_ref"] == 0.0  # the policy is its reference
    for name in ("reward", "clap_score", "fd"):
        assert name in metrics and torch.isfinite(torch.tensor(metrics[name])), name
    assert len(list((tmp_path / "a").glob("*.wav"))) == 10 and len(audio) == 3
    other, _ = evaluate_policy(perturbed(network), text, codec, clips, tmp_path / "b", **kwargs)
    assert other["kl_ref"] > 0.01


def test_report_table(tiny_parts, tmp_path):
    from siren_lightning.data.manifest import Clip

    network, codec, text = tiny_parts
    stated = {"pitch": "low", "count": "once", "envelope": "steady"}
    clips = [
        Clip(f"c{i}", tmp_path / "x.wav", [c], duration=0.2 + 0.1 * i, attributes=stated)
        for i, c in enumerate(["a hum", "a beep", "two clicks", "a chirp"])
    ]
    trained = {"strategy": "grpo", "reward": LoudnessReward().provenance()}
    out = report.compare(
        {"before": network, "after": perturbed(network)},
        network,
        [0],
        text,
        codec,
        clips,
        tmp_path / "report",
        seeds=[0, 1],
        reward=LoudnessReward(),
        batch_size=2,
        kl_clips=2,
        kl_seconds=0.3,
        trained_with=trained,
    )
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = saved["rows"]
    assert rows["before"]["kl_ref"]["mean"] == 0.0 < rows["after"]["kl_ref"]["mean"]
    assert saved["clip_ids"] == ["c0", "c1", "c2", "c3"] and saved["seeds"] == [0, 1]
    assert saved["trained_with"]["reward"]["name"] == "loudness-db" == out["report_reward"]["name"]
    for key in ("adherence_mean", "adherence_pitch", "adherence_all", "reward"):
        assert len(rows["before"][key]["per_seed"]) == 2, key
    # each seed's clips are on disk at their own durations (1600 Hz codec)
    assert sf.info(str(tmp_path / "report" / "after" / "seed1" / "c3.wav")).frames == 800
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| adherence, mean of 3 (higher) |" in table and "Trained with: loudness-db" in table
    assert "CLAP score" not in table  # no evaluator: no grader rows
    # with a cache, a second report reuses each model's per-seed metrics (no new WAVs)
    kwargs = dict(seeds=[0, 1], reward=LoudnessReward(), batch_size=2, kl_clips=0)
    models = {"before": network, "after": perturbed(network)}
    first = report.compare(
        models, network, [0], text, codec, clips, tmp_path / "r1", cache=tmp_path / "c", **kwargs
    )
    again = report.compare(
        models, network, [0], text, codec, clips, tmp_path / "r2", cache=tmp_path / "c", **kwargs
    )
    assert (
        first["rows"]
        == again["rows"]
        == {k: {m: v for m, v in rows[k].items() if m != "kl_ref"} for k in rows}
    )
    assert not (tmp_path / "r2" / "before").exists() and "before_seed1_cached" in again["seconds"]
    # seeds computed apart add up to the report of both
    one = dict(kwargs, seeds=[1])
    report.compare(
        models, network, [0], text, codec, clips, tmp_path / "r3", cache=tmp_path / "d", **one
    )
    both = report.compare(
        models, network, [0], text, codec, clips, tmp_path / "r4", cache=tmp_path / "d", **kwargs
    )
    assert both["rows"] == first["rows"] and not (tmp_path / "r4" / "before" / "seed1").exists()

    # a grader retrained under the same name (other weights) gets its rows computed anew
    def graded(out: str, sha: str) -> dict:
        grader = {"clap": "tiny-clap-eval", "clap_sha256": sha}
        return report.compare(
            models, network, [0], text, codec, clips, tmp_path / out, cache=tmp_path / "e",
            grader=grader, **kwargs,
        )  # fmt: skip

    graded("r5", "0" * 64)
    assert "before_seed1_cached" in graded("r6", "0" * 64)["seconds"]
    assert "before_seed1_cached" not in graded("r7", "1" * 64)["seconds"]


def test_report_differences_by_hand():
    def row(mean, sd, seeds=3):
        return {"mean": mean, "spread": sd, "per_seed": [mean] * seeds}

    before = {"adherence_mean": row(0.40, 0.01), "fd": row(0.30, 0.01), "clap_score": row(35, 2)}
    after = {"adherence_mean": row(0.45, 0.02), "fd": row(0.40, 0.01), "clap_score": row(38, 1)}
    d = report.differences(before, after)
    # 0.05 > 2 x 0.02: better; FD up by 0.1 > 2 x 0.01: worse (lower is better); 3 < 2 x 2
    assert d["adherence_mean"]["verdict"] == "better"
    assert d["adherence_mean"]["noise"] == pytest.approx(0.04)
    assert d["fd"]["verdict"] == "worse" and d["clap_score"]["verdict"] == "within noise"
    one = report.differences(
        {"fd": row(0.3, 0.0, 1), "kl_ref": row(0, 0)},
        {"fd": row(0.4, 0.0, 1), "kl_ref": row(0.1, 0)},
    )
    assert one["fd"]["verdict"] == "one seed: no spread" and one["kl_ref"]["verdict"] == "-"


def test_report_cli_names_a_missing_model(tmp_path, capsys):
    argv = ["--before", str(tmp_path / "nope"), "--after", str(tmp_path), "--manifest", "m"]
    assert report.main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert "--before: " + str(
        tmp_path / "nope"
    ) + " is neither a folder written by siren export" in (capsys.readouterr().out)


@pytest.mark.slow
def test_fit_with_heldout_evaluation_then_export(
    tiny_parts, synthcaps_small, tiny_evaluator, tmp_path
):
    network, codec, text = tiny_parts
    data = SirenDataModule(
        train_manifest=str(synthcaps_small["train"]),
        val_manifest=str(synthcaps_small["val"]),
        mode="captions",
        sample_rate=1600,
        hop_length=16,
        crop_seconds=1.0,
        batch_size=2,
    )
    m = AlignModule(
        network=network,
        codec=codec,
        text_encoder=text,
        reward=LoudnessReward(),
        rollout=RolloutConfig(group_size=4, seconds=0.5),
        optimizer={"init_args": {"lr": 1e-2}},
    )
    heldout = HeldoutEvaluation(every_n_steps=2, num_clips=10, seconds=0.6)
    heldout._evaluator = tiny_evaluator  # built once for this file (what `evaluator()` builds)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[heldout],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, datamodule=data)
    assert [h["step"] for h in heldout.history] == [0, 2, 3]  # before, every 2, after
    assert heldout.history[0]["kl_ref"] == 0.0 < heldout.history[-1]["kl_ref"]
    assert {"clap_score", "fd", "reward"} <= set(heldout.history[-1])
    # the checkpoint exports like a stage-1 one, with the aligned weights
    ckpt = (
        trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    )
    folder = export_checkpoint(ckpt, tmp_path / "model")
    model, sidecar = load_lm(folder)
    assert sidecar["train_groups"] == [0]
    # it records the reward that trained it (and not the sampler's state)
    assert sidecar["align"]["reward"] == LoudnessReward().provenance()
    assert sidecar["align"]["grader"]["clap"] == "tiny-clap-eval"
    assert "rollout_rng" not in sidecar["align"]
    for name, value in m.network.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_the_reward_model_never_grades():
    heldout = HeldoutEvaluation(tiny_clap="tiny-clap-eval")
    with pytest.raises(ValueError, match="would grade with the reward model"):
        heldout.evaluator(TinyCLAPReward("tiny-clap-eval"))


def test_heldout_ids_that_are_not_file_names_are_refused_before_any_work(tiny_parts, tmp_path):
    """A manifest id like `../../x` would write its WAV outside the output folder."""
    network, codec, text = tiny_parts
    out = tmp_path / "run" / "heldout"
    clips = [report.HeldoutClip("fine", "a beep", tmp_path / "x.wav")]
    clips.append(report.HeldoutClip("../../escaped", "a hum", tmp_path / "x.wav"))
    with pytest.raises(ValueError, match=r"held-out evaluation: clip ids must be unique file"):
        evaluate_policy(network, text, codec, clips, out, seconds=0.1)
    assert not out.exists() and not (tmp_path / "escaped.wav").exists()
