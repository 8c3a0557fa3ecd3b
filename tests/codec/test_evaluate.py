import torch

from siren_lightning.codec.evaluate import agreement, attribute_survival
from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec


class OracleCodec(SpectralRVQCodec):
    """Decodes to exactly the last encoded audio (a test double for the bookkeeping)."""

    def encode(self, audio, n_quantizers=None):
        self.last = audio
        return super().encode(audio, n_quantizers)

    def decode(self, codes):
        return self.last[..., : codes.shape[-1] * self.hop_length]


def beeps(n_events, n=16000, f=440.0):
    t = torch.arange(n) / 16000
    gate = torch.zeros(n)
    for k in range(n_events):
        start = int((0.1 + 0.3 * k) * 16000)
        gate[start : start + 2400] = 1.0
    return 0.3 * torch.sin(2 * torch.pi * f * t) * gate


def test_agreement_requires_all_three():
    a = {"pitch": "low", "count": "twice", "envelope": "steady"}
    assert agreement(a, dict(a)) == {"pitch": True, "count": True, "envelope": True, "all": True}
    assert agreement(a, {**a, "count": "once"})["all"] is False


def test_perfect_resynthesis_agrees_everywhere():
    codec = OracleCodec(SpectralCodecConfig.tiny())
    audios = [beeps(1), beeps(2), beeps(3, f=1500.0)]
    result = attribute_survival(codec, audios, n_quantizers=(1, 12))
    assert result["n_clips"] == 3
    for row in result["rows"].values():
        assert row["agree_all"] == 1.0
        assert row["mel_distance"] < 1e-6
        assert row["si_sdr"] > 60


def test_silence_does_not_survive():
    class SilentCodec(OracleCodec):
        def decode(self, codes):
            return torch.zeros(codes.shape[0], 1, codes.shape[-1] * self.hop_length)

    result = attribute_survival(
        SilentCodec(SpectralCodecConfig.tiny()), [beeps(2)], n_quantizers=(12,)
    )
    assert result["rows"]["12"]["agree_all"] == 0.0
