"""The history a training step's LM reads (`PretrainModule(history_noise, history_hold,
history_self, history_swap, history_rollout)`): corrupted, held, self-drawn, swapped or rolled
out, while its targets, and Siren's within-frame lower codebooks, stay the true codes."""

import pytest
import torch
from delay_testing import make_delay_model  # noqa: E402
from siren_testing import make_model, make_text  # noqa: E402

from siren_lightning.stages.pretrain import (  # noqa: E402
    PretrainModule,
    corrupt_history,
    rollout_history,
)


def _codes(b=3, r=6, t=10, k=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(k, (b, r, t), generator=g)


def test_corrupt_history_moves_whole_frames_within_their_clip():
    # Every frame a distinct column, so where each output frame came from can be read off.
    b, r, t = 3, 4, 12
    codes = (torch.arange(b * t).view(b, 1, t) * 10 + torch.arange(r).view(1, r, 1)).long()
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 7:] = False  # clip 1 has 7 real frames
    mask[2, 3:] = False
    torch.manual_seed(0)
    out = corrupt_history(codes, mask, 0.5)
    assert out.shape == codes.shape
    frame = out[:, 0] // 10  # [B, T]: the global frame each output frame holds
    # All r codebooks of a frame move together.
    assert torch.equal(out, frame[:, None] * 10 + torch.arange(r).view(1, r, 1))
    for i in range(b):
        n = int(mask[i].sum())
        source = frame[i] - i * t
        assert ((source[:n] >= 0) & (source[:n] < n)).all()  # real frames of the same clip
        assert torch.equal(out[i, :, n:], codes[i, :, n:])  # padding untouched
    assert not torch.equal(out, codes)


def test_corrupt_history_rate_and_zero_rate():
    codes, mask = _codes(b=8, t=200), torch.ones(8, 200, dtype=torch.bool)
    assert corrupt_history(codes, mask, 0.0) is codes
    torch.manual_seed(0)
    out = corrupt_history(codes, mask, 0.25)
    changed = (out != codes).any(1).float().mean().item()
    # Replaced frames that drew themselves (1/200) or an identical frame stay equal.
    assert 0.20 < changed < 0.30
    torch.manual_seed(0)
    assert torch.equal(corrupt_history(codes, mask, 0.25), out)  # seeded: the same draw


@pytest.mark.parametrize("make", [make_model, make_delay_model])
def test_history_none_equals_history_codes_and_is_causal(make):
    model = make()
    codes = _codes()
    states, text_mask = make_text(3)
    base = model(codes, states, text_mask).logits
    same = model(codes, states, text_mask, history=codes.clone()).logits
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)

    s = 4  # change the history at frame s only
    history = codes.clone()
    history[:, :, s] = (codes[:, :, s] + 1) % model.config.codebook_size
    out = model(codes, states, text_mask, history=history).logits  # [B, n, T, K]
    if make is make_model:
        # Siren: frame t is predicted from history frames < t, so frames <= s cannot change.
        torch.testing.assert_close(out[:, :, : s + 1], base[:, :, : s + 1], rtol=1e-5, atol=1e-5)
    else:
        # Delay LM: codebook j of frame t is read at step t + j, whose inputs are steps < t + j:
        # codebook 0 of frames <= s cannot change.
        torch.testing.assert_close(out[:, 0, : s + 1], base[:, 0, : s + 1], rtol=1e-5, atol=1e-5)
    assert (out[:, :, s + 1 :] - base[:, :, s + 1 :]).abs().amax() > 1e-3


def test_siren_reads_the_current_frames_lower_codebooks_from_codes_not_history():
    model = make_model()
    codes = _codes()
    states, text_mask = make_text(3)
    base = model(codes, states, text_mask).logits
    # Same history, a different codebook 0 in the *current* frames: expert 1 (codebooks 2-3)
    # reads codebook 0 of its frame as `lower`, so it must change; its temporal input must not.
    other = codes.clone()
    other[:, 0] = (codes[:, 0] + 1) % model.config.codebook_size
    out = model(other, states, text_mask, history=codes).logits
    # Expert 0's codebooks (0, 1): their history is the same and codebook 0 has no lower ones,
    # so codebook 0's logits are unchanged.
    torch.testing.assert_close(out[:, 0], base[:, 0], rtol=1e-5, atol=1e-5)
    assert (out[:, 2] - base[:, 2]).abs().amax() > 1e-3


