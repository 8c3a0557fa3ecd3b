"""A fake LM whose logits are its text: gaps of the text-following metrics known by hand."""

import torch
from torch import nn

from siren_lightning.models.siren import SirenOutput


class TextLogitsLM(nn.Module):
    """Codebook 0's logits at every frame are the first text token's state [K]; `blind_books`
    more codebooks get zero logits (text-blind, CE log K).

    forward(codes [B, r, T], states [B, L, K], text_mask, mask [B, T]) -> SirenOutput with
    logits [B, 1 + blind_books, T, K].
    """

    def __init__(self, blind_books: int = 0):
        super().__init__()
        self.blind_books = blind_books
        self.register_buffer("codebook_table", torch.zeros(1))

    def forward(self, codes, states, text_mask, mask, control=None):
        b, _, t = codes.shape
        k, n = states.shape[-1], 1 + self.blind_books
        per_book = [states[:, 0]] + [torch.zeros(b, k)] * self.blind_books
        logits = torch.stack(per_book, 1)[:, :, None].expand(b, n, t, k)  # [B, n, T, K]
        if control is not None:  # frame t's control [B, T, K] joins every codebook's logits
            logits = logits + control[:, None, :t]
        return SirenOutput(logits, mask[:, None].expand(b, n, t), list(range(n)))
