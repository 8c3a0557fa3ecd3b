import re
import shutil

import lightning as L
import numpy as np
import pytest
import torch

from siren_lightning.data import prepare
from siren_lightning.data.audio import write_audio
from siren_lightning.data.datamodule import SirenDataModule, TooManyBadClipsError
from siren_lightning.data.datasets import CodeClipDataset, collate_codes
from siren_lightning.data.manifest import read_manifest, write_manifest

HOP = 320


def _batches(dm: SirenDataModule, n: int, split: str = "train") -> list[dict]:
    loader = getattr(dm, f"{split}_dataloader")()
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_audio_batches_shapes_masks_and_seeded_crops(synthcaps_small):
    dm = SirenDataModule(
        train_manifest=str(synthcaps_small["train"]),
        val_manifest=str(synthcaps_small["val"]),
        mode="audio",
        crop_seconds=1.6,
        batch_size=8,
    )
    dm.setup("fit")
    L.seed_everything(1)
    first = _batches(dm, 3)
    L.seed_everything(1)
    again = _batches(dm, 3)
    for a, b in zip(first, again, strict=True):
        assert a["ids"] == b["ids"] and a["captions"] == b["captions"]
        assert torch.equal(a["audio"], b["audio"])
    batch = first[0]
    assert (
        batch["audio"].shape == (8, 1, int(1.6 * 16_000)) and batch["audio"].dtype == torch.float32
    )
    assert (
        batch["audio_mask"].shape == (8, int(1.6 * 16_000))
        and batch["audio_mask"].dtype == torch.bool
    )
    assert batch["skipped"] == [] and len(batch["captions"]) == 8
    # each clip's SynthCaps attributes travel with it (the tiny CLAP's attribute-swap loss)
    manifest = {c.id: c.attributes for c in read_manifest(synthcaps_small["train"])}
    assert batch["attributes"] == [manifest[i] for i in batch["ids"]]
    # padding is zero and masked out; every clip is at least 1 s long
    assert batch["audio"][:, 0][~batch["audio_mask"]].eq(0).all()
    assert batch["audio_mask"][:, :16_000].all()
    L.seed_everything(2)
    assert not torch.equal(_batches(dm, 1)[0]["audio"], first[0]["audio"])

    # validation: the clip's start and first caption, whatever the seed
    val = [_batches(dm, 1, "val")[0] for _ in range(2)]
    assert torch.equal(val[0]["audio"], val[1]["audio"])
    clips = {c.id: c for c in read_manifest(synthcaps_small["val"])}
    assert val[0]["captions"] == [clips[i].captions[0] for i in val[0]["ids"]]


def test_caption_batches(synthcaps_small):
    dm = SirenDataModule(
        train_manifest=str(synthcaps_small["train"]), mode="captions", batch_size=5
    )
    dm.setup("fit")
    batch = _batches(dm, 1)[0]
    assert set(batch) == {"captions", "ids", "seconds"} and len(batch["captions"]) == 5
    clips = {c.id: c for c in read_manifest(synthcaps_small["train"])}
    assert all(c in clips[i].captions for c, i in zip(batch["captions"], batch["ids"], strict=True))
    assert batch["seconds"] == [clips[i].duration for i in batch["ids"]]  # what predict makes


def test_code_batches_crop_pad_and_text_states():
    items = [
        {
            "id": "long",
            "codes": torch.arange(12 * 500).reshape(12, 500).short(),
            "captions": ["a", "b"],
        },
        {"id": "short", "codes": torch.ones(12, 7, dtype=torch.int16), "captions": ["c"]},
    ]
    ds = CodeClipDataset(items, crop_frames=300, train=True)
    torch.manual_seed(0)
    batch = collate_codes([ds[0], ds[1]])
    assert batch["codes"].shape == (2, 12, 300) and batch["codes"].dtype == torch.long
    assert batch["mask"].sum(1).tolist() == [300, 7]
    start = int(batch["codes"][0, 0, 0])
    assert torch.equal(batch["codes"][0], items[0]["codes"][:, start : start + 300].long())
    assert batch["codes"][1, :, 7:].eq(0).all()
    val = CodeClipDataset(items, crop_frames=300, train=False)
    assert int(val[0]["codes"][0, 0]) == 0 and val[0]["caption"] == "a"

    for it, n in zip(items, (3, 5), strict=True):
        it["text_states"] = [torch.randn(n, 4) for _ in it["captions"]]
    batch = collate_codes([val[0], val[1]])
    assert batch["text_states"].shape == (2, 5, 4)
    assert batch["text_mask"].sum(1).tolist() == [3, 5]
    assert torch.equal(batch["text_states"][0, :3], items[0]["text_states"][0])


