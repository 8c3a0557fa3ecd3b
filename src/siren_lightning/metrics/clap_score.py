"""CLAP score: mean cosine similarity x 100 between generated audio and its caption.

Letters: B clips, D joint embedding width.

torchmetrics' `CLIPScore` is tied to image CLIP models and clamps negative cosines to 0; the
text-to-audio papers report the plain mean cosine x 100, so this keeps float64 sums of cosines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def _cosine(audio_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Row-wise cosine similarity of [B, D] and [B, D] -> [B] float64."""
    a, t = audio_emb.to(torch.float64), text_emb.to(torch.float64)
    return F.cosine_similarity(a, t, dim=1, eps=1e-12)


class CLAPScore(Metric):
    """Mean cosine x 100 between paired audio and text embeddings.

    ``update(audio_emb [B, D], text_emb [B, D])``: row b of each belongs to the same clip.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("cos_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, audio_emb: Tensor, text_emb: Tensor) -> None:
        if audio_emb.ndim != 2 or audio_emb.shape != text_emb.shape:
            raise ValueError(
                "CLAPScore expects audio and text embeddings [B, D] of equal shape, got "
                f"{tuple(audio_emb.shape)} and {tuple(text_emb.shape)}"
            )
        cos = _cosine(audio_emb.detach(), text_emb.detach())
        self.cos_sum += cos.sum()
        self.count += cos.shape[0]

    def compute(self) -> Tensor:
        if float(self.count) == 0:
            raise ValueError("CLAPScore.compute called before any update")
        return 100.0 * self.cos_sum / self.count