def test_history_must_match_codes():
    model = make_model()
    codes = _codes()
    states, text_mask = make_text(3)
    with pytest.raises(ValueError, match="history must match codes"):
        model(codes, states, text_mask, history=codes[:, :, :-1])


def _what_the_network_reads(
    monkeypatch, codes: torch.Tensor, module: PretrainModule | None = None, **settings
) -> list:
    """[(codes, history)] the LM was called with: a training step, then a validation step
    (of `module`, else of a new one with `settings`)."""
    if module is None:
        module = PretrainModule(make_model(), caption_dropout=0.0, warmup_steps=0, **settings)
    network = module.network
    states, text_mask = make_text(codes.shape[0])
    mask = torch.ones(codes.shape[0], codes.shape[-1], dtype=torch.bool)
    batch = {"codes": codes, "mask": mask, "text_states": states, "text_mask": text_mask}
    batch |= {"ids": [f"x{i}" for i in range(codes.shape[0])], "frame_offset": mask[:, 0] * 0}
    seen = []
    forward = network.forward

    def spy(codes_in, *args, **kwargs):
        seen.append((codes_in, kwargs.get("history")))
        return forward(codes_in, *args, **kwargs)

    monkeypatch.setattr(network, "forward", spy)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    torch.manual_seed(0)
    module.training_step(batch, 0)
    module.validation_step(batch, 0)
    return seen


def test_training_reads_noisy_history_against_true_targets_and_validation_does_not(monkeypatch):
    codes = _codes(b=2, t=40)
    (targets, history), validation = _what_the_network_reads(monkeypatch, codes, history_noise=0.5)
    assert targets is codes  # the loss is against the true codes
    changed = (history != codes).any(1).float().mean().item()
    assert 0.3 < changed < 0.6
    assert validation[1] is None  # validation is plain teacher forcing


def test_history_noise_is_checked():
    with pytest.raises(ValueError, match="history_noise must be in"):
        PretrainModule(make_model(), caption_dropout=0.0, history_noise=1.0)


def test_hold_history_repeats_the_last_kept_frame():
    from siren_lightning.stages.pretrain import hold_history

    b, r, t = 4, 3, 200
    codes = (torch.arange(b * t).view(b, 1, t) * 10 + torch.arange(r).view(1, r, 1)).long()
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 150:] = False
    assert hold_history(codes, mask, 0.0) is codes
    torch.manual_seed(0)
    out = hold_history(codes, mask, 0.4)
    frame = out[:, 0] // 10  # [B, T]: the global frame each output frame holds
    assert torch.equal(out, frame[:, None] * 10 + torch.arange(r).view(1, r, 1))  # whole frames
    source = frame - torch.arange(b)[:, None] * t  # the frame of the same clip it holds
    own = torch.arange(t).expand(b, t)
    # Each frame is itself or a repeat of the frame before it (as read): a lagging history.
    assert ((source == own)[:, 1:] | (source[:, 1:] == source[:, :-1])).all()
    assert (source[:, 0] == 0).all() and (source <= own).all()
    assert torch.equal(out[1, :, 150:], codes[1, :, 150:])  # padding untouched
    held = (source != own)[mask].float().mean().item()
    assert 0.33 < held < 0.47  # about the rate (a held frame can hold itself only at t=0)
    torch.manual_seed(0)
    assert torch.equal(hold_history(codes, mask, 0.4), out)


def test_training_reads_held_history_and_validation_does_not(monkeypatch):
    codes = (torch.arange(40).view(1, 1, 40) % 16).expand(2, 6, 40).contiguous()
    (targets, history), validation = _what_the_network_reads(monkeypatch, codes, history_hold=0.5)
    assert targets is codes
    lag = (history[:, 0] != codes[:, 0]).float().mean().item()
    assert 0.3 < lag < 0.8  # held frames (and runs of them) read an earlier frame
    # Held frames repeat the frame before them: the history never runs ahead.
    assert (
        (history[:, 0, 1:] == codes[:, 0, 1:]) | (history[:, 0, 1:] == history[:, 0, :-1])
    ).all()
    assert validation[1] is None


