import json

import pytest
import torch

from siren_lightning.codec.checkpoint import CONFIG_FILE, load_codec, save_codec
from siren_lightning.codec.dac_codec import CodecLoadError, DACCodec, DACConfig
from siren_lightning.codec.spectral_codec import SpectralCodecConfig, SpectralRVQCodec


@pytest.mark.parametrize("half", [False, True])
def test_codec_folder_round_trip_keeps_the_sha256(tmp_path, half):
    torch.manual_seed(0)
    codec = SpectralRVQCodec(SpectralCodecConfig.tiny())
    meta = save_codec(codec, tmp_path / "codec", half=half)
    loaded = load_codec(tmp_path / "codec")
    assert json.loads((tmp_path / "codec" / CONFIG_FILE).read_text())["sha256"] == loaded.sha256()
    assert meta["sha256"] == loaded.sha256()
    assert (loaded.sha256() == codec.sha256()) == (not half)
    audio = torch.randn(1, 1, 1000) * 0.1
    if not half:
        assert torch.equal(loaded.encode(audio), codec.encode(audio))


def test_spectral_codec_from_checkpoint_argument(tmp_path):
    torch.manual_seed(0)
    codec = SpectralRVQCodec(SpectralCodecConfig.tiny(latent_dim=24))
    save_codec(codec, tmp_path / "codec")
    again = SpectralRVQCodec(checkpoint=str(tmp_path / "codec"))
    assert again.latent_dim == 24 and again.sha256() == codec.sha256()


def test_dac_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    codec = DACCodec(DACConfig.tiny())
    save_codec(codec, tmp_path / "dac")
    assert load_codec(tmp_path / "dac").sha256() == codec.sha256()


def test_unknown_codec_path_is_a_clear_error(tmp_path):
    with pytest.raises(CodecLoadError, match="codec not found"):
        load_codec(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodecLoadError, match="no codec.json"):
        load_codec(tmp_path / "empty")
