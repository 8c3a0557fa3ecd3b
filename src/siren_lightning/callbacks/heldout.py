"""`HeldoutEvaluation`: the alignment stage's in-loop evaluation on captions it never rolls out.

Every `every_n_steps` rollout batches of an `AlignModule` (before the batch's rollouts, so the
first evaluation grades the stage-1 policy; and once more when fitting ends), it generates the
first `num_clips` captions of the val split (or `manifest`) with `siren generate`'s sampling
(`align.heldout.evaluate_policy`) and logs `heldout/reward`, `heldout/clap_score`, `heldout/fd`
(preset `tiny`: the evaluation tiny CLAP, never the reward model, FD against the clips'
reference audio; or preset `audioldm_eval` on real data) and `heldout/kl_ref` to TensorBoard,
with a few clips. The x-axis is the rollout batch, as for the module's `train/` curves.

The grader (`grader()`) goes into the stage's checkpoint record, beside the reward that trained
the policy, so an export says what graded it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L

from siren_lightning.align.heldout import evaluate_policy, heldout_clips
from siren_lightning.models.sampling import resolve_sampling

log = logging.getLogger(__name__)


class HeldoutEvaluation(L.Callback):
    """Held-out evaluation of an `AlignModule`'s policy, graded by another scorer than its reward.

    Args:
        every_n_steps: evaluate every N rollout batches (and after the last); 0: never (the
            callback stays listed but idle, e.g. `--trainer.callbacks.init_args.every_n_steps 0`).
        num_clips: how many val captions (the first ones) are generated and graded (>= 10: the
            evaluator's inception score has 10 splits).
        seconds: length of each held-out clip (default: the module's rollout length).
        sampling: `temperature`, `top_k`, `top_p`, `cfg_scale` (default `siren generate`'s).
        seed: generation seed (default: the module's rollout seed); the same at every evaluation.
        preset: `tiny` (SynthCaps: `tiny_clap`) or `audioldm_eval` (real data: PANNs FD, LAION
            CLAP score; weights as for `siren evaluate`).
        tiny_clap: the tiny CLAP of the `tiny` preset.
        clap_checkpoint: the LAION CLAP of the `audioldm_eval` preset (its default if None).
        cache_dir: feature cache folder of the evaluator (reference clips are embedded once).
        manifest: held-out manifest instead of the datamodule's val split.
    """

    def __init__(
        self,
        every_n_steps: int = 20,
        num_clips: int = 32,
        seconds: float | None = None,
        sampling: dict[str, Any] | None = None,
        seed: int | None = None,
        preset: Literal["tiny", "audioldm_eval"] = "tiny",
        tiny_clap: str = "tiny-clap-eval",
        clap_checkpoint: str | None = None,
        cache_dir: str | None = None,
        manifest: str | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"HeldoutEvaluation: every_n_steps must be >= 0, got {every_n_steps}")
        if num_clips < 10:
            raise ValueError(
                f"HeldoutEvaluation: num_clips must be >= 10 (the evaluator's inception score has "
                f"10 splits), got {num_clips}"
            )
        self.every_n_steps = every_n_steps
        self.num_clips = num_clips
        self.seconds = seconds
        # The global defaults: the policy in training has no export folder, no generation.json.
        self.sampling = resolve_sampling("HeldoutEvaluation: sampling", sampling).values
        self.seed = seed
        self.preset = preset
        self.tiny_clap = tiny_clap
        self.clap_checkpoint = clap_checkpoint
        self.cache_dir = cache_dir
        self.manifest = manifest
        self._evaluator: Any = None
        self._last_step: int | None = None
        self.history: list[dict[str, float]] = []

    # Hooks.

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        step = module.rollout_batches
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.every_n_steps and self._last_step != module.rollout_batches:
            self.run(trainer, module)

    # The grader.

    def grader(self, reward: Any) -> dict[str, Any]:
        """What grades (JSON-able): preset, its CLAP, and how it relates to `reward`.

        `same_family` is True when the grader's CLAP is of the reward's model family (another
        checkpoint of it, never the same one): its CLAP score then shares the reward's biases,
        and the independent evidence is what no such model computes (adherence, FD on another
        backbone)."""
        if self.preset == "tiny":
            clap, family = self.tiny_clap, "tiny-clap"
        else:
            from siren_lightning.metrics.weights import DEFAULT_CLAP_CHECKPOINT

            clap, family = self.clap_checkpoint or DEFAULT_CLAP_CHECKPOINT, "laion-clap"
        return {
            "preset": self.preset,
            "clap": clap,
            "clap_family": family,
            "same_family": family == reward.family,
        }

    def evaluator(self, reward: Any) -> Any:
        """The evaluator of `preset`, refused when it would grade with the reward model: the
        tiny preset's CLAP must not be the reward's tiny CLAP, and the audioldm_eval preset's
        LAION CLAP must not be the reward's LAION checkpoint."""
        if self._evaluator is None:
            from siren_lightning.align.rewards import LaionCLAPReward
            from siren_lightning.metrics.protocol import build_evaluator
            from siren_lightning.metrics.tiny_clap import tiny_clap_path
            from siren_lightning.metrics.weights import DEFAULT_CLAP_CHECKPOINT

            if self.preset == "tiny":
                grader = str(tiny_clap_path(self.tiny_clap).resolve())
                used = getattr(reward, "path", None)
                used = None if used is None else str(Path(used).resolve())
            else:
                grader = self.clap_checkpoint or DEFAULT_CLAP_CHECKPOINT
                used = reward.checkpoint if isinstance(reward, LaionCLAPReward) else None
            if used is not None and used == grader:
                raise ValueError(
                    f"HeldoutEvaluation: the {self.preset} evaluation would grade with the reward "
                    f"model ({grader}); held-out scores must come from another scorer"
                )
            if self.grader(reward)["same_family"]:
                log.warning(
                    "HeldoutEvaluation: the reward (%s) and the held-out CLAP (%s) are one model "
                    "family: read heldout/clap_score with that in mind",
                    reward.name,
                    self.grader(reward)["clap"],
                )
            self._evaluator = build_evaluator(
                self.preset,
                tiny_clap=self.tiny_clap,
                clap_checkpoint=self.clap_checkpoint,
                cache_dir=self.cache_dir,
            )
        return self._evaluator

    # The evaluation.

    def _clips(self, trainer: L.Trainer) -> list:
        if self.manifest is not None:
            from siren_lightning.data.manifest import read_manifest

            return heldout_clips(read_manifest(self.manifest), self.num_clips)
        val = getattr(getattr(trainer, "datamodule", None), "datasets", {}).get("val")
        if val is None:
            raise ValueError(
                "HeldoutEvaluation: needs the datamodule's val split (val_manifest) or a "
                "manifest; remove the callback to run without held-out evaluation"
            )
        return heldout_clips(val.clips, self.num_clips)

    def run(self, trainer: L.Trainer, module: Any) -> dict[str, float]:
        """Evaluate the module's policy; log the metrics and a few clips.

        WAVs go to `<log dir>/heldout/step_<rollout batches>/`.
        """
        from siren_lightning.callbacks.media import log_clips, tensorboard_writer

        step = module.rollout_batches
        root = Path(trainer.log_dir or trainer.default_root_dir)
        rollout = module.rollout_config
        metrics, clips = evaluate_policy(
            module.network,
            module.text_encoder,
            module.codec,
            self._clips(trainer),
            root / "heldout" / f"step_{step:06d}",
            reward=module.reward,
            evaluator=self.evaluator(module.reward),
            reference=module.reference_experts(),
            seconds=self.seconds or rollout.seconds,
            sampling=self.sampling,
            seed=rollout.seed if self.seed is None else self.seed,
            plan=getattr(module, "plan", None),
        )
        self._last_step = step
        self.history.append({"step": step, **metrics})
        log.info("held-out at step %d: %s", step, metrics)
        for logger in trainer.loggers:
            logger.log_metrics({f"heldout/{k}": v for k, v in metrics.items()}, step=step)
        writer = tensorboard_writer(trainer)
        if writer is not None and clips:
            named = {f"{i}: {c[:60]}": a for i, (c, a) in enumerate(clips.items())}
            log_clips(writer, "heldout", named, module.codec.sample_rate, step)
        return metrics
