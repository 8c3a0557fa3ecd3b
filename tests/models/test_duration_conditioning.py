"""Timing conditioning (`duration_conditioning`): each frame is told how far through the
requested clip it is, on the teacher-forced path and on every sampling path alike."""

import math

import pytest
import torch
from siren_testing import TINY, make_model, make_text

from siren_lightning.data.datasets import CodeClipDataset, collate_codes
from siren_lightning.data.resumable import ItemKey
from siren_lightning.models.blocks import DurationEmbedding, clip_timing
from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM
from siren_lightning.models.sampling import generate


def test_clip_timing_by_hand():
    # A clip of 4 frames seen from frame 2, and one of 8 from frame 0: (index, length) pairs.
    got = clip_timing(torch.tensor([4, 8]), 3, torch.tensor([2, 0]))
    expected = [[[2, 4], [3, 4], [4, 4]], [[0, 8], [1, 8], [2, 8]]]
    assert torch.equal(got, torch.tensor(expected, dtype=torch.float32))
    # The features: sinusoids of index / length x 1000 in the first half, of frames left in the
    # second (width 8: frequencies 1 and 1/100 per unit in each half).
    feats = DurationEmbedding.features(torch.tensor([[1.0, 4.0]]), 8)[0]
    expected = [math.sin(250), math.sin(2.5), math.cos(250), math.cos(2.5)]
    expected += [math.sin(3), math.sin(0.03), math.cos(3), math.cos(0.03)]
    torch.testing.assert_close(feats, torch.tensor(expected))


def _delay_model():
    torch.manual_seed(0)
    keys = ("num_codebooks", "codebook_size", "latent_dim", "width", "num_heads", "text_dim")
    config = DelayLMConfig(
        **{k: TINY[k] for k in keys},
        num_layers=2,
        mlp_hidden=64,
        dropout=0.0,
        max_frames=64,
        duration_conditioning=True,
    )
    table = torch.randn(config.num_codebooks, config.codebook_size, config.latent_dim)
    return DelayPatternLM(config, table).eval()


def _loud(model):
    # Random weights make the timing term small next to the rest; scaled up, a path that
    # ignored the lengths could not pass the greedy comparisons below.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DurationEmbedding):
                module.proj.weight.mul_(30.0)
    return model


MODELS = {
    "siren": lambda: _loud(make_model(duration_conditioning=True)),
    "delay": lambda: _loud(_delay_model()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_requested_length_changes_the_logits_and_only_with_the_flag(name):
    model = MODELS[name]().double()
    states, mask = make_text(2)
    codes = torch.randint(0, 16, (2, 6, 7))
    short = model(codes, states.double(), mask, total_frames=torch.tensor([7, 7])).logits
    long = model(codes, states.double(), mask, total_frames=torch.tensor([7, 30])).logits
    assert torch.equal(short[0], long[0])  # rows are independent
    assert not torch.allclose(short[1, :, 0], long[1, :, 0])  # frame 0 already differs
    # Without total_frames the window is the whole clip: the valid frames of the mask.
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    implied = model(codes, states.double(), mask, valid).logits
    given = model(codes, states.double(), mask, valid, total_frames=torch.tensor([7, 5])).logits
    torch.testing.assert_close(implied, given, rtol=0, atol=0)
    plain = make_model().double() if name == "siren" else None
    if plain is not None:  # an unconditioned model ignores the argument
        a = plain(codes, states.double(), mask, total_frames=torch.tensor([7, 7])).logits
        b = plain(codes, states.double(), mask, total_frames=torch.tensor([7, 30])).logits
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_every_sampling_path_tells_each_clip_its_own_length(name, cfg):
    model = MODELS[name]().double()
    states, mask = make_text(2)
    states = states.double()
    uncond = torch.randn(1, 3, 12, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool)
    totals = torch.tensor([8, 5])
    kw = dict(temperature=0.0, cfg_scale=cfg, uncond_states=uncond[0], uncond_mask=uncond[1])
    cached = generate(model, states, mask, 8, total_frames=totals, **kw)
    uncached = generate(model, states, mask, 8, total_frames=totals, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    if name == "siren":
        looped = generate(model, states, mask, 8, total_frames=totals, batch_experts=False, **kw)
        assert torch.equal(cached, looped)
    default = generate(model, states, mask, 8, **kw)  # every clip told 8 frames
    assert not torch.equal(cached[1], default[1])
    if cfg == 1.0:  # greedy codes are the argmax of the teacher-forced logits given the lengths
        logits = model(cached, states, mask, total_frames=totals).logits
        assert torch.equal(logits.argmax(-1), cached)


def test_code_batches_carry_each_window_place_in_its_clip():
    items = [
        {"id": "a", "codes": torch.randint(0, 16, (6, 20)), "captions": ["x"]},
        {"id": "b", "codes": torch.randint(0, 16, (6, 5)), "captions": ["y"]},
    ]
    data = CodeClipDataset(items, crop_frames=8, train=True)
    batch = collate_codes([data[ItemKey(0, 3)], data[ItemKey(1, 4)]])
    assert batch["total_frames"].tolist() == [20, 5]
    start = int(batch["frame_offset"][0])
    assert 0 <= start <= 12 and batch["frame_offset"][1] == 0
    assert torch.equal(batch["codes"][0], items[0]["codes"][:, start : start + 8])
