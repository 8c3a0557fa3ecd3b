"""`LoudnessPlanner`: caption and duration -> a per-frame loudness curve, all frames at once.

The curve is the control an LM with `control_dim` 1 follows (`siren_lightning.data.loudness`).
Drawing it is not autoregressive: every frame's value comes from the caption and the frame's
place in the clip together, so the decisions a frame-by-frame LM takes one rare frame at a time
(an event starts, ends, the level moves) are made here for the whole clip, with no history to
copy. A deviation from the paper (docs/model.md "A plan to follow").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from siren_lightning.models.blocks import DurationEmbedding, clip_timing


@dataclass
class PlannerConfig:
    """Sizes of a `LoudnessPlanner`.

    Attributes:
        text_dim: Dt, width of the text encoder's token states.
        width: D, a multiple of 4 (`DurationEmbedding`) and of num_heads.
        num_heads: attention heads.
        layers: transformer decoder layers (frames attend to each other and to the caption).
        control_dim: C, features per frame (1: loudness).
    """

    text_dim: int = 384
    width: int = 64
    num_heads: int = 4
    layers: int = 2
    control_dim: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoudnessPlanner(nn.Module):
    """Per-frame queries made of the clip timing features cross-attend to the caption's token
    states and self-attend to each other (not causally); a linear head gives each frame's
    control. Not squashed: a sigmoid saturates on silent frames (control 0) and its gradient
    vanishes there, so `plan_curves` clips the planned curves to [0, 1] instead."""

    def __init__(self, config: PlannerConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.timing = DurationEmbedding(c.width)
        self.text = nn.Linear(c.text_dim, c.width)
        layer = nn.TransformerDecoderLayer(
            c.width, c.num_heads, 4 * c.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerDecoder(layer, c.layers)
        self.head = nn.Linear(c.width, c.control_dim)

    def forward(
        self,
        text_states: Tensor,
        text_mask: Tensor,
        total_frames: Tensor,
        num_frames: int,
        frame_offset: Tensor | int = 0,
    ) -> Tensor:
        """Args:
            text_states: [B, L, Dt]; text_mask: [B, L] bool.
            total_frames: [B] frames of each whole clip.
            num_frames: T, the frames planned (from `frame_offset` on).

        Returns:
            [B, T, C] (the control's scale, unclipped).
        """
        queries = self.timing(clip_timing(total_frames, num_frames, frame_offset))  # [B, T, D]
        memory = self.text(text_states.to(queries.dtype))
        h = self.blocks(queries, memory, memory_key_padding_mask=~text_mask.bool())
        return self.head(h)
