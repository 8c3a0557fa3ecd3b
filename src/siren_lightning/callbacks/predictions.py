"""`siren predict`'s output: each predicted clip as a WAV, and one record a clip.

`PretrainModule.predict_step` generates; this writer saves what it returns, batch by batch, so a
long prediction keeps what it has made if it stops. `siren predict` adds one (into
`<default_root_dir>/predictions`) when the config names no prediction writer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import soundfile as sf
from lightning.pytorch.callbacks import BasePredictionWriter


class AudioPredictionWriter(BasePredictionWriter):
    """Writes `<id>.wav` (16-bit PCM at the codec's rate) for every predicted clip, and its record
    (id, caption, path, seconds, seed, sample_rate, control, sampling) to `generations.jsonl`
    (`generations.rank<k>.jsonl` on ranks > 0), the layout `siren generate` writes and `siren
    evaluate --generated` reads.

    Args:
        out_dir: the folder (default: `<trainer.default_root_dir>/predictions`).
    """

    def __init__(self, out_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.written: list[Path] = []

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(self.out_dir or Path(trainer.default_root_dir) / "predictions")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self._records = folder / (
            "generations.jsonl"
            if trainer.global_rank == 0
            else f"generations.rank{trainer.global_rank}.jsonl"
        )
        self._records.write_text("")  # a new prediction replaces the old records

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        folder, rate = self._folder(trainer), prediction["sample_rate"]
        with open(self._records, "a") as f:
            for i, clip_id in enumerate(prediction["ids"]):
                path = folder / f"{clip_id}.wav"
                audio = prediction["audio"][i]
                sf.write(str(path), audio.numpy(), rate, subtype="PCM_16")
                self.written.append(path)
                record = {
                    "id": clip_id,
                    "caption": prediction["captions"][i],
                    "path": str(path.resolve()),
                    "seconds": prediction["seconds"][i],
                    "samples": int(audio.numel()),
                    "seed": prediction["seed"],
                    "sample_rate": rate,
                    "control": prediction["control"],
                    **prediction["sampling"],
                }
                f.write(json.dumps(record) + "\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"wrote {len(self.written)} WAVs and {self._records}")
