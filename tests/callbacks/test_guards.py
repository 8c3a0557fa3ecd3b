"""NaNGuard: a NaN injected at one step stops the run there, naming the step, after saving the
weights of the step before (the last good state)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from siren_lightning.callbacks.guards import NaNGuard, NonFiniteLossError


def _tiny_training():
    path = Path(__file__).resolve().parents[1] / "tiny_training.py"
    spec = importlib.util.spec_from_file_location("tiny_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_weights(tmp_path):
    tiny = _tiny_training()
    with pytest.raises(NonFiniteLossError) as err:
        tiny.main(["--root", str(tmp_path), "--steps", "10", "--nan-at-step", "4"])
    message = str(err.value)
    assert "non-finite training loss (nan) on this process at global step 4 " in message
    assert "clips: clip" in message
    saved = tmp_path / "checkpoints" / "nonfinite-step=4.ckpt"
    assert str(saved) in message
    # The loss log has steps 1..4 (four good updates); the fifth batch was never applied.
    assert len((tmp_path / "losses.0.jsonl").read_text().splitlines()) == 4
    state = torch.load(saved, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    weights = state["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (tmp_path / "final.0.pt").exists()  # training did not reach its end


class _Linear(L.LightningModule):
    def __init__(self, poison_grad_at: int):
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.poison_grad_at = poison_grad_at

    def training_step(self, batch, batch_idx):
        out = self.layer(batch[0]).mean()
        if self.global_step == self.poison_grad_at:  # finite value, NaN gradient
            out.register_hook(lambda grad: grad * float("nan"))
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_nan_gradient_with_a_finite_loss_is_caught_before_the_optimizer_step(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3)), 2)
    module = _Linear(poison_grad_at=2)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[NaNGuard(save=False)],
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite training gradient \(nan\) on this process at global step 2 ",
    ):
        trainer.fit(module, data)
    assert torch.isfinite(module.layer.weight).all() and torch.isfinite(module.layer.bias).all()
