import pytest
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    RobertaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from siren_lightning.text import TextEncoder, TextEncoderNotFoundError

CAPTIONS = ["a dog barks twice", "", "a high beep then a long low hum fading out"]
WORDS = [
    "a",
    "dog",
    "barks",
    "twice",
    "high",
    "beep",
    "then",
    "long",
    "low",
    "hum",
    "fading",
    "out",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("minilm")


def _t5_folder(path, tokenizer):
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
    )
    T5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _t5_tokenizer():
    # A real T5 (Unigram) tokenizer over a tiny vocabulary, built offline.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clap_folder(path):
    # A real Roberta (byte-level BPE) tokenizer with single-byte tokens only, built offline.
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(ByteLevel.alphabet()))}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = ClapTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        projection_dim=16,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=80,
    )
    ClapTextModelWithProjection(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_minilm_shapes_mask_pooled(minilm):
    out = minilm.encode(CAPTIONS)
    b, n, d = out.states.shape
    assert (b, d) == (3, 384) and minilm.dim == 384
    assert out.mask.dtype == torch.bool and out.mask.shape == (3, n)
    lengths = [len(minilm.tokenizer(c)["input_ids"]) for c in CAPTIONS]
    assert out.mask.sum(1).tolist() == lengths
    assert lengths[1] == 2  # the empty caption is [CLS] [SEP]
    expected = torch.stack([out.states[i, : lengths[i]].mean(0) for i in range(3)])
    torch.testing.assert_close(out.pooled, expected)
    assert torch.isfinite(out.states).all()


def test_minilm_deterministic_padding_invariant_and_discriminative(minilm):
    a = minilm.encode(CAPTIONS)
    b = minilm.encode(CAPTIONS)
    torch.testing.assert_close(a.states, b.states, rtol=0, atol=0)
    alone = minilm.encode(CAPTIONS[:1])
    n = alone.mask.sum()
    torch.testing.assert_close(alone.states[0, :n], a.states[0, :n], atol=1e-5, rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(a.pooled[0], a.pooled[2], dim=0)
    assert cos < 0.99
    assert not torch.allclose(a.states[0, 1], a.states[2, 1])


def test_minilm_is_frozen(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.model.training


def test_t5_tiny_random_init_matches_direct_forward(tmp_path):
    folder = _t5_folder(tmp_path / "t5", _t5_tokenizer())
    enc = TextEncoder("t5", str(folder))
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.dim == 32
    out = enc.encode(CAPTIONS)
    assert out.states.shape[0] == 3 and out.states.shape[2] == 32
    tokens = enc.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    assert out.mask.tolist() == tokens["attention_mask"].bool().tolist()
    ref = T5EncoderModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = ref(**tokens).last_hidden_state
    torch.testing.assert_close(out.states, expected)
    assert out.mask[1].sum() == 1  # the empty caption is only </s>


def test_clap_tiny_random_init_matches_direct_forward(tmp_path):
    folder = _clap_folder(tmp_path / "clap")
    enc = TextEncoder("clap", str(folder), max_length=64)
    assert type(enc.model).__name__ == "ClapTextModelWithProjection" and enc.dim == 32
    out = enc.encode(CAPTIONS)
    tokens = enc.tokenizer(
        CAPTIONS, padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    ref = ClapTextModelWithProjection.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = ref(**tokens).last_hidden_state
    torch.testing.assert_close(out.states, expected)
    assert out.mask.sum(1).tolist() == tokens["attention_mask"].sum(1).tolist()
    assert not torch.allclose(out.pooled[0], out.pooled[2])


def test_empty_tokenizer_is_refused(tmp_path):
    # T5Tokenizer() without a vocabulary file is the offline trap of DESIGN.md section 9.
    folder = _t5_folder(tmp_path / "t5", T5Tokenizer())
    with pytest.raises(ValueError, match="no usable vocabulary"):
        TextEncoder("t5", str(folder))


def test_missing_local_folder_is_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-t5"
    with pytest.raises(TextEncoderNotFoundError, match="no-such-t5"):
        TextEncoder("t5", str(missing))


def test_hub_name_offline_is_one_clear_error():
    with pytest.raises(TextEncoderNotFoundError, match="HF_HUB_OFFLINE=1"):
        TextEncoder("clap", "siren-lightning-tests/no-such-clap")


def test_unknown_backend_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown backend"):
        TextEncoder("bert", str(tmp_path))
    enc = TextEncoder("t5", str(_t5_folder(tmp_path / "t5", _t5_tokenizer())))
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a dog barks")
