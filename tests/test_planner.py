"""`LoudnessPlanner` / `PlannerModule` / `plan_curves`: a planner that must read its caption
to draw the curve, and the L1 it is trained by."""

import torch
from siren_testing import (
    TableCodec,
    make_planned_model,
    make_planner_checkpoint,
    make_text,
)

from siren_lightning.models.planner import LoudnessPlanner, PlannerConfig
from siren_lightning.stages.planner import PlannerModule, plan_curves

TINY = PlannerConfig(text_dim=12, width=16, num_heads=2, layers=1)


def _fit(texts: torch.Tensor, targets: torch.Tensor, steps: int = 300) -> float:
    """Trains a tiny planner on (caption states, curve) pairs; returns its final L1."""
    torch.manual_seed(0)
    planner = LoudnessPlanner(TINY)
    optimizer = torch.optim.Adam(planner.parameters(), lr=1e-2)
    mask = torch.ones(texts.shape[:2], dtype=torch.bool)
    total = torch.full((texts.shape[0],), targets.shape[1])
    for _ in range(steps):
        loss = (planner(texts, mask, total, targets.shape[1]) - targets).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss)


def test_the_planner_draws_each_captions_curve_and_cannot_without_the_caption():
    # Caption i is loud in quarter i of the clip: only the caption says which quarter.
    frames = 20
    targets = torch.zeros(4, frames, 1)
    for i in range(4):
        targets[i, 5 * i : 5 * i + 5] = 0.9
    texts = torch.randn(4, 3, 12, generator=torch.Generator().manual_seed(0))
    assert _fit(texts, targets) < 0.08
    # One caption for all four: the best is the median curve, L1 0.9 / 4 = 0.225.
    assert _fit(texts[:1].expand(4, -1, -1), targets) > 0.2


def test_the_training_loss_is_the_l1_over_real_frames(tmp_path, monkeypatch):
    torch.save({"a": torch.arange(8.0) / 10, "b": torch.ones(4)}, tmp_path / "train.pt")
    module = PlannerModule(str(tmp_path), text_dim=12, width=16, num_heads=2, layers=1)
    module.setup("fit")
    monkeypatch.setattr(
        module.planner, "forward", lambda s, m, total, t, offset: torch.full((2, t, 1), 0.5)
    )
    states, text_mask = make_text(2)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    batch = {"ids": ["a", "b"], "mask": mask, "frame_offset": torch.tensor([3, 0])}
    batch |= {"text_states": states, "text_mask": text_mask, "total_frames": torch.tensor([8, 4])}
    # Clip a's window is frames 3-7 (0.3 .. 0.7); clip b's 3 real frames are 1.
    by_hand = (sum(abs(0.5 - v / 10) for v in range(3, 8)) + 3 * 0.5) / 8
    assert abs(float(module._loss(batch)) - by_hand) < 1e-6


class _Encoder:
    dim = 12

    def encode(self, captions):
        states, mask = make_text(len(captions))
        return type("T", (), {"states": states, "mask": mask})


def test_plan_curves_gives_each_caption_its_own_length():
    planner = LoudnessPlanner(TINY).eval()
    curves = plan_curves(planner, _Encoder(), ["a", "b", "c"], [7, 3, 5], batch_size=2)
    assert [c.shape for c in curves] == [(7,), (3,), (5,)]
    assert all(((c >= 0) & (c <= 1)).all() for c in curves)


def test_siren_loudness_and_siren_plan_write_a_curve_per_clip(tmp_path, capsys):
    import lightning
    import numpy as np
    import soundfile as sf

    from siren_lightning.data.loudness import frame_loudness
    from siren_lightning.data.loudness import main as loudness_main
    from siren_lightning.data.manifest import Clip, write_manifest
    from siren_lightning.stages.planner import main as plan_main

    clips = []
    for i, seconds in enumerate((0.1, 0.25)):
        audio = 0.3 * np.sin(np.arange(int(seconds * 16000)) / 7.0).astype(np.float32)
        sf.write(str(tmp_path / f"c{i}.wav"), audio, 16000)
        clips.append(Clip(f"c{i}", tmp_path / f"c{i}.wav", [f"a tone {i}"], duration=seconds))
    write_manifest(tmp_path / "m.jsonl", clips)
    args = ["--manifest", str(tmp_path / "m.jsonl")]
    assert loudness_main([*args, "--out", str(tmp_path / "loud" / "train.pt")]) == 0
    curves = torch.load(tmp_path / "loud" / "train.pt")
    for i in range(2):
        audio, _ = sf.read(str(tmp_path / f"c{i}.wav"), dtype="float32")
        assert torch.allclose(curves[f"c{i}"], torch.from_numpy(frame_loudness(audio, 320)))
    assert [curves[f"c{i}"].shape[0] for i in range(2)] == [5, 13]  # ceil(N / 320)

    module = PlannerModule(str(tmp_path / "loud"), width=16, num_heads=2, layers=1)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(checkpoint, tmp_path / "planner.ckpt")
    plan = tmp_path / "plan.pt"
    assert plan_main(["--planner", str(tmp_path / "planner.ckpt"), *args, "--out", str(plan)]) == 0
    planned = torch.load(plan)
    assert {k: v.shape[0] for k, v in planned.items()} == {"c0": 5, "c1": 13}  # the codec's frames
    assert "2 planned curves" in capsys.readouterr().out


