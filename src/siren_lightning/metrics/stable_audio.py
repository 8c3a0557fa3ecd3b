"""The stable-audio-metrics protocol (TangoFlux, Stable Audio Open): OpenL3 FD at 48 kHz, PaSST
KL at 32 kHz and LAION-CLAP 630k-fusion, on PyTorch backbones from maintained packages.

Letters: B clips, N samples, F frames (windows) of one clip, C = 527 AudioSet classes.

- OpenL3 (`torchopenl3`, the PyTorch port of openl3; mel256, environmental content, 512-d):
  1 s windows every 0.5 s over the 48 kHz clip, the first centred on sample 0 (openl3's
  ``center=True`` pads half a window in front), zero-padded at the end to whole hops; FD is over
  the frame embeddings of all clips pooled, as stable-audio-metrics' ``openl3_fd`` does.
- PaSST (`hear21passt`, ``passt_s_swa_p16_128_ap476``): 10 s windows every 5 s at 32 kHz; a last
  window shorter than 10 s is zero-padded to 10 s when it holds more than 1.5 s and kept as it is
  otherwise; the clip's logits are the mean of its windows' logits. KL is ``KL(p_gen || p_ref)``
  with softmax probabilities and 1e-6 added to the reference's (``F.kl_div((p_ref + 1e-6).log(),
  p_gen)`` in ``passt_kld``), the reverse of audioldm_eval's direction.
- LAION-CLAP 630k-audioset-fusion (`transformers.ClapModel`, ``laion/clap-htsat-fused``, the
  Hugging Face conversion of ``630k-audioset-fusion-best.pt``) on clips rounded through int16.

Every clip is read mono (channel mean), resampled to the backbone's rate with
`torchaudio.functional.resample` and peak-normalised to -1 dBFS first. stable-audio-metrics
resamples with librosa/soxr and runs TensorFlow openl3; the numbers agree with its tables only up
to those differences, and only with the real weights: random weights (tests) give shapes and
rules, never figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from siren_lightning.metrics.backbones import AudioBackbone, BackboneOutput
from siren_lightning.metrics.weights import (
    OPENL3_MEL256_ENV_512,
    PASST_S_SWA_AP476,
    resolve_weights,
)

PEAK_DBFS = -1.0
STABLE_AUDIO_INPUT_RULE = (
    "channel mean; torchaudio.functional.resample (sinc_interp_hann, width 6) to the backbone "
    f"rate; peak-normalised to {PEAK_DBFS:g} dBFS (silence left as is); whole clip"
)
STABLE_AUDIO_CLAP_RULE = (
    STABLE_AUDIO_INPUT_RULE + "; int16 round trip (x 32767); the CLAP feature extractor's fusion "
    "crop / repeat-pad"
)
OPENL3_FD_RULE = (
    "OpenL3 frame embeddings: 1 s windows, 0.5 s hop, centred (half a window of zeros in front), "
    "zero-padded to whole hops; Gaussian statistics over all frames of all clips"
)
PASST_WINDOW_RULE = (
    "PaSST at 32 kHz: 10 s windows, 5 s hop; a last window > 1.5 s is zero-padded to 10 s, a "
    "shorter one kept as is; clip logits = mean of the windows' logits"
)
STABLE_AUDIO_CLAP_CHECKPOINT = "laion/clap-htsat-fused"

OPENL3_WINDOW = 48000
OPENL3_HOP = 24000
PASST_WINDOW = 320000
PASST_HOP = 160000
PASST_MIN_PADDED = 48000  # 15% of a window: shorter last windows are not padded


def stable_audio_input(
    audio: Tensor, sample_rate: int, target_rate: int, int16: bool = False
) -> Tensor:
    """The stable-audio-metrics input rule.

    Args:
        audio: [N] or [C, N] float waveform.
        sample_rate: its rate.
        target_rate: the backbone's rate.
        int16: round through 16-bit integers after normalising (its CLAP input).

    Returns:
        [N'] float32 at ``target_rate``, peak at -1 dBFS (unless silent).
    """
    x = audio.to(torch.float32)
    if x.ndim == 2:
        x = x.mean(0)
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"expected non-empty audio [N] or [C, N], got {tuple(audio.shape)}")
    if sample_rate != target_rate:
        x = torchaudio.functional.resample(x, orig_freq=sample_rate, new_freq=target_rate)
    peak = x.abs().max()
    if peak > 0:
        x = x * (10.0 ** (PEAK_DBFS / 20.0) / peak)
    if int16:
        x = torch.clamp(x, -1.0, 1.0).mul(32767.0).to(torch.int16).to(torch.float32) / 32767.0
    return x


def openl3_frames(audio: Tensor) -> Tensor:
    """One 48 kHz clip [N] -> its OpenL3 windows [F, 48000], F = 1 + ceil((N + 24000 - 48000) /
    24000) (at least 1)."""
    x = torch.nn.functional.pad(audio, (OPENL3_WINDOW // 2, 0))  # centred first window
    n = x.shape[-1]
    frames = 1 if n <= OPENL3_WINDOW else 1 + math.ceil((n - OPENL3_WINDOW) / OPENL3_HOP)
    x = torch.nn.functional.pad(x, (0, OPENL3_WINDOW + (frames - 1) * OPENL3_HOP - n))
    return x.unfold(0, OPENL3_WINDOW, OPENL3_HOP)


def passt_windows(audio: Tensor) -> list[Tensor]:
    """One 32 kHz clip [N] -> its PaSST windows (each [320000], or a short last one kept)."""
    n = audio.shape[-1]
    out = []
    for start in range(0, max(PASST_HOP, n - PASST_HOP), PASST_HOP):
        window = audio[start : start + PASST_WINDOW]
        if PASST_MIN_PADDED < window.shape[-1] < PASST_WINDOW:
            window = torch.nn.functional.pad(window, (0, PASST_WINDOW - window.shape[-1]))
        out.append(window)
    return out


def _require(module: str, pin: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the stable_audio_metrics preset needs the `{module.split('.')[0]}` package: "
            f"pip install --no-deps {pin} (its own dependencies would move pinned packages)"
        ) from err


class OpenL3(AudioBackbone):
    """OpenL3 (mel256, env, 512-d) from `torchopenl3`: frame embeddings and their clip mean.

    Args:
        weights: ``torchopenl3_mel256_env_512.pth.tar`` or its folder; None looks in the weights
            folder, then downloads when online.
        pretrained: False keeps the random initialisation (tests; never quality figures).
        expected_sha256: pin the file's hash.
        model: an already built `PytorchOpenl3` (tests).
    """

    name = "openl3-mel256-env-512"
    sample_rate = 48000
    embedding_dim = 512

    def __init__(
        self,
        weights: str | Path | None = None,
        pretrained: bool = True,
        expected_sha256: str | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        path = None
        if pretrained:  # the weights first: a missing file fails before building anything
            path, self.weights_sha256 = resolve_weights(
                OPENL3_MEL256_ENV_512, weights, expected_sha256
            )
        if model is None:
            models = _require("torchopenl3.models", "torchopenl3==1.0.1")
            model = models.PytorchOpenl3(
                input_repr="mel256", embedding_size=512, content_type="env"
            )
        if path is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.model = model
        self.eval()

    def frame_embeddings(self, audio: Tensor) -> Tensor:
        """One clip [N] at 48 kHz -> frame embeddings [F, 512]."""
        frames = openl3_frames(audio.to(next(self.model.parameters()).device))
        return self.model(frames[:, None, :])  # [F, 1, 48000] -> [F, 512]

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] at 48 kHz -> frames (B x [F, 512]) and their per-clip mean [B, 512]."""
        frames = [self.frame_embeddings(clip) for clip in self._check(audio)]
        return BackboneOutput(embedding=torch.stack([f.mean(0) for f in frames]), frames=frames)


class PaSST(AudioBackbone):
    """PaSST-S (SWA, AudioSet mAP .476) from `hear21passt`: 527 logits and a 768-d embedding,
    each the mean over the clip's 10 s windows.

    Args:
        weights: ``passt-s-f128-p16-s10-ap.476-swa.pt`` or its folder (see `OpenL3`).
        pretrained: False keeps the random initialisation.
        expected_sha256: pin the file's hash.
        net: an already built PaSST network (tests: a small one), ``net(mel [B, 1, 128, T])``
            returning (logits [B, C], features [B, D]).
    """

    name = "passt-s-swa-p16-128-ap476"
    sample_rate = 32000
    embedding_dim = 768
    num_classes = 527

    def __init__(
        self,
        weights: str | Path | None = None,
        pretrained: bool = True,
        expected_sha256: str | None = None,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        path = None
        if pretrained:
            path, self.weights_sha256 = resolve_weights(PASST_S_SWA_AP476, weights, expected_sha256)
        preprocess = _require("hear21passt.models.preprocess", "hear21passt==0.0.26 timm==1.0.31")
        # The package's own mel front end (its defaults in `hear21passt.base.get_basic_model`).
        self.mel = preprocess.AugmentMelSTFT(
            n_mels=128,
            sr=32000,
            win_length=800,
            hopsize=320,
            n_fft=1024,
            freqm=48,
            timem=192,
            htk=False,
            fmin=0.0,
            fmax=None,
            norm=1,
            fmin_aug_range=10,
            fmax_aug_range=2000,
        )
        if net is None:
            passt = _require("hear21passt.models.passt", "hear21passt==0.0.26 timm==1.0.31")
            net = passt.get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False)
        if path is not None:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net = net
        self.embedding_dim = int(getattr(net, "num_features", self.embedding_dim))
        self.num_classes = int(getattr(net, "num_classes", self.num_classes))
        self.eval()

    def window_outputs(self, window: Tensor) -> tuple[Tensor, Tensor]:
        """One window [W] at 32 kHz -> (logits [C], features [D])."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package's stft(return_complex=False)
            mel = self.mel(window[None])  # [1, 128, T]
        logits, features = self.net(mel[:, None])
        return logits[0], features[0]

    def forward(self, audio: Tensor) -> BackboneOutput:
        """audio [B, N] at 32 kHz -> embedding [B, 768], logits [B, 527] (window means)."""
        logits, embedding = [], []
        for clip in self._check(audio):
            outs = [self.window_outputs(w) for w in passt_windows(clip)]
            logits.append(torch.stack([o[0] for o in outs]).mean(0))
            embedding.append(torch.stack([o[1] for o in outs]).mean(0))
        return BackboneOutput(embedding=torch.stack(embedding), logits=torch.stack(logits))
