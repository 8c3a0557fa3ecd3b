"""`PlannerModule`: trains a `LoudnessPlanner` on the code batches' captions against the
clips' loudness curves (`siren loudness`), and `siren plan` writes a trained planner's curves
for a manifest's captions, the control `siren adherence --control` generates with."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from siren_lightning.codec.base import seconds_to_frames
from siren_lightning.data.loudness import (
    control_arguments,
    guidance_curve,
    read_curves,
    window_control,
)
from siren_lightning.models.blocks import window_timing
from siren_lightning.models.planner import LoudnessPlanner, PlannerConfig
from siren_lightning.stages.chassis import FrozenTextModule


class PlannerModule(FrozenTextModule):
    """L1 regression of each frame's loudness from the caption and the clip timing.

    L1 rather than squared error: where the data jitters an event's start (SynthCaps moves it
    by up to 5% of its slot), the median keeps one sharp edge where the mean would blur it.

    Args:
        control_cache: a folder of `siren loudness` files (`*.pt`) covering the training and
            validation clips.
        text_encoder: the frozen encoder of the captions, for batches without cached
            `text_states` (not written into checkpoints).
        text_dim, width, num_heads, layers: `PlannerConfig`.
        lr, weight_decay: AdamW.
    """

    def __init__(
        self,
        control_cache: str,
        text_encoder: Any = None,
        text_dim: int = 384,
        width: int = 64,
        num_heads: int = 4,
        layers: int = 2,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["text_encoder"])
        self.text_encoder = text_encoder
        self.planner = LoudnessPlanner(PlannerConfig(text_dim, width, num_heads, layers, 1))
        self._curves: dict[str, Tensor] = {}

    def setup(self, stage: str) -> None:
        if not self._curves:
            self._curves = read_curves(self.hparams.control_cache, "PlannerModule control_cache")

    def _loss(self, batch: dict[str, Any]) -> Tensor:
        """Mean |planned - true| over the batch's real frames."""
        mask = batch["mask"].bool()
        t = mask.shape[1]
        offsets = batch.get("frame_offset")
        target = window_control(self._curves, list(batch["ids"]), offsets, t).to(mask.device)
        timing = window_timing(mask, t, batch.get("total_frames"), offsets)  # [B, T, 2]
        states, text_mask = self._text(batch)
        planned = self.planner(states, text_mask, timing[:, 0, 1], t, timing[:, 0, 0])
        error = (planned - target).abs()[..., 0]
        return (error * mask).sum() / mask.sum().clamp_min(1)

    def _text(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if "text_states" in batch:
            return batch["text_states"], batch["text_mask"]
        if self.text_encoder is None:
            raise ValueError(
                "PlannerModule: the batch has no text_states and the module has no text_encoder"
            )
        with torch.no_grad():
            out = self.text_encoder.encode(list(batch["captions"]))
        return out.states.to(self.device), out.mask.to(self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/l1", loss, prog_bar=True, batch_size=batch["mask"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/l1", self._loss(batch), prog_bar=True, batch_size=batch["mask"].shape[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


@torch.no_grad()
def plan_curves(
    planner: LoudnessPlanner,
    text_encoder: Any,
    captions: list[str],
    frames: list[int],
    batch_size: int = 64,
) -> list[Tensor]:
    """One planned curve [T_i] per caption, T_i frames long, clipped to [0, 1]."""
    out = []
    for start in range(0, len(captions), batch_size):
        batch, lengths = captions[start : start + batch_size], frames[start : start + batch_size]
        text = text_encoder.encode(batch)
        total = torch.tensor(lengths)
        planned = planner(text.states, text.mask, total, max(lengths))[..., 0].clamp(0, 1)
        out += [planned[i, :n].clone() for i, n in enumerate(lengths)]
    return out


def load_planner(path: str | Path, device: str = "cpu") -> LoudnessPlanner:
    """The eval-mode `LoudnessPlanner` of a `PlannerModule` checkpoint (`siren fit --config
    experiments/planner_tiny_clean.yaml`), with one clear error for a missing file."""
    if not Path(path).is_file():
        raise ValueError(
            f"planner checkpoint {path} not found: train one with `siren fit "
            "--config experiments/planner_tiny_clean.yaml`"
        )
    module = PlannerModule.load_from_checkpoint(path, map_location=device)
    return module.planner.eval()


class CaptionPlan:
    """A planner drawing each caption's curve, with the control guidance that follows it: what
    alignment rollouts, its held-out evaluation and `siren align-report` generate under.

    Args:
        planner: eval-mode `LoudnessPlanner`.
        text_encoder: the LM's caption encoder (its width is checked against the planner's).
        scale: control guidance's weight (0: off, no contrast is made).
        guidance: the copy's kind (`data.loudness.GUIDANCE_CURVES`).
        source: where the planner came from (recorded in reports).
    """

    def __init__(
        self,
        planner: LoudnessPlanner,
        text_encoder: Any,
        scale: float = 0.0,
        guidance: str = "reversed",
        source: str | None = None,
    ) -> None:
        if planner.config.text_dim != text_encoder.dim:
            raise ValueError(
                f"the planner reads text states of width {planner.config.text_dim}, the text "
                f"encoder gives {text_encoder.dim}"
            )
        guidance_curve(torch.zeros(1), guidance)  # an unknown kind fails here
        self.planner, self.text_encoder = planner, text_encoder
        self.scale, self.guidance, self.source = scale, guidance, source

    @classmethod
    def load(
        cls,
        path: str | Path,
        text_encoder: Any,
        scale: float = 0.0,
        guidance: str = "reversed",
        device: str | torch.device = "cpu",
    ) -> CaptionPlan:
        """From a `PlannerModule` checkpoint (`load_planner`), on the text encoder's device."""
        return cls(load_planner(path, device), text_encoder, scale, guidance, str(path))

    def curves(self, captions: list[str], frames: list[int]) -> list[Tensor]:
        """One curve [T_i, 1] per caption, T_i = frames[i]."""
        return [c[:, None] for c in plan_curves(self.planner, self.text_encoder, captions, frames)]

    def curves_for_seconds(
        self, captions: list[str], seconds: float | list[float], codec: Any
    ) -> list[Tensor]:
        """One curve [T_i, 1] per caption, T_i the codec frames of its clip's length."""
        lengths = [seconds] * len(captions) if isinstance(seconds, int | float) else seconds
        frames = [seconds_to_frames(s, codec.sample_rate, codec.hop_length) for s in lengths]
        return self.curves(captions, frames)

    def controls(
        self,
        captions: list[str],
        frames: int | list[int],
        device: str | torch.device | None = None,
        length: int | None = None,
    ) -> dict[str, Any]:
        """`generate`'s control arguments (`control_arguments`: the curves and, when the scale
        is not 0, their guidance copies) for clips of `frames` frames (one for all, or one per
        caption), padded to `length` frames (default: the longest clip)."""
        lengths = [frames] * len(captions) if isinstance(frames, int) else list(frames)
        length = max(lengths) if length is None else length
        curves = self.curves(captions, lengths)
        return control_arguments(curves, length, self.scale, self.guidance, device)


def main(argv: list[str]) -> int:
    """Write a trained planner's loudness curves for a manifest's first captions."""
    from siren_lightning.data.manifest import read_manifest
    from siren_lightning.text import TextEncoder

    p = argparse.ArgumentParser(prog="siren plan", description=main.__doc__)
    p.add_argument("--planner", required=True, help="PlannerModule .ckpt")
    p.add_argument("--manifest", required=True, help="JSONL manifest (captions and durations)")
    p.add_argument("--out", required=True, help="destination .pt file ({clip id: [T] curve})")
    p.add_argument("--hop-length", type=int, default=320)
    p.add_argument("--sample-rate", type=int, default=16000)
    args = p.parse_args(argv)
    planner = load_planner(args.planner)
    clips = [c for c in read_manifest(args.manifest) if c.captions]
    frames = [seconds_to_frames(c.duration, args.sample_rate, args.hop_length) for c in clips]
    curves = plan_curves(
        planner, TextEncoder(backend="minilm"), [c.captions[0] for c in clips], frames
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({c.id: curve for c, curve in zip(clips, curves, strict=True)}, args.out)
    print(f"{len(clips)} planned curves -> {args.out}")
    return 0