def test_siren_generate_follows_the_planners_curves(tmp_path, monkeypatch, capsys):
    import numpy as np
    import pytest
    import soundfile as sf

    from siren_lightning import generate

    model = make_planned_model()
    codec, encoder = TableCodec(model.codebook_table.clone()), _Encoder()
    monkeypatch.setattr(generate, "load_generation_stack", lambda *a, **k: (model, codec, encoder))
    planner = make_planner_checkpoint(tmp_path / "planner.ckpt", text_dim=12)
    argv = ["--model", str(tmp_path), "--captions", "a", "b", "--seconds", "0.1"]
    with_plan = [*argv, "--planner", str(tmp_path / "planner.ckpt")]
    assert generate.main([*with_plan, "--out", str(tmp_path / "tool")]) == 0
    assert (
        generate.main(
            [
                *with_plan,
                "--control-guidance",
                "steady",
                "--control-scale",
                "2",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    # By hand: the planner's curve of each caption over its 10 frames (0.1 s at 1600 / 16).
    text = encoder.encode(["a", "b"])
    states, mask = text.states, text.mask
    with torch.no_grad():
        curves = planner(states, mask, torch.tensor([10, 10]), 10)[..., 0].clamp(0, 1)
    planned = [curves[0][:, None], curves[1][:, None]]
    assert len({tuple(c.flatten().tolist()) for c in planned}) == 2

    def run(folder, controls, guidance=None):
        generate.generate_audio(
            model,
            encoder,
            codec,
            ["a", "b"],
            tmp_path / folder,
            seconds=0.1,
            controls=controls,
            control_guidance=guidance,
            control_scale=0.0 if guidance is None else 2.0,
        )
        return [sf.read(str(tmp_path / folder / f"{i:05d}.wav"))[0] for i in range(2)]

    tool = [sf.read(str(tmp_path / "tool" / f"{i:05d}.wav"))[0] for i in range(2)]
    guided = [sf.read(str(tmp_path / "g" / f"{i:05d}.wav"))[0] for i in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(tool, run("hand", planned), strict=True))
    assert all(
        np.array_equal(a, b) for a, b in zip(guided, run("hg", planned, "steady"), strict=True)
    )
    assert not all(np.array_equal(a, b) for a, b in zip(tool, guided, strict=True))
    other = [1 - c for c in planned]
    assert not all(np.array_equal(a, b) for a, b in zip(tool, run("other", other), strict=True))
    # One message each: guidance without a plan, a missing planner, another text width.
    with pytest.raises(ValueError, match="needs --planner"):
        generate.main([*argv, "--control-scale", "1", "--out", str(tmp_path / "x")])
    missing = [*argv, "--planner", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x")]
    assert generate.main(missing) == 2
    make_planner_checkpoint(tmp_path / "wide.ckpt", text_dim=384)
    wide = [*argv, "--planner", str(tmp_path / "wide.ckpt"), "--out", str(tmp_path / "x")]
    assert generate.main(wide) == 2
    out = capsys.readouterr().out
    assert "none.ckpt not found" in out and "text states of width 384" in out


def test_a_model_whose_generation_json_names_a_plan_follows_it_with_no_flag(
    tmp_path, monkeypatch, capsys
):
    # `siren set-sampling --planner` stores the planner relative to the model folder; `siren
    # generate --model` then plans and guides as the explicit flags would, and a flag given wins.
    import json

    import numpy as np
    import pytest
    import soundfile as sf

    from siren_lightning import generate
    from siren_lightning.generation_config import main as set_sampling

    model = make_planned_model()
    codec, encoder = TableCodec(model.codebook_table.clone()), _Encoder()
    monkeypatch.setattr(generate, "load_generation_stack", lambda *a, **k: (model, codec, encoder))
    (tmp_path / "plans").mkdir()
    make_planner_checkpoint(tmp_path / "plans" / "planner.ckpt", text_dim=12)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "siren.json").write_text("{}")  # what set-sampling checks an export folder by
    planner = str(tmp_path / "plans" / "planner.ckpt")
    plan_flags = ["--planner", planner, "--control-scale", "2", "--control-guidance", "steady"]
    assert set_sampling([str(folder), *plan_flags, "--chosen-on", "val"]) == 0
    written = json.loads((folder / "generation.json").read_text())
    assert written["plan"] == {
        "planner": "../plans/planner.ckpt",
        "control_scale": 2.0,
        "control_guidance": "steady",
    }
    argv = ["--model", str(folder), "--captions", "a", "b", "--seconds", "0.1"]

    def wavs(name, *flags):
        assert generate.main([*argv, *flags, "--out", str(tmp_path / name)]) == 0
        return [sf.read(str(tmp_path / name / f"{i:05d}.wav"))[0] for i in range(2)]

    own = wavs("own")
    assert "(the model's generation.json), control_scale 2" in capsys.readouterr().out
    record = json.loads((tmp_path / "own" / "generations.jsonl").read_text().splitlines()[0])
    assert record["control"] == str(tmp_path / "plans" / "planner.ckpt")  # the planner used
    assert (record["control_scale"], record["control_guidance"]) == (2.0, "steady")
    assert all(np.array_equal(a, b) for a, b in zip(own, wavs("flags", *plan_flags), strict=True))
    unguided = wavs("unguided", "--control-scale", "0")
    assert all(
        np.array_equal(a, b)
        for a, b in zip(unguided, wavs("flags0", "--planner", planner), strict=True)
    )
    assert not all(np.array_equal(a, b) for a, b in zip(own, unguided, strict=True))
    # One message: a plan naming a planner that is not there; a plan without its planner key.
    (tmp_path / "plans" / "planner.ckpt").rename(tmp_path / "plans" / "moved.ckpt")
    assert generate.main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "planner.ckpt not found" in capsys.readouterr().out
    written["plan"] = {"control_scale": 2}
    (folder / "generation.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match="plan must be"):
        generate.main([*argv, "--out", str(tmp_path / "x")])


def test_adherence_plans_each_clip_with_the_models_planner(tmp_path, monkeypatch, capsys):
    # No --control: the model's planner draws each clip's curve at its duration, and the audio is
    # the audio generated under those curves given as a --control file.
    import json

    import numpy as np
    import soundfile as sf

    from siren_lightning import text_following
    from siren_lightning.data.manifest import Clip, write_manifest
    from siren_lightning.generate import planned_controls

    model = make_planned_model()
    codec, encoder = TableCodec(model.codebook_table.clone()), _Encoder()
    stack = (model, codec, encoder)
    monkeypatch.setattr(text_following, "load_generation_stack", lambda spec, device: stack)
    make_planner_checkpoint(tmp_path / "planner.ckpt", text_dim=12)
    clips = []
    for i, (seconds, pitch) in enumerate(((0.05, "low"), (0.08, "high"))):
        stated = {"source": "tone", "pitch": pitch, "count": "once", "envelope": "steady"}
        path, caption = tmp_path / f"c{i}.wav", [f"a {pitch} tone"]
        clip = Clip(f"c{i}", path, caption, duration=seconds, attributes=stated)
        sf.write(str(clip.audio), np.zeros(int(seconds * 1600), np.float32), 1600)
        clips.append(clip)
    write_manifest(tmp_path / "m.jsonl", clips)
    (tmp_path / "model").mkdir()
    plan = {"planner": "../planner.ckpt", "control_scale": 1.5}
    config = {"sampling": {"temperature": 0.5}, "plan": plan}
    (tmp_path / "model" / "generation.json").write_text(json.dumps(config))
    curves = planned_controls(
        tmp_path / "planner.ckpt", encoder, [c.captions[0] for c in clips], [0.05, 0.08], codec
    )
    torch.save({c.id: k[:, 0] for c, k in zip(clips, curves, strict=True)}, tmp_path / "p.pt")
    argv = ["--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.jsonl")]
    assert text_following.main([*argv, "--out", str(tmp_path / "own")]) == 0
    assert "plan: " in capsys.readouterr().out
    given = ["--control", str(tmp_path / "p.pt"), "--control-scale", "1.5"]
    assert text_following.main([*argv, *given, "--out", str(tmp_path / "file")]) == 0
    for i in range(2):
        own = sf.read(str(tmp_path / "own" / "seed0" / f"c{i}.wav"))[0]
        file = sf.read(str(tmp_path / "file" / "seed0" / f"c{i}.wav"))[0]
        assert np.array_equal(own, file)
    report = json.loads((tmp_path / "own" / "report.json").read_text())
    assert report["control_scale"] == 1.5 and report["control"].endswith("planner.ckpt")
