"""In-loop text following: `val/adherence_*` and `val/text_gap_*` (DESIGN.md section 4).

A falling loss says nothing about whether a model reads its caption; these two curves do. At
every N-th validation, for a fixed set of validation clips with SynthCaps attributes:
- adherence: generate each clip's first caption at the clip's own length, score the audio with
  `measure_attributes` (`val/adherence_pitch`, `_count`, `_envelope`, `_mean`, `_all`);
- text gap: teacher-forced CE of the clips' true codes under a caption of another attribute
  combination minus under their own (`val/text_gap_cb00` ... per codebook, `val/text_gap`
  their mean);
- attribute gaps: the same with one attribute's words swapped at a time, and with the empty
  caption, on the same clips (`val/attribute_gap_{pitch,count,envelope,empty}_cb00` and
  `..._mean` over codebooks; 5 teacher-forced passes: the own wording and the 4 rows).
On data without attributes it logs nothing and says so once.

For an LM that follows a per-frame plan (`control_dim` > 0) every generation and every
teacher-forced pass reads a curve per clip: the planner's for its caption and length when
`planner` is given or the module has a `plan` (what users generate with), else the clip's own
curve from the module's `control_cache` (an oracle plan; the log line says which).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from siren_lightning.callbacks.evaluation import reference_clips
from siren_lightning.data.loudness import control_arguments, guidance_curve
from siren_lightning.metrics.adherence import (
    GAP_ROWS,
    JUDGED,
    adherence,
    attribute_gaps,
    has_attributes,
    text_gap,
)
from siren_lightning.models.sampling import check_sampling
from siren_lightning.stages.planner import CaptionPlan

log = logging.getLogger(__name__)


class TextFollowingCallback(L.Callback):
    """Logs adherence, text gap and attribute gaps of a `PretrainModule` on validation clips.

    Args:
        val_manifest: reference manifest with attributes (default: the DataModule's, else the
            one recorded in the validation code cache).
        num_clips: validation clips used (the first ones of the val code cache that the
            manifest describes).
        every_n_validations: evaluate at every N-th validation (sanity checks do not count).
        seed: generation seed and the attribute gaps' caption seed, the same each time so that
            curves are comparable.
        sampling: `temperature`, `top_k`, `top_p`, `cfg_scale` (default: `siren generate`'s).
        batch_size: clips generated together.
        planner: `PlannerModule` checkpoint drawing the curves of an LM with `control_dim` > 0
            (default: the module's `plan`, else the clips' own curves, an oracle plan).
        control_scale, control_guidance: control guidance of the generations (default: the
            module's `plan`'s, else 0, off, and "reversed").
    """

    def __init__(
        self,
        val_manifest: str | None = None,
        num_clips: int = 32,
        every_n_validations: int = 1,
        seed: int = 0,
        sampling: dict[str, Any] | None = None,
        batch_size: int = 16,
        planner: str | None = None,
        control_scale: float | None = None,
        control_guidance: str | None = None,
    ) -> None:
        if control_guidance is not None:
            guidance_curve(torch.zeros(1), control_guidance)  # an unknown kind fails here
        if num_clips < 1 or every_n_validations < 1 or batch_size < 1:
            raise ValueError(
                "TextFollowingCallback: num_clips, every_n_validations and batch_size must be >= 1"
            )
        check_sampling("TextFollowingCallback: sampling", **(sampling or {}))
        self.val_manifest = val_manifest
        self.num_clips = num_clips
        self.every = every_n_validations
        self.seed = seed
        self.sampling = dict(sampling or {})
        self.batch_size = batch_size
        self.planner, self.control_scale, self.control_guidance = (
            planner,
            control_scale,
            control_guidance,
        )
        self._plan: CaptionPlan | None = None
        self.validations = 0
        self._clips: list[dict[str, Any]] | None = None
        self._disabled = False

    def _select(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        """The first `num_clips` val items with codes and attributes: id, caption, codes."""
        manifest = reference_clips(trainer, "val", self.val_manifest, type(self).__name__)
        dataset = getattr(trainer.datamodule, "datasets", {}).get("val")
        items = getattr(dataset, "items", None)
        if items is None:
            raise ValueError("TextFollowingCallback: needs a code-cache validation split")
        chosen = []
        for i in range(len(items)):
            item = items[i]
            clip = manifest.get(item["id"])
            if clip is not None:
                chosen.append(
                    {
                        "id": item["id"],
                        "caption": item["captions"][0],
                        "codes": torch.as_tensor(item["codes"]).long(),
                        "attributes": clip.attributes,
                    }
                )
            if len(chosen) == self.num_clips:
                break
        return chosen

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._disabled:
            return
        self.validations += 1
        if (self.validations - 1) % self.every or pl_module.codec is None:
            return
        if self._clips is None:
            self._clips = self._select(trainer)
            if not has_attributes([c["attributes"] for c in self._clips]):
                log.warning(
                    "TextFollowingCallback: skipped: the validation clips have no SynthCaps "
                    "attributes (pitch, count, envelope) to judge generations by"
                )
                self._disabled = True
                return
        clips = sorted(self._clips, key=lambda c: c["codes"].shape[-1])  # similar lengths
        scale, guidance = self._guidance(pl_module)
        curves = self._curves(pl_module, clips)
        hop = pl_module.codec.hop_length
        audios = []
        for start in range(0, len(clips), self.batch_size):
            batch = clips[start : start + self.batch_size]
            frames = [c["codes"].shape[-1] for c in batch]
            sampling = {
                **self.sampling,
                "total_frames": torch.tensor(frames, device=pl_module.device),
            }
            if curves is not None:
                sampling |= control_arguments(
                    curves[start : start + len(batch)],
                    max(frames),
                    scale,
                    guidance,
                    pl_module.device,
                )
            captions = [c["caption"] for c in batch]
            audio = pl_module.sample_audio(
                captions, max(frames), self.seed + start, **sampling
            )  # [B, N]
            audios += [audio[i, : n * hop].numpy() for i, n in enumerate(frames)]
        attributes = [c["attributes"] for c in clips]
        scores = adherence(audios, attributes, pl_module.codec.sample_rate)
        metrics = {f"val/adherence_{k}": scores[k] for k in (*JUDGED, "mean", "all")}
        was_training = pl_module.network.training
        pl_module.network.eval()
        codes = [c["codes"].to(pl_module.device) for c in clips]
        network, text = pl_module.network, pl_module.text_encoder
        captions = [c["caption"] for c in clips]
        gap = text_gap(
            network, text, codes, captions, attributes, batch_size=self.batch_size, controls=curves
        )
        per_attribute = attribute_gaps(
            network,
            text,
            codes,
            attributes,
            rng_seed=self.seed,
            batch_size=self.batch_size,
            controls=curves,
        )
        pl_module.network.train(was_training)
        for book, value in zip(gap["codebooks"], gap["gap"], strict=True):
            metrics[f"val/text_gap_cb{book:02d}"] = value
        metrics["val/text_gap"] = sum(gap["gap"]) / len(gap["gap"])
        first = per_attribute["codebooks"][0]
        for row in GAP_ROWS:
            metrics[f"val/attribute_gap_{row}_cb{first:02d}"] = per_attribute[row]["gap"][0]
            metrics[f"val/attribute_gap_{row}_mean"] = per_attribute[row]["mean"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        summary = ", ".join(f"{k}={scores[k]:.2f}" for k in (*JUDGED, "mean"))
        rows = ", ".join(f"{row} {per_attribute[row]['gap'][0]:+.3f}" for row in GAP_ROWS)
        source = ""
        if curves is not None:
            planned = self._plan_of(pl_module) is not None
            source = (
                " (under the planner's curves)" if planned else " (under the clips' own curves)"
            )
        log.info(
            "step %d: adherence %s; text gap cb00 %.3f; attribute gaps cb00 %s%s",
            trainer.global_step,
            summary,
            gap["gap"][0],
            rows,
            source,
        )

    def _plan_of(self, pl_module: L.LightningModule) -> CaptionPlan | None:
        """The planner the curves come from: the callback's own, else the module's `plan`, else
        None (the clips' own curves)."""
        if self.planner is None:
            return getattr(pl_module, "caption_plan", None)
        if self._plan is None:
            self._plan = CaptionPlan.load(
                self.planner, pl_module.text_encoder, device=pl_module.device
            )
        return self._plan

    def _guidance(self, pl_module: L.LightningModule) -> tuple[float, str]:
        """Control guidance's scale and copy: the callback's, else the module's `plan`'s, else 0
        (off) and "reversed"."""
        plan = getattr(pl_module.hparams, "plan", None) or {}
        scale = self.control_scale
        scale = float(plan.get("control_scale", 0.0)) if scale is None else scale
        return scale, self.control_guidance or plan.get("control_guidance", "reversed")

    def _curves(self, pl_module: L.LightningModule, clips: list[dict[str, Any]]) -> list | None:
        """One curve [T_i, 1] per clip for an LM that follows a plan (None otherwise)."""
        if getattr(pl_module.network.config, "control_dim", 0) == 0:
            if self.planner is not None:
                raise ValueError(
                    "TextFollowingCallback: planner given, but the LM takes no control"
                )
            return None
        frames = [c["codes"].shape[-1] for c in clips]
        plan = self._plan_of(pl_module)
        if plan is not None:
            return plan.curves([c["caption"] for c in clips], frames)
        own = pl_module.clip_curves([c["id"] for c in clips])
        return [curve[:n, None] for curve, n in zip(own, frames, strict=True)]
