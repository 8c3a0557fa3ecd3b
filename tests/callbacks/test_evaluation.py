"""EvaluationCallback: in-loop metrics during fit, and `siren test` writing results.json."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from siren_testing import make_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from siren_lightning import cli
from siren_lightning.callbacks.evaluation import EvaluationCallback
from siren_lightning.codec.checkpoint import load_codec
from siren_lightning.data.manifest import read_manifest
from siren_lightning.metrics import protocol
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text import TextEncoder

ROOT = Path(__file__).resolve().parents[2]
CODEC = ROOT / "assets" / "codec_tiny"

pytestmark = pytest.mark.slow


def test_in_loop_metrics_and_audio_every_n_validations(tmp_path, synthcaps_small):
    codec = load_codec(CODEC)
    network = make_model(
        num_codebooks=12, codebook_size=1024, latent_dim=128, text_dim=384, max_frames=400
    )
    network.set_codebook_table(codec.codebook_table().float())
    module = PretrainModule(network, text_encoder=TextEncoder("minilm"), codec=codec)
    batch = {
        "codes": torch.randint(1024, (2, 12, 5)),
        "mask": torch.ones(2, 5, dtype=torch.bool),
        "captions": ["a high beep", "a low hum"],
    }
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    callback = EvaluationCallback(
        val_manifest=str(synthcaps_small["val"]),
        num_clips=4,
        every_n_validations=2,
        batch_size=3,
        log_audio=2,
        log_metrics=["fd", "clap_score", "kl"],
    )
    trainer = L.Trainer(
        max_steps=3,
        val_check_interval=1,
        num_sanity_val_steps=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert callback.validations == 3 and [h["step"] for h in callback.history] == [1, 3]
    first = callback.history[0]["metrics"]
    assert first["fd"] > 0 and -100 <= first["clap_score"] <= 100 and first["fad"] is None
    assert float(trainer.callback_metrics["val/fd"]) == pytest.approx(
        callback.history[-1]["metrics"]["fd"]
    )
    events = EventAccumulator(
        str(next(tmp_path.glob("tb/*"))), size_guidance={"audio": 0, "scalars": 0}
    )
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"val/fd", "val/clap_score", "val/kl", "val_ceiling/fd"} <= set(scalars)
    assert [e.step for e in events.Scalars("val/fd")] == [1, 3]
    assert len(events.Tags()["audio"]) == 2
    # Each generated clip is as long as its reference.
    clips = read_manifest(synthcaps_small["val"])[:4]
    lengths = callback._val["lengths"]
    for clip in clips:
        info = sf.info(str(clip.audio))
        assert lengths[clip.id] == math.ceil(info.frames * codec.sample_rate / info.samplerate)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_clips"):
        EvaluationCallback(num_clips=0)
    with pytest.raises(ValueError, match="seconds"):
        EvaluationCallback(seconds=-1)
    with pytest.raises(ValueError, match="unknown evaluation preset"):
        EvaluationCallback(preset="nope")


def test_siren_test_refuses_ids_that_are_not_file_names_before_any_work(tmp_path):
    """A test manifest id like `../../x` would write its WAV outside the run folder."""
    from types import SimpleNamespace

    (tmp_path / "a.wav").write_bytes(b"")
    manifest = tmp_path / "test.jsonl"
    lines = [{"id": i, "audio": "a.wav", "caption": "a beep"} for i in ("fine", "../../escaped")]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "run" / "test"
    callback = EvaluationCallback(test_manifest=str(manifest), out_dir=str(out))
    trainer = SimpleNamespace(default_root_dir=str(tmp_path / "run"), datamodule=None)
    module = SimpleNamespace(codec=object(), device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"EvaluationCallback \(test\): clip ids must be unique"):
        callback.on_test_start(trainer, module)
    assert callback.evaluator is None and not out.exists()
    # Without WAVs to write, the ids name nothing on disk and are fine.
    quiet = EvaluationCallback(test_manifest=str(manifest), out_dir=str(out), save_audio=False)
    quiet._evaluator = lambda device: None  # the backbones are not needed to check the ids
    quiet.on_test_start(trainer, module)
    assert "../../escaped" in quiet._test["clips"]


@pytest.fixture(scope="module")
def test_cache(synthcaps_small, tmp_path_factory):
    from siren_lightning.codec.tokenize import tokenize_manifest

    out = tmp_path_factory.mktemp("codes") / "test"
    tokenize_manifest(synthcaps_small["test"], load_codec(CODEC), out, progress=False)
    return out


def test_siren_test_writes_results_with_protocol_and_ceiling(tmp_path, synthcaps_small, test_cache):
    """`siren test --config`: a random tiny Siren over the tiny codec's codes, every test clip
    generated, scored with the tiny preset, beside the codec ceiling; `siren evaluate` on the
    written WAVs gives the same numbers."""
    out = tmp_path / "eval"
    config = tmp_path / "siren.yaml"
    config.write_text(
        f"""
