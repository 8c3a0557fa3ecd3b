"""`siren predict`: `PretrainModule.predict_step` makes each manifest clip's caption at the clip's
duration (planned for a planned LM), seeded by the run's seed and the batch, and
`AudioPredictionWriter`, which `siren predict` adds when the config names no writer, saves each
as a WAV with its record."""

import json

import lightning as L
import pytest
import soundfile as sf
import torch
from siren_testing import TableCodec, make_model, make_planned_model, make_planner_checkpoint

from siren_lightning.callbacks.predictions import AudioPredictionWriter
from siren_lightning.cli import add_prediction_writer
from siren_lightning.codec.base import seconds_to_frames
from siren_lightning.data.datasets import CaptionDataset, collate_captions
from siren_lightning.data.manifest import Clip
from siren_lightning.data.resumable import mix_seed
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text import TextEncoder

CLIPS = [
    Clip(id="a", audio="a.wav", captions=["a high beep twice"], duration=0.05),
    Clip(id="b", audio="b.wav", captions=["a low hum"], duration=None),  # predict_seconds
    Clip(id="c", audio="c.wav", captions=["three clicks"], duration=0.13),
]


@pytest.fixture(scope="module")
def text():
    return TextEncoder("minilm")


def _module(text, planned_with=None):
    model = make_model(text_dim=384) if planned_with is None else make_planned_model(text_dim=384)
    extra = {}
    if planned_with is not None:
        torch.save({"a": torch.rand(9)}, planned_with.parent / "loud.pt")
        extra = {"control_cache": str(planned_with.parent), "plan": {"planner": str(planned_with)}}
    return PretrainModule(
        model,
        text_encoder=text,
        codec=TableCodec(model.codebook_table.clone()),
        caption_dropout=0.0,
        predict_seconds=0.08,
        predict_sampling={"temperature": 0.5},
        **extra,
    )


def _predict(module, out, batch_size=2):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    add_prediction_writer(trainer)
    trainer.callbacks[-1].out_dir = str(out)
    loader = torch.utils.data.DataLoader(
        CaptionDataset(CLIPS, train=False), batch_size=batch_size, collate_fn=collate_captions
    )
    return trainer.predict(module, dataloaders=loader)


@pytest.mark.parametrize("planned", [False, True])
def test_each_clip_is_made_at_its_duration_and_written_with_its_record(
    tmp_path, text, monkeypatch, planned
):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    planner = None
    if planned:
        make_planner_checkpoint(tmp_path / "p.ckpt", text_dim=384)
        planner = tmp_path / "p.ckpt"
    module = _module(text, planner)
    out = _predict(module, tmp_path / "out")
    codec = module.codec
    records = [
        json.loads(x) for x in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    seconds = [0.05, 0.08, 0.13]  # b has no duration: predict_seconds
    frames = [seconds_to_frames(s, codec.sample_rate, codec.hop_length) for s in seconds]
    for batch_idx, (first, last) in enumerate([(0, 2), (2, 3)]):
        # By hand: the batch's captions at its longest clip, each told its own length, with the
        # seed of (run seed, batch), under the module's predict sampling, cut to each clip.
        seed = mix_seed(11, 0, batch_idx, 0)
        assert out[batch_idx]["seed"] == seed
        captions = [c.captions[0] for c in CLIPS[first:last]]
        told = torch.tensor(frames[first:last])
        codes = module.sample_codes(
            captions, int(told.max()), seed=seed, total_frames=told, temperature=0.5
        )
        with torch.no_grad():
            audio = codec.decode(codes)[:, 0]
        for i, k in enumerate(range(first, last)):
            n = round(seconds[k] * codec.sample_rate)  # cut to the duration, as siren generate
            assert torch.equal(out[batch_idx]["audio"][i], audio[i, :n])
            wav, rate = sf.read(records[k]["path"], dtype="float32")
            assert rate == codec.sample_rate and wav.shape == (n,)
            assert abs(wav - audio[i, :n].numpy()).max() <= 1 / 32767  # PCM_16 rounding
            assert records[k]["seconds"] == seconds[k] and records[k]["seed"] == seed
            assert records[k]["temperature"] == 0.5 and records[k]["caption"] == captions[i]
            assert records[k]["control"] == (str(planner) if planned else None)
    assert not torch.equal(out[0]["audio"][0][:800], out[1]["audio"][0][:800])
    # The same seed and batches: the same audio.
    again = _predict(module, tmp_path / "again")
    assert all(torch.equal(x, y) for x, y in zip(out[1]["audio"], again[1]["audio"], strict=True))


def test_a_configured_writer_is_kept_and_bad_settings_are_refused(text):
    trainer = L.Trainer(logger=False, callbacks=[AudioPredictionWriter("x")])
    add_prediction_writer(trainer)
    writers = [c for c in trainer.callbacks if isinstance(c, AudioPredictionWriter)]
    assert [w.out_dir for w in writers] == ["x"]
    with pytest.raises(ValueError, match="predict_seconds must be positive"):
        PretrainModule(make_model(text_dim=384), caption_dropout=0.0, predict_seconds=0)
    with pytest.raises(ValueError, match="predict_sampling: top_p must be in"):
        PretrainModule(make_model(text_dim=384), caption_dropout=0.0, predict_sampling={"top_p": 2})


def test_siren_predict_writes_each_clip_without_holding_them(tmp_path, monkeypatch):
    # The real entry point on the tiny recipe's YAMLs (untrained weights: plumbing, not quality).
    from pathlib import Path

    from siren_lightning import cli
    from siren_lightning.data.manifest import write_manifest

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the YAMLs name the committed codec by a relative path
    write_manifest(tmp_path / "m.jsonl", CLIPS)
    seen = {}
    real = L.Trainer.predict

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "predict", spy)
    argv = ["predict", "--config", "experiments/siren_tiny.yaml"]
    argv += ["--config", "experiments/siren_tiny_clean.yaml"]
    argv += ["--data.init_args.predict_manifest", str(tmp_path / "m.jsonl")]
    argv += ["--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false"]
    argv += ["--model.init_args.predict_seconds", "0.2"]
    assert cli.main(argv) == 0
    assert seen["return_predictions"] is False  # the writer keeps them; memory stays flat
    out = tmp_path / "run" / "predictions"
    lines = (out / "generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    lengths = [sf.info(str(out / f"{r['id']}.wav")).frames for r in records]
    assert lengths == [800, 3200, 2080]  # 0.05 s, 0.2 s (predict_seconds), 0.13 s at 16 kHz
