"""TinyCLAPModule: contrastive training of a `TinyCLAP` on audio batches, and its training tool.

Batches are SirenDataModule audio batches: ``audio [B, 1, N]``, ``audio_mask [B, N]``,
``captions`` (B strings). Loss: symmetric InfoNCE over the batch, with every clip whose caption
is identical counted as a positive (SynthCaps repeats captions). Validation logs text-to-audio
retrieval recall@1 / @5 over the whole split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from siren_lightning.metrics.tiny_clap import TinyCLAP, TinyCLAPConfig, save_tiny_clap


def _contrastive_loss(logits: Tensor, captions: list[str]) -> Tensor:
    """Symmetric cross-entropy of [B, B] logits against caption-equality soft targets."""
    same = torch.tensor([[a == b for b in captions] for a in captions], device=logits.device)
    targets = same.float() / same.float().sum(1, keepdim=True)
    audio_to_text = F.cross_entropy(logits, targets)
    text_to_audio = F.cross_entropy(logits.T, targets)
    return 0.5 * (audio_to_text + text_to_audio)


def retrieval_recall(text_emb: Tensor, audio_emb: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Text-to-audio recall@k: caption i should rank its own clip i among the top k.

    Args:
        text_emb, audio_emb: normalised [B, D], row i of each from the same clip.
    """
    sims = text_emb @ audio_emb.T  # [B, B]
    own = sims.diagonal().unsqueeze(1)
    rank = (sims > own).sum(1)  # clips scored strictly above the right one
    return {f"r{k}": float((rank < k).float().mean()) for k in ks}


class TinyCLAPModule(L.LightningModule):
    """Trains a TinyCLAP (audio encoder and both projections; the text encoder stays frozen).

    Args:
        net: the TinyCLAP.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (matrices only).
    """

    def __init__(self, net: TinyCLAP, lr: float = 2e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self._val: list[tuple[Tensor, Tensor]] = []

    def _step(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        audio, mask, captions = batch["audio"], batch["audio_mask"], batch["captions"]
        audio_emb = self.net.encode_audio(audio, mask)
        text_emb = self.net.encode_text(captions)
        scale = self.net.logit_scale.clamp(max=4.6052).exp()  # at most 100
        loss = _contrastive_loss(scale * audio_emb @ text_emb.T, captions)
        return loss, audio_emb, text_emb

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["captions"]))
        self.log("train/logit_scale", self.net.logit_scale.exp(), batch_size=1)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, audio_emb, text_emb = self._step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["captions"]))
        self._val.append((text_emb.detach().cpu(), audio_emb.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        text = torch.cat([t for t, _ in self._val])
        audio = torch.cat([a for _, a in self._val])
        self._val.clear()
        for name, value in retrieval_recall(text, audio).items():
            self.log(f"val/{name}", value, prog_bar=True)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        other = [p for p in params if p.ndim < 2]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": other, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )


@torch.no_grad()
def manifest_retrieval(net: TinyCLAP, manifest: str | Path, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Text-to-audio recall@k over a manifest's clips (whole clips, first captions)."""
    from siren_lightning.data.audio import load_audio
    from siren_lightning.data.manifest import read_manifest

    net.eval()
    clips = read_manifest(manifest)
    audio = torch.cat(
        [net.encode_audio(load_audio(c.audio, net.config.sample_rate)[None]) for c in clips]
    )
    text = net.encode_text([c.captions[0] for c in clips])
    return retrieval_recall(text, audio, ks) | {"clips": len(clips)}


def class_prompts(clips) -> list[str]:
    """One prompt per distinct combination of a clip's string attributes (e.g. SynthCaps'
    source, pitch, count, envelope): the first caption of its first clip; the classes whose
    zero-shot similarities serve as logits for KL / IS. Without attributes: distinct captions."""
    prompts: dict[tuple, str] = {}
    for clip in clips:
        attrs = tuple(sorted((k, v) for k, v in clip.attributes.items() if isinstance(v, str)))
        key = attrs if attrs else (clip.captions[0],)
        prompts.setdefault(key, clip.captions[0])
    return [prompts[k] for k in sorted(prompts)]


class SaveTinyCLAPEachEpoch(L.Callback):
    """Writes the tiny CLAP checkpoint after every validation, so an interrupted run keeps its
    last finished epoch."""

    def __init__(self, path: str | Path, prompts: list[str]) -> None:
        self.path, self.prompts = Path(path), prompts

    def on_validation_epoch_end(self, trainer: L.Trainer, module: TinyCLAPModule) -> None:
        if trainer.sanity_checking:
            return
        sha = save_tiny_clap(module.net, self.path, self.prompts)
        done = {k: float(v) for k, v in trainer.callback_metrics.items()}
        summary = {"sha256": sha, "epoch": trainer.current_epoch, "finished": False} | done
        self.path.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str]) -> int:
    """`siren train-tiny-clap`: train a tiny CLAP on a manifest pair and save it."""
    parser = argparse.ArgumentParser(prog="siren train-tiny-clap", description=main.__doc__)
    parser.add_argument("--train", required=True, help="train manifest (JSONL)")
    parser.add_argument("--val", required=True, help="validation manifest (JSONL)")
    parser.add_argument("--out", required=True, help="output checkpoint (.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-seconds", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test", default=None, help="held-out manifest for recall@k")
    parser.add_argument("--init", default=None, help="start from this tiny CLAP checkpoint")
    args = parser.parse_args(argv)

    from siren_lightning.data.datamodule import SirenDataModule
    from siren_lightning.data.manifest import read_manifest

    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True)
    overrides = {} if args.embed_dim is None else {"embed_dim": args.embed_dim}
    config = TinyCLAPConfig.from_name(args.size, **overrides)
    net = TinyCLAP(config)
    if args.init:
        net.load_state_dict(
            torch.load(args.init, map_location="cpu", weights_only=True)["state_dict"]
        )
    prompts = class_prompts(read_manifest(args.train))
    data = SirenDataModule(
        train_manifest=args.train,
        val_manifest=args.val,
        mode="audio",
        sample_rate=config.sample_rate,
        hop_length=config.hop_length,
        crop_seconds=args.crop_seconds,
        batch_size=args.batch_size,
    )
    module = TinyCLAPModule(net, lr=args.lr)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(str(Path(args.out).parent), name="tiny_clap_logs"),
        enable_checkpointing=False,
        callbacks=[SaveTinyCLAPEachEpoch(args.out, prompts)],
        log_every_n_steps=10,
    )
    trainer.fit(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    sha = save_tiny_clap(net.eval(), args.out, prompts)
    summary = {"out": args.out, "sha256": sha, "seed": args.seed, "args": vars(args)}
    summary |= {"finished": True} | metrics
    if args.test:
        summary["test_retrieval"] = manifest_retrieval(net, args.test)
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0