seed_everything: 0
trainer:
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: siren_lightning.callbacks.evaluation.EvaluationCallback
      init_args:
        test_manifest: {synthcaps_small["test"]}
        out_dir: {out}
        sampling: {{top_k: 20}}
        test_seeds: 2
model:
  class_path: siren_lightning.stages.pretrain.PretrainModule
  init_args:
    network:
      class_path: siren_lightning.models.siren.SirenLM
      init_args:
        config: {{num_codebooks: 12, codebook_size: 1024, latent_dim: 128, width: 32,
                 num_heads: 2, temporal_layers: 1, decoder_layers: 1, text_dim: 384,
                 mlp_hidden: 64}}
    text_encoder:
      class_path: siren_lightning.text.TextEncoder
      init_args: {{backend: minilm}}
    codec: {CODEC}
data:
  class_path: siren_lightning.data.datamodule.SirenDataModule
  init_args: {{mode: codes, test_cache: {test_cache}, crop_seconds: 2.0, batch_size: 8}}
"""
    )
    assert cli.main(["test", "--config", str(config)]) == 0
    results = json.loads((out / "results.json").read_text())
    n = len(read_manifest(synthcaps_small["test"]))
    assert results["preset"] == "tiny" and results["protocol"]["kl_variant"] == "softmax"
    assert results["counts"]["generated"] == results["counts"]["paired"] == n
    assert results["backbones"]["fd"]["name"] == "tiny-clap-eval"
    assert len(results["backbones"]["fd"]["weights_sha256"]) == 64
    assert results["metrics"]["fad"] is None and "VGGish" in results["unavailable"]["fad"]
    ceiling = results["codec_ceiling"]
    assert ceiling["codec_sha256"] and ceiling["counts"]["paired"] == n
    # Resynthesized ground truth is far closer to it than a random model's output.
    assert ceiling["metrics"]["fd"] < 0.5 * results["metrics"]["fd"]
    assert ceiling["metrics"]["clap_score"] > results["metrics"]["clap_score"]
    assert results["ground_truth"]["metrics"]["clap_score"] > results["metrics"]["clap_score"]
    assert results["generation"]["length_rule"] == "each reference's length"
    assert results["generation"]["codec"]["codec_sha256"] == ceiling["codec_sha256"]
    # Two generation seeds: the mean, each seed's metrics and their spread.
    first, second = (s["metrics"] for s in results["seeds"])
    for key in ("fd", "kad", "kl", "is_mean", "clap_score"):
        assert results["metrics"][key] == pytest.approx((first[key] + second[key]) / 2), key
        spread = abs(first[key] - second[key]) / 2**0.5  # sample sd of two values
        assert results["seed_spread"][key]["std"] == pytest.approx(spread), key
    assert first["fd"] != second["fd"] and results["generation"]["test_seeds"] == 2
    # Intervals of the model and ceiling rows; one per-clip row for each test clip.
    for row in (results, ceiling):
        assert set(row["intervals"]) == {"fd", "kad", "kl", "is_mean", "clap_score"}
        for name, (low, high) in row["intervals"].items():
            assert low <= high, name
    per_clip = [json.loads(x) for x in (out / "per_clip.jsonl").open()]
    assert sorted(r["id"] for r in per_clip) == sorted(
        c.id for c in read_manifest(synthcaps_small["test"])
    )
    assert all("adherence" in r and "embedding_distance" in r for r in per_clip)
    records = [json.loads(x) for x in (out / "generated" / "generations.jsonl").open()]
    assert len(records) == n and {r["top_k"] for r in records} == {20}
    for clip in read_manifest(synthcaps_small["test"]):
        audio, sr = sf.read(out / "generated" / f"{clip.id}.wav")
        assert sr == 16000 and len(audio) == sf.info(str(clip.audio)).frames
    # The same numbers from the written files (16-bit PCM: agreement to rounding).
    argv = ["--generated", str(out / "generated"), "--reference", str(synthcaps_small["test"])]
    assert protocol.main(argv + ["--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())["metrics"]
    for key in ("fd", "kad", "kl", "is_mean", "clap_score"):  # the WAVs are the first seed's
        assert again[key] == pytest.approx(first[key], rel=1e-2, abs=1e-3), key


def test_reference_clips_fall_back_to_the_manifest_recorded_in_the_code_cache(
    synthcaps_small, test_cache
):
    # `make pretrain` names only the code caches; the callbacks find the reference audio
    # through the manifest that `siren tokenize` recorded in the cache's index.
    from types import SimpleNamespace

    from siren_lightning.callbacks.evaluation import reference_clips
    from siren_lightning.data.manifest import read_manifest

    trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams={"test_cache": str(test_cache)}))
    clips = reference_clips(trainer, "test")
    expected = [c.id for c in read_manifest(synthcaps_small["test"]) if c.captions]
    assert sorted(clips) == sorted(expected) and expected
    with pytest.raises(ValueError, match="no val reference audio"):
        reference_clips(trainer, "val")
