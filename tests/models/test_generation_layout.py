"""The fast inference layout (experts stacked on a leading axis, fused projections, cached
decoders, looked-up code tables) against the blocks it is made from."""

import math

import pytest
import torch
from siren_testing import make_model, make_text

from siren_lightning.models.blocks import (
    KVCache,
    StackedTemporal,
    apply_operand,
    matmul_operand,
)
from siren_lightning.models.siren import CachedDecoders


def _prompts(model):
    states, mask = make_text(2)
    return states.to(model.codebook_table.dtype), mask


def test_kv_cache_cost_does_not_copy_history():
    # The cache writes in place: its storage is allocated once for max_len positions.
    cache = KVCache(max_len=5)
    k = torch.randn(1, 2, 1, 4)
    cache.append(k, k)
    ptr = cache.keys.data_ptr()
    for _ in range(4):
        cache.append(k, k)
    assert cache.keys.data_ptr() == ptr and cache.length == 5
    with pytest.raises(ValueError, match="max_len"):
        cache.append(k, k)
    assert math.isclose(cache.keys[0, 0, 4, 0].item(), k[0, 0, 0, 0].item())


@pytest.mark.parametrize("bias", [True, False])
def test_stacked_temporal_step_equals_each_expert(bias):
    model = make_model(bias=bias)
    states, mask = _prompts(model)
    experts = list(model.experts)
    temporal, norms = [e.temporal for e in experts], [e.temporal_norm for e in experts]
    stacked = StackedTemporal(temporal, norms, states, mask, max_len=5)
    for e in experts:
        e.set_kv_cache(5)  # the reference: each expert's own blocks, caches in their attention
    kv = [e.text_kv(states) for e in experts]
    with torch.no_grad():
        for t in range(5):
            x = torch.randn(len(experts), 2, 32)  # [G, N, D]
            together = stacked.step(x, t)
            for k, e in enumerate(experts):
                alone = e.run_stack(x[k][:, None], kv[k], mask, offset=t)[:, 0]
                torch.testing.assert_close(together[k], alone, atol=1e-5, rtol=1e-5)
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        StackedTemporal(temporal, norms, states, mask, 5)


@pytest.mark.parametrize("decoder_layers,bias", [(1, True), (2, False), (3, True)])
def test_cached_decoders_equal_the_experts_decode(decoder_layers, bias):
    model = make_model(decoder_layers=decoder_layers, bias=bias)
    experts, g, d = list(model.experts), model.config.group, model.config.width
    decoders = CachedDecoders(experts, 3, torch.float32)
    with torch.no_grad():
        for _ in range(2):  # the second frame overwrites the first one's keys and values
            hidden = torch.randn(len(experts), 3, d)  # [G, N, D]
            decoders.start(hidden)
            for k, expert in enumerate(experts):
                tokens = [hidden[k]]
                for i in range(1, g + 1):
                    tokens.append(torch.randn(3, d))
                    expected = expert.decode(torch.stack(tokens, 1))[:, -1]  # its last head
                    got = decoders.step(k, tokens[-1], i)  # [N, K]
                    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_code_tables_are_the_projected_codebooks(bias):
    model = make_model(bias=bias)
    experts, table = list(model.experts), model.codebook_table
    r = model.config.num_codebooks
    with torch.no_grad():
        tables = model.code_tables(torch.float32)
        for k, expert in enumerate(experts):
            expected = expert.project(table[None], range(r))[0]  # [r, K, D]
            torch.testing.assert_close(tables[k], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("d_in,d_out", [(8, 24), (24, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_matmul_operand_layouts_compute_the_linear_layer(d_in, d_out, bias):
    linear = torch.nn.Linear(d_in, d_out, bias=bias)
    operand = matmul_operand(linear.weight)
    assert operand.shape == (d_in, d_out)
    # Widening layers get their own row-major copy; narrowing ones read the weight in place.
    assert operand.is_contiguous() == (d_out >= d_in)
    x = torch.randn(2, 3, d_in)
    with torch.no_grad():
        torch.testing.assert_close(apply_operand(x, operand, linear.bias), linear(x))
        # Stacked over G = 2 layers: [G, N, Din] @ [G, Din, Dout] + [G, 1, Dout].
        other = torch.nn.Linear(d_in, d_out, bias=bias)
        weights = torch.stack([linear.weight, other.weight])
        biases = torch.stack([linear.bias, other.bias])[:, None] if bias else None
        both = apply_operand(x[:2, :1].clone(), matmul_operand(weights), biases)
        torch.testing.assert_close(both[0], linear(x[0, :1]))
        torch.testing.assert_close(both[1], other(x[1, :1]))
