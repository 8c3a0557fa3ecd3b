import pytest
import torch

from siren_lightning.codec.dac_codec import (
    CodecLoadError,
    DACCodec,
    DACConfig,
    official_weights_path,
)


@pytest.fixture(scope="module")
def codec() -> DACCodec:
    torch.manual_seed(0)
    return DACCodec(DACConfig.tiny()).eval()


@pytest.mark.parametrize("n", [1, 319, 320, 321, 1601])
def test_encode_decode_lengths_for_odd_inputs(codec, n):
    audio = torch.randn(2, 1, n) * 0.1
    codes = codec.encode(audio)
    t = -(-n // 320)
    assert codes.shape == (2, 12, t) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    recon = codec.decode(codes)
    assert recon.shape == (2, 1, t * 320)  # DAC's own decoder gives t*320 - 8; we pad


def test_interface_sizes(codec):
    assert (codec.sample_rate, codec.hop_length) == (16000, 320)
    assert (codec.n_codebooks, codec.codebook_size, codec.latent_dim) == (12, 1024, 64)


def test_frame_embeddings_match_dac_from_codes(codec):
    codes = torch.randint(0, 1024, (2, 12, 7))
    expected, _, _ = codec.model.quantizer.from_codes(codes)
    got = codec.frame_embeddings(codes)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, codec.codebook_vectors(codes).sum(1))


def test_codebook_table_rows_are_codebook_vectors(codec):
    codes = torch.randint(0, 1024, (1, 12, 5))
    table = codec.codebook_table()  # [r, K, D]
    vectors = codec.codebook_vectors(codes)  # [1, r, D, T]
    for j in range(12):
        torch.testing.assert_close(vectors[0, j].t(), table[j, codes[0, j]])


def test_encode_uses_fewer_quantizers_even_in_train_mode(codec):
    audio = torch.randn(1, 1, 960) * 0.1
    codec.train()
    try:
        assert codec.encode(audio, n_quantizers=3).shape == (1, 3, 3)
        assert codec.training  # mode restored
    finally:
        codec.eval()


def test_missing_local_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "weights_16khz.pth"
    with pytest.raises(CodecLoadError, match="weights_16khz.pth"):
        DACCodec(checkpoint=missing)


def test_offline_without_cache_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        "siren_lightning.codec.dac_codec.OFFICIAL_16KHZ_FILE",
        tmp_path / "weights_16khz_8kbps_0.0.5.pth",
    )
    with pytest.raises(CodecLoadError, match="weights_16khz_8kbps_0.0.5.pth"):
        official_weights_path("16khz")


def test_checkpoint_round_trip(codec, tmp_path):
    path = tmp_path / "dac.pth"
    codec.model.save(str(path), package=False)
    loaded = DACCodec(checkpoint=path).eval()
    assert loaded.sha256() == codec.sha256()
    audio = torch.randn(1, 1, 700) * 0.1
    assert torch.equal(loaded.encode(audio), codec.encode(audio))


def test_bad_checkpoint_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"hello": torch.zeros(1)}, path)
    with pytest.raises(CodecLoadError, match="junk.pth is not a DAC weights file"):
        DACCodec(checkpoint=path)


def test_bad_audio_shape_is_a_clear_error(codec):
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        codec.encode(torch.randn(2, 100))
