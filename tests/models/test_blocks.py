import pytest
import torch

from siren_lightning.models.blocks import (
    CrossAttention,
    DecoderBlock,
    SelfAttention,
    sinusoidal_positions,
    swiglu_hidden,
)


def test_swiglu_hidden_and_positions():
    assert swiglu_hidden(1024) == 2816 and swiglu_hidden(128) == 512
    pe = sinusoidal_positions(torch.arange(4), 8)
    assert pe.shape == (4, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(pe[3, 0], torch.tensor(3.0).sin())  # frequency 1 on channel 0


def test_self_attention_cache_in_chunks_equals_full_causal_pass():
    torch.manual_seed(0)
    attn = SelfAttention(16, 4).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = attn(x)
    attn.set_kv_cache(7)  # the module owns its cache: calls continue the cached positions
    parts = [attn(x[:, :3]), attn(x[:, 3:5]), attn(x[:, 5:6]), attn(x[:, 6:])]
    torch.testing.assert_close(torch.cat(parts, 1), full)
    assert attn.kv_cache.length == 7
    attn.set_kv_cache(None)  # back to whole-sequence attention
    # Causal: changing the last position leaves the earlier outputs unchanged.
    y = x.clone()
    y[:, -1] += 1
    torch.testing.assert_close(attn(y)[:, :-1], full[:, :-1])


def test_outputs_from_a_position_equal_the_full_pass_from_there():
    torch.manual_seed(0)
    block = DecoderBlock(16, 4, 32, dropout=0.0).double()
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    full = block(x)
    for start in range(4):  # 3: one query, no mask; 1, 2: several, causal with an offset
        torch.testing.assert_close(block(x, start), full[:, start:])
        torch.testing.assert_close(block.attn(x, queries_from=start), block.attn(x)[:, start:])
    block.attn.set_kv_cache(4)
    with pytest.raises(ValueError, match="queries_from needs cache=None"):
        block.attn(x, queries_from=1)


def test_cross_attention_ignores_masked_tokens_and_handles_empty_rows():
    torch.manual_seed(0)
    cross = CrossAttention(16, 6, 4)
    x = torch.randn(2, 3, 16)
    text = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = cross(x, cross.text_kv(text), mask)
    noisy = text.clone()
    noisy[0, 3:] = 100.0
    torch.testing.assert_close(cross(x, cross.text_kv(noisy), mask)[0], out[0])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], torch.zeros(3, 16))  # no text: nothing to read


def test_attention_has_no_biases_and_an_old_checkpoint_with_them_is_named():
    attn, cross = SelfAttention(16, 4), CrossAttention(16, 6, 4)
    assert [n for n, _ in attn.named_parameters()] == ["qkv.weight", "out.weight"]
    assert all(not n.endswith("bias") for n, _ in cross.named_parameters())
    old = {**attn.state_dict(), "qkv.bias": torch.zeros(48), "out.bias": torch.zeros(16)}
    with pytest.raises(ValueError, match=r"attention biases \(qkv.bias, ...\).*older"):
        attn.load_state_dict(old)
    block = DecoderBlock(16, 4, 32, dropout=0.0, bias=True)
    block.load_state_dict(block.state_dict())  # the MLP's biases are not attention biases
    old = {**block.state_dict(), "attn.out.bias": torch.zeros(16)}
    with pytest.raises(ValueError, match=r"SelfAttention: .*attn.out.bias"):
        block.load_state_dict(old)
