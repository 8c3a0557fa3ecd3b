"""Stage 2: anti-causal alignment of chosen Siren experts by reinforcement learning (DESIGN.md 6).

Letters: P prompts per step, G samples per prompt, B = P*G rollouts, r codebooks, n policy
codebooks, T frames, K codebook size, L text tokens, Dt text width, N audio samples.

One training step (manual optimisation):
1. rollouts: each caption of the batch (`SirenDataModule`, mode "captions") is repeated G times;
   the KV-cached sampler draws every frame's codes (the policy experts make their codebooks, the
   frozen experts complete the rest, as in stage 1), the codec decodes them and the reward
   scores the audio against the caption;
2. the policy's own codes (codebooks 2k, 2k+1 of each policy expert k) are scored teacher-forced
   under the policy and under the reference, a frozen copy of the policy's stage-1 experts;
3. `strategy: grpo`: group-relative advantages, PPO's clipped surrogate (the rollout batch is
   reused for `ppo_epochs` updates; with one epoch the ratios are 1 and nothing is clipped), a
   per-token KL penalty to the reference (`kl_estimator`: k3 by default, or exact) and an
   optional entropy bonus. `strategy: dpo`: DPO on the best and the worst sample of each group
   (`ppo_epochs` updates per rollout batch). `strategy: crpo`, an online preference method in the
   style of TangoFlux's CLAP-ranked preference optimisation: each rollout batch (fresh groups
   from the current policy) gives the best and the worst sample of each group, and one update
   of DPO plus `crpo_nll_coef` x the chosen samples' negative log-likelihood per token (TangoFlux
   adds the winner's own training loss to DPO's, so that the chosen likelihood does not fall).

The policy is the distribution the sampler draws from: with classifier-free guidance (rollouts
use `cfg_scale` 3 by default, as `siren generate` does) the log-probabilities, the KL and the
entropy are those of the guided logits ``uncond + s (cond - uncond)`` of the policy experts (and
of the reference copy for the reference), so the update stays on-policy and the unconditional
branch that guidance relies on is trained with it. Rollouts use no top-k/top-p filter (the
log-probability of a filtered code would be -inf after an update). The experts stay in eval
mode throughout (no dropout), so the update scores the codes exactly as the sampler did.

The settings come in three typed groups: `RolloutConfig` (how rollouts are drawn),
`ObjectiveConfig` (the RL strategy and its coefficients) and the optimizer. The held-out
evaluation is a callback (`callbacks.heldout.HeldoutEvaluation`, listed in the YAML's trainer
callbacks): it grades the policy with another scorer than the reward.

Checkpoints carry the same `siren` record as stage 1's, so `siren export` turns one into a model
folder that `siren generate` reads; its `align` entry records the reward that trained the policy
(`Reward.provenance()`: name, family, checkpoint and weights hash) and the held-out grader
(when a `HeldoutEvaluation` callback runs).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from siren_lightning.align.heldout import group_logits, policy_codebooks
from siren_lightning.align.objectives import (
    KL_ESTIMATORS,
    STRATEGIES,
    best_and_worst,
    clipped_surrogate,
    dpo_loss,
    entropy,
    group_advantages,
    kl_exact,
    kl_k3,
    masked_mean,
    token_log_probs,
)
from siren_lightning.align.rewards import Reward, TinyCLAPReward
from siren_lightning.codec.base import seconds_to_frames
from siren_lightning.export import load_lm
from siren_lightning.generation_config import model_plan
from siren_lightning.models.sampling import DEFAULT_SAMPLING, check_sampling, generate
from siren_lightning.models.siren import SirenLM
from siren_lightning.stages.chassis import (
    StageModule,
    check_codec_fits,
    check_optimizer,
    optimizer_factory,
)
from siren_lightning.stages.planner import CaptionPlan

ALIGN_OPTIMIZER = {
    "class_path": "torch.optim.AdamW",
    "init_args": {"lr": 1e-5, "betas": (0.9, 0.95), "weight_decay": 0.0},
}

# Rollouts: the guided distribution that users sample, without truncation (exact log-probs).
ROLLOUT_SAMPLING = {**DEFAULT_SAMPLING, "top_k": 0}


@dataclass(frozen=True)
class RolloutConfig:
    """How each step's rollouts are drawn.

    Attributes:
        group_size: G samples per caption (>= 2: advantages are relative to the group).
        seconds: length of each rollout clip.
        sampling: `temperature`, `top_k`, `top_p`, `cfg_scale` (default `ROLLOUT_SAMPLING`;
            top_k and top_p must stay off: the update needs exact log-probabilities).
        seed: seeds the rollout sampler (and, by default, the held-out evaluation's).
        control_scale: for an LM that follows a plan (`AlignModule(planner=)`): control
            guidance's weight in the rollouts and the held-out evaluation (0: off).
        control_guidance: the copy control guidance moves away from (`GUIDANCE_CURVES`).
    """

    group_size: int = 8
    seconds: float = 2.0
    sampling: dict[str, Any] | None = None
    seed: int = 0
    control_scale: float = 0.0
    control_guidance: str = "reversed"

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"AlignModule: rollout.group_size must be >= 2, got {self.group_size}")
        rs = self.sampler
        check_sampling("AlignModule: rollout.sampling", **rs)
        if rs["top_k"] > 0 or rs["top_p"] < 1.0 or rs["temperature"] <= 0:
            raise ValueError(
                f"AlignModule: rollout.sampling {rs} must keep top_k 0, top_p 1 and a positive "
                "temperature: the update needs the exact log-probability of every sampled code"
            )

    @property
    def sampler(self) -> dict[str, Any]:
        """The sampling settings with their defaults filled in."""
        return {**ROLLOUT_SAMPLING, **(self.sampling or {})}


@dataclass(frozen=True)
class ObjectiveConfig:
    """The RL objective of each update (see the module's docstring).

    Attributes:
        strategy: "grpo", "dpo" or "crpo".
        kl_coef: weight of the per-token KL penalty to the reference (GRPO).
        kl_estimator: "k3" (default) or "exact" (see `align.objectives`).
        clip_eps: PPO ratio clip.
        ppo_epochs: updates per rollout batch (crpo: 1).
        entropy_coef: weight of the entropy bonus (GRPO).
        dpo_beta: DPO's inverse temperature (DPO and CRPO).
        crpo_nll_coef: weight of the chosen samples' per-token NLL in CRPO's loss.
        grad_clip: gradient-norm clip of each update (0: none).
    """

    strategy: Literal["grpo", "dpo", "crpo"] = "grpo"
    kl_coef: float = 0.04
    kl_estimator: Literal["k3", "exact"] = "k3"
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    entropy_coef: float = 0.0
    dpo_beta: float = 0.1
    crpo_nll_coef: float = 1.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"AlignModule: objective.strategy must be one of {STRATEGIES}, got "
                f"{self.strategy!r}"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"AlignModule: objective.kl_estimator must be one of {KL_ESTIMATORS}, got "
                f"{self.kl_estimator!r}"
            )
        if self.ppo_epochs < 1:
            raise ValueError(
                f"AlignModule: objective.ppo_epochs must be >= 1, got {self.ppo_epochs}"
            )
        if self.strategy == "crpo" and self.ppo_epochs != 1:
            raise ValueError(
                f"AlignModule: crpo makes one update per rollout batch; set objective.ppo_epochs "
                f"1, got {self.ppo_epochs}"
            )


class AlignModule(StageModule):
    """GRPO (or DPO) alignment of chosen experts of a stage-1 `SirenLM`.

    Args:
        init_from: stage-1 checkpoint (.ckpt) or `siren export` folder; gives the network, and
            by default the codec and the text encoder it was trained with.
        network: a `SirenLM` instead of `init_from` (tests).
        reward: the training reward (default `TinyCLAPReward("tiny-clap-reward")`).
        text_encoder: frozen caption encoder (default: the one recorded by stage 1).
        codec: a codec module or spec (default: the one recorded by stage 1).
        policy_groups: experts that are trained (default [0]: codebooks 0 and 1).
        rollout: how rollouts are drawn (`RolloutConfig`).
        objective: the RL strategy and its coefficients (`ObjectiveConfig`).
        optimizer: the optimizer over the policy's parameters (constant rate), from YAML
            (default `ALIGN_OPTIMIZER`: AdamW lr 1e-5, betas (0.9, 0.95), no weight decay).
        planner: for an LM that follows a per-frame plan (`control_dim` > 0): the
            `PlannerModule` checkpoint that draws each caption's curve (default: the one
            `init_from`'s generation.json names). Rollouts, their log-probabilities and the
            held-out evaluation are all under the planner's curve (the plan is part of the
            prompt) and `rollout.control_scale`'s control guidance; the policy learns which
            codes to draw under a plan, the planner stays as it is.
    """

    def __init__(
        self,
        init_from: str | None = None,
        network: SirenLM | None = None,
        reward: Reward | None = None,
        text_encoder: nn.Module | None = None,
        codec: nn.Module | str | None = None,
        policy_groups: Sequence[int] = (0,),
        rollout: RolloutConfig | None = None,
        objective: ObjectiveConfig | None = None,
        optimizer: OptimizerCallable = ALIGN_OPTIMIZER,
        planner: str | None = None,
    ) -> None:
        super().__init__()
        # The groups go in as plain dicts: checkpoints load with weights_only=True.
        ignore = ["network", "reward", "text_encoder", "codec", "optimizer", "rollout", "objective"]
        self.save_hyperparameters(ignore=ignore)
        self.rollout_config = rollout = rollout or RolloutConfig()
        self.objective_config = objective or ObjectiveConfig()
        self.hparams["rollout"] = asdict(rollout)
        self.hparams["objective"] = asdict(self.objective_config)
        self.make_optimizer = optimizer_factory(optimizer, ALIGN_OPTIMIZER)
        check_optimizer(self.make_optimizer, "AlignModule")
        self.automatic_optimization = False
        if (init_from is None) == (network is None):
            raise ValueError("AlignModule: give exactly one of init_from and network")
        meta: dict[str, Any] = {}
        if init_from is not None:
            try:
                network, meta = load_lm(init_from, who="AlignModule: init_from")
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"{exc}; train stage 1 first (`make pretrain` writes "
                    "runs/siren_tiny/checkpoints/last.ckpt)"
                ) from None
            if not isinstance(network, SirenLM):
                raise ValueError(
                    f"AlignModule: init_from {init_from} holds a {type(network).__name__}, "
                    "not a SirenLM"
                )
        self.meta = meta
        groups = sorted(set(policy_groups))
        if not groups or any(not 0 <= k < network.num_groups for k in groups):
            raise ValueError(
                f"AlignModule: policy_groups {list(policy_groups)} must be a non-empty subset of "
                f"0..{network.num_groups - 1}"
            )
        self.policy_groups = groups
        self.codebooks = policy_codebooks(network, groups)
        self.network = network
        self.train_only(groups)
        # The frozen reference: a copy of the policy experts as stage 1 left them.
        self.reference = nn.ModuleDict({str(k): copy.deepcopy(network.experts[k]) for k in groups})
        self.reference.requires_grad_(False)
        if text_encoder is None:
            text_encoder = self._stage1_text_encoder()
        self.text_encoder = text_encoder
        self.plan = self._caption_plan(planner, init_from, network, rollout)
        codec = codec if codec is not None else meta.get("codec")
        if codec is None:
            raise ValueError("AlignModule: no codec given and the stage-1 record names none")
        self.init_codec(codec)
        self._reward = [reward]
        self.rollout_sampling = rollout.sampler
        self._generator: torch.Generator | None = None
        self._resumed_rng: torch.Tensor | None = None  # from a checkpoint, until fit starts
        self._rollout_batches = 0
        self.eval()

    # Pieces built from the stage-1 record.

    def _caption_plan(
        self,
        planner: str | None,
        init_from: str | None,
        network: nn.Module,
        rollout: RolloutConfig,
    ) -> CaptionPlan | None:
        """The planner an LM with control_dim > 0 generates under (None for the paper's LM)."""
        if getattr(network.config, "control_dim", 0) == 0:
            if planner is not None:
                raise ValueError("AlignModule: planner given, but the LM takes no control")
            return None
        if planner is None and init_from is not None:
            found = model_plan(init_from)
            planner = None if found is None else str(found.planner)
        if planner is None:
            raise ValueError(
                "AlignModule: the LM follows a per-frame plan (control_dim > 0): give planner (a "
                "PlannerModule checkpoint) or start from a model whose generation.json names one"
            )
        return CaptionPlan.load(
            planner, self.text_encoder, rollout.control_scale, rollout.control_guidance
        )

    def _stage1_text_encoder(self) -> nn.Module:
        info = self.meta.get("text_encoder")
        if not info:
            raise ValueError("AlignModule: no text_encoder given and the stage-1 record names none")
        from siren_lightning.text import TextEncoder

        return TextEncoder(
            info.get("backend", "minilm"),
            info.get("name_or_path"),
            max_length=info.get("max_length") or 64,
        )

    @property
    def reward(self) -> Reward:
        """The training reward (the default tiny CLAP reward is loaded on first use)."""
        if self._reward[0] is None:
            self._reward[0] = TinyCLAPReward("tiny-clap-reward")
        return self._reward[0]

    @property
    def rollout_batches(self) -> int:
        """Rollout batches done so far (the x-axis of the `train/` and `heldout/` curves)."""
        return self._rollout_batches

    def policy_experts(self) -> dict[int, nn.Module]:
        return {k: self.network.experts[k] for k in self.policy_groups}

    def reference_experts(self) -> dict[int, nn.Module]:
        return {k: self.reference[str(k)] for k in self.policy_groups}

    # Modes and checkpoints.

    def train(self, mode: bool = True) -> AlignModule:
        """The networks never leave eval mode (no dropout: rollouts and updates agree)."""
        super().train(mode)
        for module in self.children():
            module.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The stage-1 `siren` record, updated, so that `siren export` reads the checkpoint."""
        codec = self.codec
        sha = codec.sha256() if hasattr(codec, "sha256") else self.meta.get("codec_sha256")
        record = self.checkpoint_record(
            self.codec_spec or self.meta.get("codec"), sha, self.policy_groups
        )
        record["align"] = {
            "init_from": self.hparams.init_from,
            "strategy": self.objective_config.strategy,
            "reward": self.reward.provenance(),
            "grader": self._grader(),
            "rollout_batches": self._rollout_batches,
            "planner": None if self.plan is None else self.plan.source,
            # The sampler's position, so a resumed run draws the rollouts it would have.
            "rollout_rng": None if self._generator is None else self._generator.get_state(),
        }
        checkpoint["siren"] = record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_architecture(checkpoint)
        align = checkpoint.get("siren", {}).get("align", {})
        self._rollout_batches = int(align.get("rollout_batches", 0))
        self._resumed_rng = align.get("rollout_rng")

    # Setup.

    def setup(self, stage: str) -> None:
        codec, c = self.codec, self.network.config
        check_codec_fits(codec, c)
        if not self.network.codebook_table.any():
            raise ValueError("AlignModule: the LM's codebook_table is all zeros")
        if self.text_encoder.dim != c.text_dim:
            raise ValueError(
                f"AlignModule: the text encoder gives {self.text_encoder.dim}-d states but the "
                f"LM expects text_dim={c.text_dim}"
            )

    def on_fit_start(self) -> None:
        self.codec.to(self.device)
        if self.plan is not None:
            self.plan.planner.to(self.device)
        self.reward.to(self.device)
        self._generator = torch.Generator(device=self.device).manual_seed(self.rollout_config.seed)
        if self._resumed_rng is not None:
            self._generator.set_state(self._resumed_rng)
            self._resumed_rng = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(
            [p for e in self.policy_experts().values() for p in e.parameters()]
        )

    # Rollouts.

    @torch.no_grad()
    def rollout(self, captions: list[str]) -> dict[str, Any]:
        """G samples per caption, decoded and scored.

        Returns:
            `captions` (B, each caption G times), `codes` [B, r, T], `audio` [B, 1, N],
            `rewards` [B], `text_states` [B, L, Dt], `text_mask` [B, L], `uncond` (the empty
            caption's states [1, L', Dt] and mask [1, L']).
        """
        hp = self.rollout_config
        repeated = [c for c in captions for _ in range(hp.group_size)]
        text = self.text_encoder.encode(repeated)
        codec = self.codec
        frames = seconds_to_frames(hp.seconds, codec.sample_rate, codec.hop_length)
        empty = self.text_encoder.encode([""])
        uncond = {}
        if self.rollout_sampling["cfg_scale"] != 1.0:
            uncond = {"uncond_states": empty.states, "uncond_mask": empty.mask}
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(hp.seed)
        control: dict[str, Any] = {}
        if self.plan is not None:  # one curve per caption, the same for its G samples
            per_caption = self.plan.controls(captions, frames, self.device)  # [P, T, 1] each
            control = {
                k: v.repeat_interleave(hp.group_size, 0) if torch.is_tensor(v) else v
                for k, v in per_caption.items()
            }
        codes = generate(
            self.network,
            text.states,
            text.mask,
            frames,
            generator=self._generator,
            **uncond,
            **self.rollout_sampling,
            **control,
        )  # [B, r, T]
        audio = codec.decode(codes).float()  # [B, 1, N]
        rewards = self.reward(audio, codec.sample_rate, repeated).to(self.device)  # [B]
        return {
            "captions": repeated,
            "codes": codes,
            "audio": audio,
            "rewards": rewards,
            "text_states": text.states,
            "text_mask": text.mask,
            "uncond": (empty.states, empty.mask),
            "control": control,
        }

    def _logits(self, experts: dict[int, nn.Module], r: dict[str, Any], rows: Tensor | None):
        codes, states, mask = r["codes"], r["text_states"], r["text_mask"]
        control = dict(r["control"])
        if rows is not None:
            codes, states, mask = codes[rows], states[rows], mask[rows]
            control = {k: v[rows] if torch.is_tensor(v) else v for k, v in control.items()}
        rs = self.rollout_sampling
        return group_logits(
            self.network,
            experts,
            codes,
            states,
            mask,
            uncond=r["uncond"],
            cfg_scale=rs["cfg_scale"],
            temperature=rs["temperature"],
            **control,
        )  # [B, n, T, K]

    # Steps.

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.objective_config
        captions = list(batch["captions"])
        p, g = len(captions), self.rollout_config.group_size
        r = self.rollout(captions)
        rewards = r["rewards"]  # [B]
        rows = None
        if hp.strategy in ("dpo", "crpo"):
            chosen, rejected, valid = best_and_worst(rewards.view(p, g))
            rows = torch.cat([chosen, rejected])  # [2P]
        targets = (
            r["codes"][:, self.codebooks] if rows is None else r["codes"][rows][:, self.codebooks]
        )
        with torch.no_grad():
            ref_logits = self._logits(self.reference_experts(), r, rows)
            ref_logp = token_log_probs(ref_logits, targets)  # [B, n, T]
            old_logp = token_log_probs(self._logits(self.policy_experts(), r, rows), targets)
        advantages = group_advantages(rewards.view(p, g)).flatten()  # [B]
        optimizer = self.optimizers()
        stats: dict[str, Tensor] = {}
        for _ in range(hp.ppo_epochs):
            logits = self._logits(self.policy_experts(), r, rows)
            logp = token_log_probs(logits, targets)
            if hp.strategy == "grpo":
                pg_loss, clipped = clipped_surrogate(logp, old_logp, advantages, hp.clip_eps)
                if hp.kl_estimator == "k3":
                    kl = kl_k3(logp, ref_logp).mean()
                else:
                    kl = kl_exact(logits, ref_logits).mean()
                ent = entropy(logits).mean()
                loss = pg_loss + hp.kl_coef * kl - hp.entropy_coef * ent
                stats = {"pg_loss": pg_loss, "clipped_fraction": clipped, "entropy": ent}
            else:
                seq, ref_seq = logp.sum((1, 2)), ref_logp.sum((1, 2))  # [2P]
                loss, accuracy = dpo_loss(
                    seq[:p], seq[p:], ref_seq[:p], ref_seq[p:], hp.dpo_beta, valid
                )
                stats = {"dpo_accuracy": accuracy, "entropy": entropy(logits).mean()}
                if hp.strategy == "crpo":  # the chosen samples' own likelihood, per token
                    nll = masked_mean(-logp[:p].mean((1, 2)), valid)
                    loss = loss + hp.crpo_nll_coef * nll
                    stats["chosen_nll"] = nll
            optimizer.zero_grad()
            self.manual_backward(loss)
            if hp.grad_clip > 0:
                self.clip_gradients(optimizer, gradient_clip_val=hp.grad_clip)
            optimizer.step()
        self._rollout_batches += 1
        with torch.no_grad():
            stats["kl_ref"] = kl_exact(logits, ref_logits).mean()
            stats["kl_k3"] = kl_k3(logp, ref_logp).mean()
        stats |= {"loss": loss.detach(), "reward_mean": rewards.mean(), "reward_std": rewards.std()}
        b = rewards.shape[0]
        for name, value in stats.items():
            self.log(f"train/{name}", value.detach(), batch_size=b, prog_bar=name == "reward_mean")
        return loss.detach()

    def _grader(self) -> dict[str, Any] | None:
        """The held-out grader of this fit's `HeldoutEvaluation` callback, if it has one."""
        from siren_lightning.callbacks.heldout import HeldoutEvaluation

        trainer = self._trainer
        for callback in getattr(trainer, "callbacks", None) or []:
            if isinstance(callback, HeldoutEvaluation):
                return callback.grader(self.reward)
        return None
