import json
import math
from pathlib import Path

import pytest
import torch

from siren_lightning.codec.checkpoint import WEIGHTS_FILE, file_sha256, load_codec
from siren_lightning.data.synthcaps import measure_attributes

ASSET = Path(__file__).parents[2] / "assets" / "codec_tiny"


@pytest.mark.parametrize(
    "name, log_floor", [("codec_tiny", 1e-5), ("codec_tiny_clean", 0.01)], ids=["tiny", "clean"]
)
def test_committed_codec_matches_its_recorded_hashes(name, log_floor):
    folder = ASSET.parent / name
    meta = json.loads((folder / "codec.json").read_text())
    codec = load_codec(folder)
    assert codec.sha256() == meta["sha256"]
    readme = (folder / "README.md").read_text()
    assert meta["sha256"] in readme and file_sha256(folder / WEIGHTS_FILE) in readme
    assert (codec.n_codebooks, codec.codebook_size, codec.hop_length) == (12, 1024, 320)
    assert codec.config.log_floor == log_floor


def test_committed_codec_keeps_a_tone_pitch_band():
    # In distribution: SynthCaps clips carry a white-noise floor at 0.003 x peak. (From digital
    # silence, the codec's input is out of distribution and it fails: see its README.)
    codec = load_codec(ASSET)
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    for freq, band in ((180.0, "low"), (520.0, "medium"), (1500.0, "high")):
        tone = 0.5 * torch.sin(2 * math.pi * freq * t)
        audio = (tone + 0.0015 * torch.randn(16000, generator=gen))[None, None]
        recon = codec.decode(codec.encode(audio))[0, 0]
        assert measure_attributes(recon.numpy())["pitch"] == band


CLEAN = ASSET.parent / "codec_tiny_clean"


def test_clean_codec_spells_silence_with_one_code_and_decodes_it_silent():
    """Digital silence between two tone events: the silent frames far from the events are one
    code tuple, decoded >= 50 dB under the tone; the events keep their pitch band and count.
    (assets/codec_tiny decodes the same silence at RMS 0.055, under 20 dB down.)"""
    codec = load_codec(CLEAN)
    t = torch.arange(8000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 520.0 * t)
    silence = torch.zeros(16000)
    audio = torch.cat([silence, tone, silence, tone, silence])[None, None]  # 4 s, 2 events
    codes = codec.encode(audio)[0]  # [12, 200]
    deep = torch.cat([codes[:, 10:40], codes[:, 85:115], codes[:, 160:190]], dim=1)  # [12, 90]
    assert all(len(set(row.tolist())) == 1 for row in deep)  # one code per codebook
    recon = codec.decode(codes[None])[0, 0]
    quiet = recon[16000 + 8000 + 4000 : 16000 + 8000 + 12000]  # 0.25 s into the middle silence
    loud = recon[16000 + 2000 : 16000 + 6000]
    assert 20 * math.log10(quiet.pow(2).mean().sqrt() / loud.pow(2).mean().sqrt()) < -50
    attrs = measure_attributes(recon.numpy())
    assert (attrs["pitch"], attrs["count"]) == ("medium", "twice")