def test_history_hold_is_checked():
    with pytest.raises(ValueError, match="history_hold must be in"):
        PretrainModule(make_model(), caption_dropout=0.0, history_hold=-0.1)


def test_self_history_puts_the_models_draws_in_whole_frames():
    from siren_lightning.stages.pretrain import self_history

    b, r, t, k = 3, 6, 120, 16
    codes = _codes(b=b, r=r, t=t, k=k)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[2, 80:] = False
    predicted = [2, 3]  # the LM predicts codebooks 2 and 3 only (one expert)
    # Logits that make every draw certain: code (true + 1) % k.
    want = (codes[:, predicted] + 1) % k  # [B, 2, T]
    logits = torch.full((b, 2, t, k), -50.0).scatter(-1, want[..., None], 50.0)
    assert self_history(codes, mask, logits, predicted, 0.0) is codes
    torch.manual_seed(0)
    out = self_history(codes, mask, logits, predicted, 0.4)
    other = [j for j in range(r) if j not in predicted]
    assert torch.equal(out[:, other], codes[:, other])  # codebooks the LM does not predict
    replaced = out[:, predicted[0]] != codes[:, predicted[0]]  # [B, T]
    # A replaced frame holds the draws in every predicted codebook; a kept one the true codes.
    assert torch.equal(out[:, predicted], torch.where(replaced[:, None], want, codes[:, predicted]))
    assert not replaced[~mask].any()  # padding untouched
    assert 0.3 < replaced[mask].float().mean().item() < 0.5
    torch.manual_seed(0)
    assert torch.equal(self_history(codes, mask, logits, predicted, 0.4), out)


def test_training_reads_its_own_draws_against_true_targets(monkeypatch):
    codes = _codes(b=2, t=40)
    calls = _what_the_network_reads(monkeypatch, codes, history_self=0.5)
    (first, none), (targets, history), validation = calls
    assert first is codes and none is None  # the draws come from a teacher-forced pass
    assert targets is codes  # the loss is against the true codes
    changed = (history != codes).any(1).float().mean().item()
    assert 0.3 < changed < 0.6  # random weights: a drawn frame almost never equals the true one
    assert validation[1] is None  # validation is plain teacher forcing


def _swap_module(rate: float, copies: dict) -> PretrainModule:
    module = PretrainModule(
        make_model(),
        caption_dropout=0.0,
        warmup_steps=0,
        history_swap=rate,
        history_cache="unused: the copies are set below",
    )
    module._history_codes = copies
    return module


def test_swapped_history_is_the_same_window_of_the_clips_copy():
    # Two clips cut at frames 5 and 0; clip b is 6 real frames long (the rest padding). Each
    # copy differs from its clip everywhere, so where the swapped history came from shows.
    g = torch.Generator().manual_seed(0)
    copies = {
        "a": torch.randint(16, (6, 30), generator=g),
        "b": torch.randint(16, (6, 6), generator=g),
    }
    codes = torch.stack(
        [copies["a"][:, 5:15] + 16, torch.cat([copies["b"], copies["b"][:, :4]], 1) + 16]
    )
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    batch = {"codes": codes, "mask": mask, "ids": ["a", "b"], "frame_offset": torch.tensor([5, 0])}
    torch.manual_seed(0)
    out = _swap_module(0.999, copies)._swapped_history(batch)
    assert torch.equal(out[0], copies["a"][:, 5:15])
    assert torch.equal(out[1, :, :6], copies["b"]) and torch.equal(out[1, :, 6:], codes[1, :, 6:])
    none = _swap_module(1e-9, copies)._swapped_history(batch)
    assert torch.equal(none, codes)
    with pytest.raises(ValueError, match="clip b is not in history_cache"):
        _swap_module(0.999, {"a": copies["a"]})._swapped_history(batch)


def test_training_reads_the_copy_against_true_targets_and_validation_does_not(monkeypatch):
    codes = _codes(b=2, t=12)
    copies = {"x0": (codes[0] + 1) % 16, "x1": (codes[1] + 1) % 16}
    module = _swap_module(0.999, copies)
    (targets, history), (_, plain) = _what_the_network_reads(monkeypatch, codes, module)
    assert targets is codes and torch.equal(history, torch.stack([copies["x0"], copies["x1"]]))
    assert plain is None


