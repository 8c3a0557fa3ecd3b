"""Tiny SirenLM builders shared by the model, pretraining and export tests."""

import zlib

import torch
from torch import nn

from siren_lightning.models.siren import SirenConfig, SirenLM
from siren_lightning.text.encoder import TextStates

TINY = dict(
    num_codebooks=6,
    codebook_size=16,
    latent_dim=8,
    group=2,
    width=32,
    num_heads=4,
    temporal_layers=2,
    decoder_layers=1,
    text_dim=12,
    mlp_hidden=64,
    dropout=0.0,
    max_frames=64,
)


def make_model(seed: int = 0, **overrides) -> SirenLM:
    torch.manual_seed(seed)
    config = SirenConfig(**{**TINY, **overrides})
    table = torch.randn(config.num_codebooks, config.codebook_size, config.latent_dim)
    return SirenLM(config, table).eval()


def make_text(batch: int, tokens: int = 5, dim: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, tokens, dim, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, tokens - 2 :] = False  # a shorter caption in the batch
    return states, mask


class TableCodec(nn.Module):
    """A small stand-in codec: decodes the sum of codebook vectors with a fixed linear map."""

    sample_rate, hop_length = 1600, 16

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)  # [r, K, D_lat]
        self.n_codebooks, self.codebook_size = table.shape[:2]
        self.synth = nn.Linear(table.shape[-1], self.hop_length)

    def codebook_table(self):
        return self.table

    def decode(self, codes):  # [B, r, T] -> [B, 1, T * hop]
        z = sum(self.table[j][codes[:, j]] for j in range(codes.shape[1]))  # [B, T, D_lat]
        return torch.tanh(self.synth(z)).flatten(1)[:, None]


class HashTextEncoder(nn.Module):
    """Deterministic stand-in for `TextEncoder`: one fixed random vector per word (CRC32)."""

    def __init__(self, dim: int = 12, vocab: int = 97) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.register_buffer("table", torch.randn(vocab, dim, generator=g))
        self.dim, self.vocab = dim, vocab
        self.backend, self.name_or_path, self.max_length = "hash", None, 16

    def encode(self, captions: list[str]) -> TextStates:
        words = [c.lower().split() or ["<empty>"] for c in captions]
        length = max(len(w) for w in words)
        ids = torch.zeros(len(captions), length, dtype=torch.long)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, ws in enumerate(words):
            ids[i, : len(ws)] = torch.tensor([zlib.crc32(w.encode()) % self.vocab for w in ws])
            mask[i, : len(ws)] = True
        states = self.table[ids] * mask[..., None]  # [B, L, Dt]
        pooled = states.sum(1) / mask.sum(1, keepdim=True)
        return TextStates(states, mask, pooled)


def make_planner_checkpoint(
    path, text_dim: int = 12, spread: float = 0.1, level: float = 0.7, seed: int = 3
):
    """A `PlannerModule` checkpoint at `path` whose planner draws levels that differ by frame
    (head weights of sd `spread`) around `level` (its bias); returns that planner in eval mode."""
    import lightning

    from siren_lightning.stages.planner import PlannerModule

    torch.manual_seed(seed)
    module = PlannerModule(str(path.parent), width=16, num_heads=2, layers=1, text_dim=text_dim)
    torch.nn.init.normal_(module.planner.head.weight, 0, spread)
    torch.nn.init.constant_(module.planner.head.bias, level)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(checkpoint, path)
    return module.planner.eval()


def make_planned_model(seed: int = 0, **overrides) -> SirenLM:
    """A tiny duration-conditioned SirenLM that reads one control value a frame, its control
    projections random (sd 0.5, not the zeros they start at) so that the curve moves the logits."""
    model = make_model(seed, control_dim=1, duration_conditioning=True, **overrides)
    with torch.no_grad():
        for expert in model.experts:
            expert.control.proj.weight.normal_(0, 0.5)
    return model
