import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from siren_testing import TableCodec, make_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from siren_lightning.callbacks.samples import AudioSamplesCallback
from siren_lightning.stages.pretrain import PretrainModule
from siren_lightning.text import TextEncoder


def test_samples_are_logged_as_audio_and_spectrograms_every_n_validations(tmp_path):
    torch.manual_seed(0)
    network = make_model(text_dim=384)
    codec = TableCodec(network.codebook_table.clone())
    module = PretrainModule(
        network, text_encoder=TextEncoder("minilm"), codec=codec, warmup_steps=1
    )
    batch = {
        "codes": torch.randint(16, (2, 6, 5)),
        "mask": torch.ones(2, 5, dtype=torch.bool),
        "captions": ["a high beep", "a low hum"],
    }
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    callback = AudioSamplesCallback(
        captions=["a high beep", "two clicks"], seconds=0.1, every_n_validations=2
    )
    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=1,
        num_sanity_val_steps=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert callback.validations == 4 and callback.logged == [1, 3]  # 1st and 3rd, no sanity check
    events = EventAccumulator(
        str(next(tmp_path.glob("tb/*"))), size_guidance={"audio": 0, "images": 0}
    )
    events.Reload()
    audio_tags = events.Tags()["audio"]
    assert sorted(audio_tags) == ["samples/0: a high beep", "samples/1: two clicks"]
    clip = events.Audio("samples/0: a high beep")
    assert [c.step for c in clip] == [1, 3] and clip[0].sample_rate == TableCodec.sample_rate
    assert "samples/spectrograms" in events.Tags()["images"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="every_n_validations"):
        AudioSamplesCallback(every_n_validations=0)
    with pytest.raises(ValueError, match="seconds"):
        AudioSamplesCallback(seconds=0)