def test_history_swap_is_checked():
    with pytest.raises(ValueError, match="history_swap needs history_cache"):
        PretrainModule(make_model(), caption_dropout=0.0, history_swap=0.5)
    with pytest.raises(ValueError, match="history_swap must be in"):
        PretrainModule(make_model(), caption_dropout=0.0, history_swap=1.0, history_cache="c")


# Training on its own runs (`history_rollout`): a window of the history holds the LM's own
# sequential continuation of the true frames before it.

GREEDY = {"temperature": 0.0, "cfg_scale": 1.0}


def test_the_window_is_the_models_own_sequential_run():
    # Greedy draws: each drawn frame must be the argmax of the LM reading the frames drawn
    # before it (teacher forcing on the output), not of the true frames (one parallel pass).
    model = make_model(duration_conditioning=True)
    b, t, start, frames = 3, 14, 4, 6
    codes = _codes(b=b, t=t)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[2, 7:] = False  # clip 2 ends inside the window
    states, text_mask = make_text(b)
    total = mask.sum(1)
    model.train()
    out = rollout_history(
        model, codes, mask, states, text_mask, start, frames, total_frames=total, **GREEDY
    )
    assert model.training  # its mode is restored
    end = start + frames
    assert torch.equal(out[..., :start], codes[..., :start])
    assert torch.equal(out[..., end:], codes[..., end:])
    assert torch.equal(out[2, :, 7:], codes[2, :, 7:])  # padding untouched

    model.eval()
    with torch.no_grad():
        own = model(out, states, text_mask, total_frames=total).logits.argmax(-1)  # [B, r, T]
        true = model(codes, states, text_mask, total_frames=total).logits.argmax(-1)
    real = mask[:, start:end]  # [B, W]
    window = out[..., start:end]
    assert (own[..., start:end] == window)[real[:, None].expand_as(window)].all()
    # From the second drawn frame on, the LM reads its own frames: the true history's argmax
    # differs somewhere (random weights), so a single parallel pass would not pass the above.
    later = real[:, 1:, None].transpose(1, 2).expand_as(window[..., 1:])
    assert (true[..., start + 1 : end] != window[..., 1:])[later].any()


def test_the_window_is_cut_at_the_clip_end_and_checked():
    model = make_model()
    codes = _codes(b=2, t=8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    states, text_mask = make_text(2)
    out = rollout_history(model, codes, mask, states, text_mask, 5, 10, **GREEDY)
    assert torch.equal(out[..., :5], codes[..., :5]) and not torch.equal(out, codes)
    for start, frames in ((0, 3), (8, 3), (2, 0)):
        with pytest.raises(ValueError, match="rollout_history: need"):
            rollout_history(model, codes, mask, states, text_mask, start, frames, **GREEDY)


def test_training_reads_its_own_run_against_true_targets(monkeypatch):
    codes = _codes(b=2, t=30)
    settings = dict(history_rollout=0.999, history_rollout_frames=5)
    (targets, history), validation = _what_the_network_reads(
        monkeypatch, codes, history_rollout_sampling=GREEDY, **settings
    )
    assert targets is codes  # the loss is against the true codes
    changed = (history != codes).any(1)  # [B, T]
    assert changed.any()
    # One window, at one start for the batch, no longer than the run.
    frames = changed.any(0).nonzero()[:, 0]
    assert int(frames.min()) >= 1 and int(frames.max()) - int(frames.min()) < 5
    assert validation[1] is None  # validation is plain teacher forcing


def test_history_rollout_is_checked():
    with pytest.raises(ValueError, match="history_rollout must be in"):
        PretrainModule(make_model(), caption_dropout=0.0, history_rollout=1.0)
    with pytest.raises(ValueError, match="history_rollout_frames must be >= 1"):
        PretrainModule(make_model(), caption_dropout=0.0, history_rollout_frames=0)
    with pytest.raises(ValueError, match="cfg_scale != 1 needs a text_encoder"):
        PretrainModule(make_model(), caption_dropout=0.0, history_rollout=0.5)
    with pytest.raises(ValueError, match="unknown sampling setting"):
        PretrainModule(
            make_model(),
            caption_dropout=0.0,
            history_rollout=0.5,
            history_rollout_sampling={"t": 1},
        )
