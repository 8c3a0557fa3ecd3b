import json
from pathlib import Path

import lightning as L
import pytest
import soundfile as sf
import torch
from delay_testing import make_delay_model
from siren_testing import TableCodec, make_model

from siren_lightning import export, generate  # noqa: E402
from siren_lightning.stages.pretrain import PretrainModule  # noqa: E402
from siren_lightning.text import TextEncoder  # noqa: E402


@pytest.fixture(scope="module", params=["siren", "delay"])
def exported(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    build = make_model if request.param == "siren" else make_delay_model
    network = build(text_dim=384)
    codec = TableCodec(network.codebook_table.clone())
    module = PretrainModule(
        network, text_encoder=TextEncoder("minilm"), codec=codec, warmup_steps=1, total_steps=2
    )
    batch = {
        "codes": torch.randint(16, (2, 6, 5)),
        "mask": torch.ones(2, 5, dtype=torch.bool),
        "captions": ["a high beep", "a low hum"],
    }
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(tmp / "last.ckpt")
    folder = export.export_checkpoint(tmp / "last.ckpt", tmp / "model")
    return module, codec, folder, tmp


def test_export_round_trips_without_lightning(exported):
    module, _, folder, _ = exported
    model, sidecar = export.load_lm(folder)
    assert type(model) is type(module.network)
    assert sidecar["model_class"] == type(module.network).__name__
    assert sidecar["text_encoder"]["backend"] == "minilm"
    assert sidecar["text_encoder"]["name_or_path"] is None  # the installed package, portable
    assert sidecar["model_config"] == module.network.config.to_dict()
    module.network.eval()
    for k, v in module.network.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    text = module.text_encoder.encode(["a high beep"])
    codes = torch.randint(16, (1, 6, 4))
    torch.testing.assert_close(
        model(codes, text.states, text.mask).logits,
        module.network(codes, text.states, text.mask).logits,
    )


def test_load_lm_reads_a_checkpoint_as_its_export_and_names_what_it_cannot_read(exported, tmp_path):
    module, _, folder, tmp = exported
    from_ckpt, record = export.load_lm(tmp / "last.ckpt")
    from_folder, sidecar = export.load_lm(folder)
    assert type(from_ckpt) is type(from_folder) is type(module.network)
    assert not from_ckpt.training and not from_folder.training
    assert record["model_config"] == sidecar["model_config"]
    assert record["codec_sha256"] == sidecar["codec_sha256"]
    ckpt_state, folder_state = from_ckpt.state_dict(), from_folder.state_dict()
    assert ckpt_state.keys() == folder_state.keys() == module.network.state_dict().keys()
    for k, v in module.network.state_dict().items():  # the `network.` prefix stripped once
        assert torch.equal(ckpt_state[k], v) and torch.equal(folder_state[k], v), k
    # into: the weights go into a given LM of the same architecture
    fresh = type(module.network)(module.network.config)
    loaded, _ = export.load_lm(tmp / "last.ckpt", into=fresh)
    assert loaded is fresh and torch.equal(
        fresh.state_dict()["codebook_table"], module.network.state_dict()["codebook_table"]
    )
    with pytest.raises(FileNotFoundError, match=r"load_lm: .*nowhere is neither a folder"):
        export.load_lm(tmp_path / "nowhere")
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(export.ExportError, match="holds no 'network.' weights"):
        export.load_lm(tmp_path / "other.ckpt")


def test_half_export_stores_float16_and_loads_the_rounded_weights(exported, tmp_path):
    module, _, _, tmp = exported
    folder = export.export_checkpoint(tmp / "last.ckpt", tmp_path / "half", half=True)
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    model, sidecar = export.load_lm(folder)
    assert sidecar["dtype"] == "float16"
    for k, v in module.network.state_dict().items():  # fp32 model, fp16-rounded values
        loaded = model.state_dict()[k]
        assert loaded.dtype == v.dtype and torch.equal(loaded, v.half().to(v.dtype)), k


def test_export_errors_name_the_file(tmp_path):
    with pytest.raises(export.ExportError, match="not found"):
        export.export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert export.main([str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "o")]) == 1
    with pytest.raises(export.ExportError, match="has no config.json"):
        export.load_lm(tmp_path)


