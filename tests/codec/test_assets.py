import json
import math
from pathlib import Path

import torch

from siren_lightning.codec.checkpoint import WEIGHTS_FILE, file_sha256, load_codec
from siren_lightning.data.synthcaps import measure_attributes

ASSET = Path(__file__).parents[2] / "assets" / "codec_tiny"


def test_committed_codec_matches_its_recorded_hashes():
    meta = json.loads((ASSET / "codec.json").read_text())
    codec = load_codec(ASSET)
    assert codec.sha256() == meta["sha256"]
    readme = (ASSET / "README.md").read_text()
    assert meta["sha256"] in readme and file_sha256(ASSET / WEIGHTS_FILE) in readme
    assert (codec.n_codebooks, codec.codebook_size, codec.hop_length) == (12, 1024, 320)


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
