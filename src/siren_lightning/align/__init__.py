"""Siren stage 2: anti-causal alignment by reinforcement learning (DESIGN.md section 6).

`rewards` (one `Reward` interface), `objectives` (pure loss pieces), `heldout` (evaluation on
captions never used for rollouts), `module` (`AlignModule`), `report` (`siren align-report`).
"""
