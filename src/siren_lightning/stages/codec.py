"""CodecModule: trains or fine-tunes a codec (DACCodec or SpectralRVQCodec) with DAC's losses.

Losses (weights from DAC's conf/base.yml, DESIGN.md section 4):
- waveform codecs (DAC): 7-scale mel loss (`dac.nn.loss.MelSpectrogramLoss`), waveform L1
  (`dac.nn.loss.L1Loss`, weight 0 in DAC's recipe, logged), optional adversarial + feature
  matching losses (`dac.nn.loss.GANLoss` over `dac.model.Discriminator`, off by default);
- the spectral codec (no differentiable waveform: Griffin-Lim runs after training): L1 between
  predicted and true log-magnitudes and between their log-mel projections;
- both: RVQ commitment and codebook losses; quantizer dropout lives in the RVQ itself.
Optional k-means initialisation of the codebooks after an autoencoder warm-up (quantizer bypassed).

Validation resynthesises through the codes (eval mode, all codebooks) and logs the multi-scale mel
distance, SI-SDR (torchmetrics), example audio and spectrograms.

Letters: B batch, N samples, T frames, F frequency bins, D latent width.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torchaudio
from audiotools import AudioSignal
from dac.model import Discriminator
from dac.nn.loss import GANLoss, L1Loss, MelSpectrogramLoss
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.audio import ScaleInvariantSignalDistortionRatio

from siren_lightning.codec.base import RVQCodec
from siren_lightning.codec.spectral_codec import SpectralRVQCodec, kmeans_init_quantizer
from siren_lightning.stages.chassis import check_optimizer, optimizer_factory

# DAC's recipe (its conf/base.yml, DESIGN.md 4).
CODEC_OPTIMIZER = {
    "class_path": "torch.optim.AdamW",
    "init_args": {"lr": 1e-4, "betas": (0.8, 0.99)},
}


def dac_mel_loss() -> MelSpectrogramLoss:
    """DAC's 7-scale mel loss (windows 32..2048, 5..320 mels, log only, clamp 1e-5)."""
    return MelSpectrogramLoss(
        n_mels=[5, 10, 20, 40, 80, 160, 320],
        window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
        mel_fmin=[0.0] * 7,
        mel_fmax=[None] * 7,
        pow=1.0,
        clamp_eps=1.0e-5,
        mag_weight=0.0,
    )


