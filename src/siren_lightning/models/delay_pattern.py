"""The delay interleaving pattern of MusicGen / AudioGen, as a small tested object.

Codebook q is delayed by q steps, so at sequence step s the single LM emits codebook q of frame
s - q. Reading the sequence left to right, codebook q of frame t comes after codebooks < q of
frame t and after every code of frames < t; a model conditioned on steps < s never sees
codebook q or higher of frame t (or of a later frame) before predicting codebook q of frame t.
Lower codebooks of later frames do come first: that is the pattern's approximation.

Letters: B batch, r codebooks, T frames, S = T + r - 1 sequence steps.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DelayPattern:
    """Interleave [B, r, T] codes into a delayed [B, r, T + r - 1] sequence and back.

    Args:
        num_codebooks: r.
        empty_token: id written where a codebook has no code at a step (the LM's extra token,
            usually the codebook size K).
    """

    def __init__(self, num_codebooks: int, empty_token: int):
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
        self.r = num_codebooks
        self.empty_token = empty_token

    def steps(self, frames: int) -> int:
        """Sequence length S for T frames."""
        return frames + self.r - 1

    def frames(self, steps: int) -> int:
        """Frames T that S steps hold completely."""
        return max(steps - self.r + 1, 0)

    def valid_mask(self, steps: int, device: torch.device | None = None) -> Tensor:
        """[r, S] True where codebook q holds a code at step s (q <= s < q + T)."""
        t = self.frames(steps)
        s = torch.arange(steps, device=device)
        q = torch.arange(self.r, device=device)[:, None]
        return (s >= q) & (s < q + t)

    def interleave(self, codes: Tensor) -> Tensor:
        """codes: [B, r, T] -> [B, r, T + r - 1], `empty_token` where a codebook is idle."""
        b, r, t = codes.shape
        if r != self.r:
            raise ValueError(f"expected {self.r} codebooks, got {r}")
        seq = codes.new_full((b, r, self.steps(t)), self.empty_token)
        for q in range(r):
            seq[:, q, q : q + t] = codes[:, q]
        return seq

    def deinterleave(self, seq: Tensor) -> Tensor:
        """seq: [B, r, S] (tokens or logits [B, r, S, ...]) -> [B, r, S - r + 1, ...]."""
        if seq.shape[1] != self.r:
            raise ValueError(f"expected {self.r} codebooks, got {seq.shape[1]}")
        t = self.frames(seq.shape[2])
        return torch.stack([seq[:, q, q : q + t] for q in range(self.r)], dim=1)