def test_generate_tool_writes_wavs_and_records(exported, monkeypatch):
    _, codec, folder, tmp = exported
    monkeypatch.setattr(generate, "_load_codec", lambda spec: codec)
    captions = tmp / "captions.txt"
    captions.write_text("a high beep twice\n\na low hum fading out\n")
    outs = []
    for run in ("a", "b"):
        argv = [
            "--model",
            str(folder),
            "--captions-file",
            str(captions),
            "--out",
            str(tmp / run),
            "--codec",
            "stand-in",
            "--seconds",
            "0.1",
            "--seed",
            "3",
            "--top-k",
            "8",
        ]
        assert generate.main(argv) == 0
        outs.append(tmp / run)
    records = [
        json.loads(line) for line in (outs[0] / "generations.jsonl").read_text().splitlines()
    ]
    assert [r["caption"] for r in records] == ["a high beep twice", "a low hum fading out"]
    assert records[0]["seed"] == 3 and records[0]["top_k"] == 8 and records[0]["cfg_scale"] == 3.0
    for r in records:
        audio, sr = sf.read(r["path"])
        assert sr == 1600 and audio.shape == (10 * 16,) and abs(audio).max() > 0
        again, _ = sf.read(outs[1] / Path(r["path"]).name)
        assert (audio == again).all()  # same seed, same audio


def test_generate_takes_the_first_captions_of_a_manifest(exported, monkeypatch, synthcaps_small):
    from siren_lightning.data.manifest import read_manifest

    _, codec, folder, tmp = exported
    monkeypatch.setattr(generate, "_load_codec", lambda spec: codec)
    argv = ["--model", str(folder), "--manifest", str(synthcaps_small["test"]), "--limit", "2"]
    argv += ["--out", str(tmp / "m"), "--codec", "stand-in", "--seconds", "0.1"]
    assert generate.main(argv) == 0
    lines = (tmp / "m" / "generations.jsonl").read_text().splitlines()
    clips = read_manifest(synthcaps_small["test"])
    assert [json.loads(x)["caption"] for x in lines] == [c.captions[0] for c in clips[:2]]


def test_manifest_generations_are_named_by_clip_id_and_pair_in_evaluate(
    exported, monkeypatch, synthcaps_small
):
    from siren_lightning.data.manifest import read_manifest
    from siren_lightning.metrics import protocol

    _, codec, folder, tmp = exported
    monkeypatch.setattr(generate, "_load_codec", lambda spec: codec)
    out = tmp / "by_id"
    # Shorter stated durations, so the stand-in model (64 frames at most) can match them.
    manifest = tmp / "short.jsonl"
    lines = []
    for i, clip in enumerate(read_manifest(synthcaps_small["test"])[:6]):
        entry = {"id": clip.id, "audio": str(clip.audio), "captions": clip.captions}
        lines.append(json.dumps({**entry, "duration": 0.2 + 0.05 * i}))
    manifest.write_text("\n".join(lines) + "\n")
    argv = ["--model", str(folder), "--manifest", str(manifest), "--limit", "5"]
    argv += ["--out", str(out), "--codec", "stand-in", "--match-durations", "--batch-size", "3"]
    assert generate.main(argv) == 0
    clips = read_manifest(manifest)[:5]
    ids = [c.id for c in clips]
    assert sorted(p.stem for p in out.glob("*.wav")) == sorted(ids)
    for clip in clips:  # each as long as its stated duration
        assert sf.info(str(out / f"{clip.id}.wav")).frames == round(clip.duration * 1600)
    records = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ids and all(
        Path(r["path"]).stem == r["id"] for r in records
    )
    # `siren evaluate` pairs every generated file with its manifest reference by id.
    argv = ["--generated", str(out), "--reference", str(manifest)]
    assert protocol.main(argv + ["--out", str(tmp / "by_id.json")]) == 0
    counts = json.loads((tmp / "by_id.json").read_text())["counts"]
    assert counts["generated"] == counts["reference"] == counts["paired"] == 5
    assert counts["clap_scored"] == 5