class CodecModule(pl.LightningModule):
    """Training / fine-tuning of a codec.

    Args:
        codec: the network (`DACCodec` or `SpectralRVQCodec`), chosen by the YAML's class_path.
        optimizer: the optimizer over the codec's (and the discriminator's) parameters, from
            YAML; default `CODEC_OPTIMIZER`, DAC's AdamW(lr 1e-4, betas (0.8, 0.99)).
        lr_gamma: ExponentialLR decay per step (DAC: 0.999996).
        mel_weight, l1_weight, commitment_weight, codebook_weight: loss weights (DAC: 15, 0, 0.25, 1).
        spectral_weight: weight of the log-magnitude + log-mel L1 (spectral codec only).
        convergence_weight: weight of the spectral convergence on compressed magnitudes
            (spectral codec only): log-domain L1 is median-seeking and predicts the floor where a
            tone's loud bins are uncertain (measured: sirens decoded 20-40 dB too quiet); this
            mean-seeking term keeps their energy.
        energy_weight: weight of the L1 between predicted and true per-frame log-energies
            (spectral codec only). SynthCaps' onset count and envelope direction are read off the
            frame RMS, and a quiet-decoded tone splits one event into several: this term aims
            at exactly that level contour (by Parseval, frame energy = sum of |S|^2 over bins).
        adversarial: add DAC's discriminator (waveform codecs only); adv_weight / feature_weight
            are DAC's 1 and 2.
        warmup_steps: steps with the quantizer bypassed (plain autoencoder) before k-means.
        kmeans_init: initialise the codebooks by k-means on encoder latents (residual by residual)
            at step `warmup_steps`, from up to `kmeans_frames` latent frames of recent batches.
        grad_clip: gradient-norm clip (None: off).
        trainable: names of the codec's submodules to train (e.g. [decoder]); the rest
            is frozen. Freezing the encoder and quantizer keeps every code (and every code cache's
            content) as it was while the decoder improves. None trains everything.
        n_log_examples: validation clips written to TensorBoard as audio and spectrograms.
    """

    def __init__(
        self,
        codec: nn.Module,
        optimizer: OptimizerCallable = CODEC_OPTIMIZER,
        lr_gamma: float = 0.999996,
        mel_weight: float = 15.0,
        l1_weight: float = 0.0,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        spectral_weight: float = 1.0,
        convergence_weight: float = 1.0,
        energy_weight: float = 0.0,
        adversarial: bool = False,
        adv_weight: float = 1.0,
        feature_weight: float = 2.0,
        warmup_steps: int = 0,
        kmeans_init: bool = False,
        kmeans_frames: int = 16384,
        grad_clip: float | None = 1000.0,
        trainable: list[str] | None = None,
        n_log_examples: int = 2,
    ) -> None:
        super().__init__()
        if not isinstance(codec, RVQCodec):
            raise TypeError(f"CodecModule: codec must be an RVQCodec, got {type(codec).__name__}")
        weights = dict(
            mel_weight=mel_weight,
            l1_weight=l1_weight,
            commitment_weight=commitment_weight,
            codebook_weight=codebook_weight,
            spectral_weight=spectral_weight,
            convergence_weight=convergence_weight,
            adv_weight=adv_weight,
            feature_weight=feature_weight,
            warmup_steps=warmup_steps,
            n_log_examples=n_log_examples,
        )
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"CodecModule: {name} must be >= 0, got {value}")
        if not 0.0 < lr_gamma <= 1.0:
            raise ValueError(f"CodecModule: lr_gamma must be in (0, 1], got {lr_gamma}")
        if kmeans_frames < 1:
            raise ValueError(f"CodecModule: kmeans_frames must be >= 1, got {kmeans_frames}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"CodecModule: grad_clip must be positive or None, got {grad_clip}")
        if trainable is not None:
            children = dict(codec.named_children())
            unknown = [n for n in trainable if children.get(n) is None]
            if unknown or not trainable:
                raise ValueError(
                    f"CodecModule: trainable must name some of the codec's submodules "
                    f"{sorted(n for n, m in children.items() if m is not None)}, got {trainable}"
                )
            if kmeans_init and "quantizer" not in trainable:
                raise ValueError("CodecModule: kmeans_init needs the quantizer in trainable")
            for name, child in children.items():
                child.requires_grad_(name in trainable)
        self.save_hyperparameters(ignore=["codec", "optimizer"])
        self.codec = codec
        self.make_optimizer = optimizer_factory(optimizer, CODEC_OPTIMIZER)
        check_optimizer(self.make_optimizer, "CodecModule")
        self.spectral = isinstance(codec, SpectralRVQCodec)
        if adversarial and self.spectral:
            raise ValueError("CodecModule: adversarial training needs a waveform codec (DAC)")
        self.automatic_optimization = False
        self.mel_loss = dac_mel_loss()
        self.l1_loss = L1Loss()
        self.gan_loss = (
            GANLoss(Discriminator(sample_rate=codec.sample_rate)) if adversarial else None
        )
        if self.spectral:
            fb = torchaudio.functional.melscale_fbanks(
                codec.n_freq, 0.0, codec.sample_rate / 2, 80, codec.sample_rate, norm="slaney"
            )
            self.register_buffer("mel_fb", fb, persistent=False)  # [F, 80]
        # Set once k-means has run; persistent so a resumed run does not redo it.
        self.register_buffer("kmeans_done", torch.tensor(not kmeans_init))
        self._latent_pool: list[torch.Tensor] = []
        self.val_mel = MeanMetric()
        self.val_sisdr = ScaleInvariantSignalDistortionRatio()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets `load_codec(<ckpt>)` rebuild the codec without the YAML.
        checkpoint["codec_spec"] = self.codec.spec()

    # ----------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        make = self.make_optimizer
        opt_g = make([p for p in self.codec.parameters() if p.requires_grad])
        sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=self.hparams.lr_gamma)
        if self.gan_loss is None:
            return [opt_g], [sched_g]
        opt_d = make(self.gan_loss.parameters())
        sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=self.hparams.lr_gamma)
        return [opt_g, opt_d], [sched_g, sched_d]

    def _quantizing(self) -> bool:
        return self.global_step >= self.hparams.warmup_steps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        audio = self._masked_audio(batch)  # [B, 1, N]
        opts = self.optimizers()
        opt_g = opts[0] if isinstance(opts, list) else opts
        if not bool(self.kmeans_done):
            self._collect_or_init(audio)
        out = self.codec(audio, quantize=self._quantizing())
        losses = self.reconstruction_losses(out, audio, batch.get("audio_mask"))
        if self.gan_loss is not None:
            opt_d = opts[1]
            fake, real = AudioSignal(out["audio"], self.codec.sample_rate), self._signal(audio)
            loss_d = self.gan_loss.discriminator_loss(fake, real)
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            self._clip(opt_d)
            opt_d.step()
            losses["adv/disc_loss"] = loss_d.detach()
            gen, feat = self.gan_loss.generator_loss(fake, real)
            losses["adv/gen_loss"], losses["adv/feat_loss"] = gen, feat
        loss = self.total_loss(losses)
        opt_g.zero_grad()
        self.manual_backward(loss)
        self._clip(opt_g)
        opt_g.step()
        for sched in self._schedulers():
            sched.step()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=audio.shape[0])
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=audio.shape[0])
        return loss.detach()

    def _schedulers(self) -> list:
        scheds = self.lr_schedulers()
        if scheds is None:
            return []
        return scheds if isinstance(scheds, list) else [scheds]

    def _clip(self, opt) -> None:
        if self.hparams.grad_clip is not None:
            self.clip_gradients(opt, self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def reconstruction_losses(
        self, out: dict, audio: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The codec's unweighted losses for one training pass (see the module docstring)."""
        losses = {
            "vq/commitment_loss": out["vq/commitment_loss"],
            "vq/codebook_loss": out["vq/codebook_loss"],
        }
        if self.spectral:
            pred, target = out["log_mag"], out["log_mag_target"]  # [B, F, T]
            frames = self._frame_mask(mask, pred)  # [B, 1, T]
            losses["spec/log_mag_l1"] = _masked_l1(pred, target, frames)
            losses["spec/log_mel_l1"] = _masked_l1(
                self._log_mel(pred), self._log_mel(target), frames
            )
            mag_pred = self.codec.magnitude(pred.clamp(max=3.0))
            mag_target = self.codec.magnitude(target)
            # On power-compressed magnitudes (|S|^0.3): linear enough to weigh a tone's loud bins,
            # with a gradient that does not vanish where the prediction is still far too quiet.
            losses["spec/convergence"] = _spectral_convergence(
                mag_pred.pow(0.3), mag_target.pow(0.3), frames
            )
            losses["spec/frame_energy"] = _masked_l1(
                _log_energy(mag_pred), _log_energy(mag_target), frames
            )
        else:
            recon = out["audio"] * (mask[:, None] if mask is not None else 1.0)
            x, y = AudioSignal(recon, self.codec.sample_rate), self._signal(audio)
            losses["mel/loss"] = self.mel_loss(x, y)
            losses["waveform/loss"] = self.l1_loss(x, y)
        return losses

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        weights = {
            "vq/commitment_loss": hp.commitment_weight,
            "vq/codebook_loss": hp.codebook_weight,
            "spec/log_mag_l1": hp.spectral_weight,
            "spec/log_mel_l1": hp.spectral_weight,
            "spec/convergence": hp.convergence_weight,
            "spec/frame_energy": hp.energy_weight,
            "mel/loss": hp.mel_weight,
            "waveform/loss": hp.l1_weight,
            "adv/gen_loss": hp.adv_weight,
            "adv/feat_loss": hp.feature_weight,
        }
        return sum(weights[k] * v for k, v in losses.items() if k in weights)

    def _log_mel(self, log_mag: torch.Tensor) -> torch.Tensor:
        """Normalised log-magnitude [B, F, T] -> log-mel [B, 80, T]."""
        mag = self.codec.magnitude(log_mag)
        mel = torch.einsum("bft,fm->bmt", mag, self.mel_fb)
        return mel.clamp_min(1e-5).log()

    def _frame_mask(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Audio mask [B, N] -> frame mask [B, 1, T] (a frame is real if its first sample is)."""
        if mask is None:
            return torch.ones_like(like[:, :1])
        hop, t = self.codec.hop_length, like.shape[-1]
        frames = nn.functional.pad(mask, (0, t * hop - mask.shape[-1]))[:, ::hop]  # [B, T]
        return frames[:, None].to(like.dtype)

    @torch.no_grad()
    def _collect_or_init(self, audio: torch.Tensor) -> None:
        """Pool latent frames during warm-up; run k-means at step `warmup_steps`."""
        z = self.codec.encode_latent(self.codec.pad_to_hop(audio))  # [B, D, T]
        self._latent_pool.append(z.transpose(1, 2).reshape(-1, z.shape[1]).cpu())  # [B*T, D]
        pool = torch.cat(self._latent_pool)[-self.hparams.kmeans_frames :]
        self._latent_pool = [pool]
        if self._quantizing():
            history = kmeans_init_quantizer(self.codec.quantizer, pool)
            self.kmeans_done.fill_(True)
            self._latent_pool = []
            self.print(f"k-means codebook init on {len(pool)} frames; residual energy {history}")

    # ------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        audio = self._masked_audio(batch)
        recon = self.resynthesize(audio)
        self.val_mel.update(self.mel_loss(self._signal(recon), self._signal(audio)), audio.shape[0])
        self.val_sisdr.update(recon[:, 0], audio[:, 0])
        self.log("val/mel_distance", self.val_mel, batch_size=audio.shape[0])
        self.log("val/si_sdr", self.val_sisdr, batch_size=audio.shape[0])
        if self.spectral:
            out = self.codec(audio)
            frames = self._frame_mask(batch.get("audio_mask"), out["log_mag"])
            l1 = _masked_l1(out["log_mag"], out["log_mag_target"], frames)
            self.log("val/log_mag_l1", l1, batch_size=audio.shape[0])
        if batch_idx == 0:
            self._log_examples(audio, recon)

    @torch.no_grad()
    def resynthesize(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """Audio [B, 1, N] -> codes -> audio [B, 1, N] (first `n_quantizers` codebooks)."""
        codes = self.codec.encode(audio, n_quantizers)
        return self.codec.decode(codes)[..., : audio.shape[-1]]

    def _log_examples(self, audio: torch.Tensor, recon: torch.Tensor) -> None:
        logger = self.logger
        writer = getattr(logger, "experiment", None) if logger is not None else None
        if writer is None or not hasattr(writer, "add_audio"):
            return
        sr = self.codec.sample_rate
        for i in range(min(self.hparams.n_log_examples, audio.shape[0])):
            for tag, x in (("original", audio[i, 0]), ("resynthesis", recon[i, 0])):
                writer.add_audio(f"val/example{i}/{tag}", x.cpu().float(), self.global_step, sr)
            writer.add_figure(
                f"val/example{i}/spectrograms",
                _spectrogram_figure(audio[i, 0], recon[i, 0], sr),
                self.global_step,
            )

    # ----------------------------------------------------------------------------------- batches
    @staticmethod
    def _masked_audio(batch: dict) -> torch.Tensor:
        audio = batch["audio"]
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(
                f"CodecModule: batch['audio'] must be [B, 1, N], got {tuple(audio.shape)}"
            )
        mask = batch.get("audio_mask")
        return audio if mask is None else audio * mask[:, None].to(audio.dtype)

    def _signal(self, audio: torch.Tensor) -> AudioSignal:
        return AudioSignal(audio, self.codec.sample_rate)


def _masked_l1(pred: torch.Tensor, target: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over real frames: [B, C, T], [B, C, T], [B, 1, T] -> []."""
    return ((pred - target).abs() * frames).sum() / (frames.sum() * pred.shape[1]).clamp_min(1.0)


def _log_energy(mag: torch.Tensor) -> torch.Tensor:
    """Per-frame log-energy of linear magnitudes: [B, F, T] -> [B, 1, T]."""
    return mag.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-8).log()


def _spectral_convergence(
    pred: torch.Tensor, target: torch.Tensor, frames: torch.Tensor
) -> torch.Tensor:
    """Mean over clips of ||target - pred||_F / ||target||_F on real frames: [B, F, T] x2, [B, 1, T]."""
    err = ((target - pred) * frames).pow(2).sum(dim=(1, 2)).sqrt()
    ref = (target * frames).pow(2).sum(dim=(1, 2)).sqrt().clamp_min(1e-5)
    return (err / ref).mean()


def _spectrogram_figure(original: torch.Tensor, recon: torch.Tensor, sample_rate: int):
    """A matplotlib figure with the log-mel spectrograms of original (top) and resynthesis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80)
    fig, axes = plt.subplots(2, 1, figsize=(6, 4))
    for ax, x, title in zip(axes, (original, recon), ("original", "resynthesis")):
        spec = mel(x.detach().cpu().float()).clamp_min(1e-5).log10()
        ax.imshow(spec.numpy(), origin="lower", aspect="auto")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig
