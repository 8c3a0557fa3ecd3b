"""Siren stage 2: anti-causal alignment by reinforcement learning (DESIGN.md section 6).

`rewards` (one `Reward` interface), `objectives` (pure loss pieces), `heldout` (evaluation on
captions never used for rollouts), `report` (`siren align-report`). The stage itself is
`stages.align.AlignModule`; its in-loop evaluation is `callbacks.heldout.HeldoutEvaluation`.
"""
