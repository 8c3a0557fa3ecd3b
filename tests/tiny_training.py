"""A tiny stage-1 training run in its own process, for the DDP, resume-after-kill and NaN tests.

    python tests/tiny_training.py --root DIR [--devices 2] [--batch 8] [--steps 30] ...

Builds a code cache of random clips under DIR/cache (once), trains the tiny SirenLM of
`tests/models/siren_testing.py` with `PretrainModule` on `SirenDataModule`, and writes
DIR/losses.<rank>.jsonl (one {"step", "loss", "ids"} line per training batch, flushed at once)
and DIR/final.<rank>.pt (the LM's parameters at the end). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
from siren_testing import make_model  # noqa: E402

from siren_lightning.callbacks.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from siren_lightning.callbacks.guards import NaNGuard  # noqa: E402
from siren_lightning.callbacks.seeding import StepSeed  # noqa: E402
from siren_lightning.data.code_cache import finish_cache, read_part, write_part  # noqa: E402
from siren_lightning.data.datamodule import SirenDataModule  # noqa: E402
from siren_lightning.stages.pretrain import PretrainModule  # noqa: E402

SAMPLE_RATE, HOP = 1000, 10  # 100 frames a second: crop 0.12 s = 12 frames


def make_cache(root: Path, clips: int = 24, frames: int = 20, r: int = 6, k: int = 16) -> None:
    """Random clips of `frames` frames (all longer than the crop), 2 captions with states each."""
    if (root / "index.json").is_file():
        return
    g = torch.Generator().manual_seed(123)
    root.mkdir(parents=True, exist_ok=True)
    items = [
        {
            "id": f"clip{i:03d}",
            "captions": [f"caption {i} a", f"caption {i} b"],
            "codes": torch.randint(k, (r, frames), generator=g),
            "samples": frames * HOP,
            "text_states": [torch.randn(3 + (i + j) % 3, 12, generator=g) for j in range(2)],
        }
        for i in range(clips)
    ]
    half = clips // 2
    for s, part in enumerate((items[:half], items[half:])):
        write_part(root, s, part, {"codec_sha256": "test-codec"})
    meta = {"codec_sha256": "test-codec", "sample_rate": SAMPLE_RATE, "hop_length": HOP}
    parts = [read_part(root, s) for s in range(2)]
    finish_cache(root, parts, {**meta, "n_codebooks": r, "codebook_size": k})


class LossLog(L.Callback):
    """One JSON line per training batch, written and flushed at once (survives a SIGKILL)."""

    def __init__(self, root: Path):
        self.root = root

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = self.root / f"losses.{trainer.global_rank}.jsonl"
        line = {"step": trainer.global_step, "loss": float(outputs["loss"]), "ids": batch["ids"]}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu() for k, v in pl_module.network.state_dict().items()}
        torch.save(state, self.root / f"final.{trainer.global_rank}.pt")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="per process")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--nan-at-step", type=int, default=-1)
    p.add_argument("--nan-rank", type=int, default=-1, help="poison only this rank (-1: all)")
    p.add_argument("--strategy", default="ddp")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    make_cache(args.root / "cache")
    L.seed_everything(0, verbose=False)
    network = make_model(seed=0, dropout=args.dropout).train()
    module = PretrainModule(
        network,
        optimizer={"init_args": {"lr": 3e-3}},
        warmup_steps=2,
        total_steps=args.steps,
        caption_dropout=0.0,
    )
    if args.nan_at_step >= 0:
        step_fn = module.training_step

        def poisoned(batch, batch_idx):
            loss = step_fn(batch, batch_idx)
            rank_hit = args.nan_rank in (-1, module.global_rank)
            hit = rank_hit and module.global_step == args.nan_at_step
            return loss * float("nan") if hit else loss

        module.training_step = poisoned
    data = SirenDataModule(
        mode="codes",
        train_cache=str(args.root / "cache"),
        sample_rate=SAMPLE_RATE,
        hop_length=HOP,
        crop_seconds=0.12,
        batch_size=args.batch,
    )
    callbacks = [StepSeed(), NaNGuard(), LossLog(args.root)]
    if args.ckpt_every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=args.root / "checkpoints",
                save_last=True,
                every_n_train_steps=args.ckpt_every,
                save_top_k=-1,
            )
        )
    strategy = args.strategy
    if strategy == "fsdp":
        from siren_lightning.strategies import SirenFSDPStrategy

        strategy = SirenFSDPStrategy()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy if args.devices > 1 else "auto",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=bool(args.ckpt_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        default_root_dir=args.root,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    ckpt = args.root / "checkpoints" / "last.ckpt" if args.resume else None
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