def test_match_durations_needs_a_manifest(exported, capsys):
    _, _, folder, tmp = exported
    argv = ["--model", str(folder), "--captions", "a beep", "--out", str(tmp / "x")]
    assert generate.main(argv + ["--match-durations"]) == 2
    assert "--match-durations needs --manifest" in capsys.readouterr().out


def test_generate_audio_refuses_ids_that_are_not_file_names(exported, tmp_path):
    module, codec, _, _ = exported
    with pytest.raises(ValueError, match="unique file names"):
        generate.generate_audio(
            module.network, module.text_encoder, codec, ["a", "b"], tmp_path, ids=["x", "x"]
        )
    with pytest.raises(ValueError, match="unique file names"):
        generate.generate_audio(
            module.network, module.text_encoder, codec, ["a"], tmp_path, ids=["../up"]
        )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--temperature", "-0.5", "temperature must be >= 0 (0 samples greedily), got -0.5"),
        ("--top-p", "1.5", "top_p must be in (0, 1] (1: off), got 1.5"),
        ("--top-p", "0", "top_p must be in (0, 1] (1: off), got 0.0"),
        ("--top-k", "-1", "top_k must be an integer >= 0 (0: off), got -1"),
        ("--cfg-scale", "nan", "cfg_scale must be finite, got nan"),
        ("--limit", "-1", "--limit must be >= 1, got -1"),
        ("--seconds", "0", "--seconds must be positive, got 0.0"),
    ],
)
def test_nonsense_sampling_values_fail_before_the_model_loads(
    tmp_path, capsys, flag, value, message
):
    from siren_lightning import cli

    # the model folder does not exist: an error about the value proves nothing was loaded
    argv = ["generate", "--model", str(tmp_path / "none"), "--captions", "a", "b"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), flag, value]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"siren generate: error: {message}"
    assert not (tmp_path / "out").exists()


def test_align_report_checks_its_values_before_loading(tmp_path, capsys):
    from siren_lightning import cli

    argv = ["align-report", "--before", "x", "--after", "y", "--manifest", "m", "--out", "o"]
    assert cli.main([*argv, "--limit", "-3"]) == 1
    assert "siren align-report: error: --limit must be >= 1, got -3" in capsys.readouterr().err
    assert cli.main([*argv, "--top-k", "-2"]) == 1
    assert "siren align-report: error: top_k must be an integer >= 0" in capsys.readouterr().err


def test_an_export_names_its_codec_so_that_generate_works_from_another_folder(
    tmp_path, monkeypatch, capsys
):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # train and export where the codec's relative path is valid
    network = make_model(num_codebooks=12, codebook_size=1024, latent_dim=128, text_dim=384)
    module = PretrainModule(network, codec="assets/codec_tiny", caption_dropout=0.0)
    module.setup("fit")  # copies the codec's table into the LM
    blob = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(blob)
    assert blob["siren"]["codec"] == "assets/codec_tiny"
    torch.save(blob, tmp_path / "run.ckpt")
    folder = export.export_checkpoint(tmp_path / "run.ckpt", tmp_path / "model")
    sidecar = json.loads((folder / export.SIDECAR).read_text())
    assert sidecar["codec"] == str(repo / "assets" / "codec_tiny")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = ["--model", str(folder), "--captions", "a beep", "--out", "out", "--seconds", "0.1"]
    assert generate.main(argv) == 0
    assert sf.info(str(elsewhere / "out" / "00000.wav")).samplerate == 16_000
    # an older export with the relative path: found beside the export, or one clear error
    (folder / export.SIDECAR).write_text(json.dumps({**sidecar, "codec": "codec_dir"}))
    capsys.readouterr()
    assert generate.main(argv) == 1  # one message, no traceback
    assert "relative path 'codec_dir', found neither" in capsys.readouterr().out
    (folder / "codec_dir").symlink_to(repo / "assets" / "codec_tiny")
    assert export.exported_codec({"codec": "codec_dir"}, folder) == str(folder / "codec_dir")
