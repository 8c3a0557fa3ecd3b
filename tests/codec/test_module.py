import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from siren_lightning.codec.dac_codec import DACCodec, DACConfig
from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec
from siren_lightning.stages.codec import CodecModule

SR = 16000


def tone_batch(n=4800, freqs=(200.0, 450.0, 900.0, 1500.0)):
    t = torch.arange(n) / SR
    audio = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in freqs])[:, None]
    mask = torch.ones(len(freqs), n, dtype=torch.bool)
    mask[-1, n // 2 :] = False  # one padded clip
    return {
        "audio": audio * mask[:, None],
        "audio_mask": mask,
        "ids": [f"c{i}" for i in range(len(freqs))],
        "captions": ["a tone"] * len(freqs),
    }


class FixedBatches(Dataset):
    def __init__(self, batch, steps):
        self.batch, self.steps = batch, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        return self.batch


def loader(batch, steps):
    return DataLoader(FixedBatches(batch, steps), batch_size=None)


def trainer(steps, **kw):
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def adam(lr):
    return lambda params: torch.optim.Adam(params, lr=lr)


def test_spectral_codec_loss_falls_and_kmeans_runs_after_warmup():
    torch.manual_seed(0)
    codec = SpectralRVQCodec(SpectralCodecConfig.tiny())
    module = CodecModule(
        codec, optimizer=adam(3e-3), warmup_steps=5, kmeans_init=True, kmeans_frames=256
    )
    batch = tone_batch()
    before = module.reconstruction_losses(
        codec(batch["audio"]), batch["audio"], batch["audio_mask"]
    )
    book = codec.quantizer.quantizers[0].codebook.weight.clone()
    trainer(40).fit(module, loader(batch, 40))
    assert bool(module.kmeans_done)
    assert not torch.equal(book, codec.quantizer.quantizers[0].codebook.weight)
    codec.train()
    after = module.reconstruction_losses(codec(batch["audio"]), batch["audio"], batch["audio_mask"])
    assert after["spec/log_mag_l1"] < 0.7 * before["spec/log_mag_l1"]
    assert after["spec/convergence"] < 0.8 * before["spec/convergence"]


def test_frame_energy_loss_is_the_per_frame_log_energy_gap():
    """A uniform +6 dB error on every bin of the real frames costs log(4) per frame."""
    codec = SpectralRVQCodec(SpectralCodecConfig.tiny())
    module = CodecModule(codec, energy_weight=0.5)
    batch = tone_batch()
    out = codec(batch["audio"])
    target = out["log_mag_target"]
    # Normalised log-magnitude: +log(2) / scale doubles every magnitude, i.e. 4x the energy.
    louder = {**out, "log_mag": target + math.log(2.0) / codec.log_scale}
    losses = module.reconstruction_losses(louder, batch["audio"], batch["audio_mask"])
    assert losses["spec/frame_energy"].item() == pytest.approx(math.log(4.0), rel=1e-4)
    exact = module.reconstruction_losses(
        {**out, "log_mag": target}, batch["audio"], batch["audio_mask"]
    )
    assert exact["spec/frame_energy"].item() == 0.0
    total = module.total_loss(losses) - module.total_loss(
        {k: v for k, v in losses.items() if k != "spec/frame_energy"}
    )
    assert total.item() == pytest.approx(0.5 * math.log(4.0), rel=1e-4)


@pytest.mark.slow
def test_dac_codec_mel_loss_falls_with_dac_losses():
    torch.manual_seed(0)
    codec = DACCodec(DACConfig.tiny(encoder_dim=4, decoder_dim=32, quantizer_dropout=0.0))
    module = CodecModule(codec, optimizer=adam(5e-3))
    batch = tone_batch(n=1280, freqs=(300.0, 800.0))
    codec.eval()
    before = module.reconstruction_losses(
        codec(batch["audio"]), batch["audio"], batch["audio_mask"]
    )
    trainer(10).fit(module, loader(batch, 10))
    codec.eval()
    after = module.reconstruction_losses(codec(batch["audio"]), batch["audio"], batch["audio_mask"])
    assert after["mel/loss"] < 0.85 * before["mel/loss"]
    assert set(after) == {"mel/loss", "waveform/loss", "vq/commitment_loss", "vq/codebook_loss"}


@pytest.mark.slow
def test_adversarial_step_updates_the_discriminator():
    torch.manual_seed(0)
    codec = DACCodec(DACConfig.tiny(encoder_dim=4, decoder_dim=16))
    module = CodecModule(codec, optimizer=adam(1e-3), adversarial=True)
    disc = [p.clone() for p in module.gan_loss.parameters()]
    trainer(1).fit(module, loader(tone_batch(n=1280, freqs=(300.0, 800.0)), 1))
    changed = [not torch.equal(a, b) for a, b in zip(disc, module.gan_loss.parameters())]
    assert any(changed)


def test_adversarial_with_spectral_codec_is_refused():
    with pytest.raises(ValueError, match="waveform codec"):
        CodecModule(SpectralRVQCodec(SpectralCodecConfig.tiny()), adversarial=True)


def test_validation_logs_mel_distance_and_si_sdr():
    torch.manual_seed(0)
    module = CodecModule(SpectralRVQCodec(SpectralCodecConfig.tiny()))
    batch = tone_batch()
    metrics = trainer(1).validate(module, loader(batch, 1), verbose=False)[0]
    assert {"val/mel_distance", "val/si_sdr", "val/log_mag_l1"} <= set(metrics)
    recon = module.resynthesize(batch["audio"])
    assert recon.shape == batch["audio"].shape
    assert math.isfinite(metrics["val/si_sdr"]) and metrics["val/mel_distance"] > 0


def test_checkpoint_carries_the_codec(tmp_path):
    from siren_lightning.codec.checkpoint import load_codec

    torch.manual_seed(0)
    module = CodecModule(SpectralRVQCodec(SpectralCodecConfig.tiny()), optimizer=adam(1e-3))
    t = trainer(2, default_root_dir=tmp_path)
    t.fit(module, loader(tone_batch(), 2))
    t.save_checkpoint(tmp_path / "codec.ckpt")
    loaded = load_codec(tmp_path / "codec.ckpt")
    assert loaded.sha256() == module.codec.sha256()


def test_decoder_only_fine_tuning_keeps_every_code():
    torch.manual_seed(0)
    codec = SpectralRVQCodec(SpectralCodecConfig.tiny())
    module = CodecModule(codec, optimizer=adam(3e-3), trainable=["decoder"])
    batch = tone_batch()
    codes = codec.encode(batch["audio"])
    frozen = {k: v.clone() for k, v in codec.state_dict().items() if not k.startswith("decoder.")}
    decoder = codec.decoder[0].weight.clone()
    trainer(5).fit(module, loader(batch, 5))
    assert not torch.equal(decoder, codec.decoder[0].weight)
    for name, value in codec.state_dict().items():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name
    assert torch.equal(codec.encode(batch["audio"]), codes)


@pytest.mark.parametrize("trainable", [[], ["decoder", "nonexistent"]])
def test_trainable_must_name_codec_submodules(trainable):
    codec = SpectralRVQCodec(SpectralCodecConfig.tiny())
    with pytest.raises(ValueError, match="trainable must name"):
        CodecModule(codec, trainable=trainable)
    with pytest.raises(ValueError, match="kmeans_init needs the quantizer"):
        CodecModule(codec, trainable=["decoder"], kmeans_init=True)