class _MeanAudio(L.LightningModule):
    """Consumes audio batches; records the ids it trained on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[str] = []

    def training_step(self, batch, _):
        self.seen += batch["ids"]
        return (self.w - batch["audio"].mean()).pow(2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _with_bad_clips(src, tmp_path):
    """A copy of a manifest where one clip is missing, one corrupt and one silent."""
    clips = read_manifest(src)
    for clip in clips:
        shutil.copy(clip.audio, tmp_path / clip.audio.name)
        clip.audio = tmp_path / clip.audio.name
    clips[0].audio.unlink()
    clips[1].audio.write_bytes(b"RIFF....WAVEfmt corrupt")
    write_audio(clips[2].audio, np.zeros(16_000), 16_000)
    write_manifest(tmp_path / "bad.jsonl", clips)
    return tmp_path / "bad.jsonl", [c.id for c in clips[:3]], len(clips)


def test_bad_clips_are_skipped_counted_and_the_run_goes_on(synthcaps_small, tmp_path, caplog):
    manifest, bad_ids, total = _with_bad_clips(synthcaps_small["train"], tmp_path)
    dm = SirenDataModule(
        train_manifest=str(manifest), crop_seconds=1.0, batch_size=2, max_skip_fraction=0.1
    )
    model = _MeanAudio()
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=dm)
    assert sorted(model.seen) == sorted(
        c.id for c in read_manifest(manifest) if c.id not in bad_ids
    )
    assert dm.skips.skipped["train"] == {
        bad_ids[0]: "missing file",
        bad_ids[1]: dm.skips.skipped["train"][bad_ids[1]],
        bad_ids[2]: "silent",
    }
    assert dm.skips.skipped["train"][bad_ids[1]].startswith("unreadable")
    assert f"train: 3 of {total} skipped" in dm.skips.summary()
    assert any(bad_ids[2] in r.message and "silent" in r.message for r in caplog.records)


def test_too_many_bad_clips_stop_the_run_with_a_clear_message(synthcaps_small, tmp_path):
    manifest, bad_ids, total = _with_bad_clips(synthcaps_small["train"], tmp_path)
    dm = SirenDataModule(
        train_manifest=str(manifest), crop_seconds=1.0, batch_size=4, max_skip_fraction=0.05
    )
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(
        TooManyBadClipsError, match=rf"3 of {total} train clips are unusable"
    ) as info:
        trainer.fit(_MeanAudio(), datamodule=dm)
    # The advice is true: the command it gives writes a manifest the run takes without a skip.
    advice = re.search(r"`siren (prepare jsonl [^`]*)`", str(info.value)).group(1)
    clean = tmp_path / "clean.jsonl"
    argv = advice.replace("IN", str(manifest)).replace("OUT", str(clean)).split()[1:]
    assert prepare.main(argv) == 0
    assert len(read_manifest(clean)) == total - 3
    dm = SirenDataModule(
        train_manifest=str(clean), crop_seconds=1.0, batch_size=4, max_skip_fraction=0.0
    )
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(_MeanAudio(), datamodule=dm)
    assert not any(dm.skips.skipped.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_seconds": 1.01}, "not a whole number of codec frames"),
        ({"mode": "video"}, "mode must be one of"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"max_skip_fraction": 1.5}, "max_skip_fraction"),
    ],
)
def test_bad_config_values_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SirenDataModule(**kwargs)


def test_missing_split_names_the_config_key():
    dm = SirenDataModule(mode="codes")
    dm.setup("fit")
    with pytest.raises(ValueError, match="set train_cache"):
        dm.train_dataloader()
