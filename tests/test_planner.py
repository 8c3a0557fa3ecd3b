"""`LoudnessPlanner` / `PlannerModule` / `plan_curves`: a planner that must read its caption
to draw the curve, and the L1 it is trained by."""

import torch
from siren_testing import make_text

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
