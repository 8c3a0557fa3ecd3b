"""Transition-weighted loss (`PretrainModule(transition_weight)`): the frames where events start
and end, found by codebook 0's silence codes, weigh more in the training loss, and only there."""

import pytest
import torch
import torch.nn.functional as F
from siren_testing import make_model, make_text  # noqa: E402

from siren_lightning import cli
from siren_lightning.codec.silence import silence_codes
from siren_lightning.stages.pretrain import (  # noqa: E402
    PretrainModule,
    masked_codebook_stats,
    transition_weights,
)

S = 7  # the silence code in these tests


def test_transition_weights_by_hand():
    # codebook 0 per frame: silent x3, sound x4 (frames 3-6), silent x3 (7-9), sound (10), pad.
    cb0 = torch.tensor([[S, S, S, 1, 1, 1, 1, S, S, S, 2, 3]])
    codes = torch.stack([cb0, cb0 + 1], dim=1)  # [1, 2, 12]; only codebook 0 decides
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 11] = False
    # Transitions at frames 3 (onset), 7 (end), 10 (onset). frames=1: each and the frame
    # before it; frame 11 is padding: 1.
    w = transition_weights(codes, mask, [S], weight=3.0, frames=1)
    assert w.tolist() == [[1, 1, 3, 3, 1, 1, 3, 3, 1, 3, 3, 1]]
    # frames=2: two before, the transition, one after (windows overlap at 8-9).
    w = transition_weights(codes, mask, [S], weight=3.0, frames=2)
    assert w.tolist() == [[1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1]]
    # A code that is not in the silence set is sound: with S unknown nothing is a transition.
    assert transition_weights(codes, mask, [99], 3.0, 2).tolist() == [[1.0] * 12]
    # Weight 1 is the plain loss.
    assert transition_weights(codes, mask, [S], 1.0, 4).tolist() == [[1.0] * 12]


def test_weighted_codebook_ce_is_the_weighted_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g)  # [B, n, T, K]
    targets = torch.randint(6, (2, 3, 5), generator=g)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, :, 3:] = False
    frame_weights = torch.rand(2, 5, generator=g) * 4 + 1
    ce, acc, count = masked_codebook_stats(logits, targets, mask, frame_weights)
    # By hand: -log softmax at the target, weighted by frame and masked, per codebook.
    nll = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]  # [B, n, T]
    w = mask.float() * frame_weights[:, None]
    torch.testing.assert_close(ce, (nll * w).sum((0, 2)) / w.sum((0, 2)))
    plain_ce, plain_acc, plain_count = masked_codebook_stats(logits, targets, mask)
    assert torch.equal(acc, plain_acc) and torch.equal(count, plain_count)
    assert not torch.allclose(ce, plain_ce)


def _batch():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(1, 16, (2, 6, 40), generator=g)
    codes[:, 0][codes[:, 0] == S] = S + 1  # sound everywhere but the gap
    codes[:, 0, 10:20] = S  # a gap in each clip: transitions at frames 10 and 20
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    states, text_mask = make_text(2)
    return {"codes": codes, "mask": mask, "text_states": states, "text_mask": text_mask}


def test_training_loss_weights_transitions_and_validation_does_not(monkeypatch):
    batch = _batch()
    torch.manual_seed(0)
    network = make_model()
    module = PretrainModule(
        network,
        caption_dropout=0.0,
        transition_weight=5.0,
        transition_frames=3,
        silence_codes=[S],
        warmup_steps=0,
    )
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **k: logged.__setitem__(name, value))
    loss = module.training_step(batch, 0)

    # The reference: per-frame CE of the network's own output, weighted 5 on frames 7-12 and
    # 17-22 (3 before each transition at 10 and 20, and 3 from it on), 1 elsewhere.
    with torch.no_grad():
        out = network(batch["codes"], batch["text_states"], batch["text_mask"], batch["mask"])
    targets = batch["codes"][:, out.codebooks]
    nll = F.cross_entropy(out.logits.flatten(0, 2), targets.flatten(), reduction="none")
    nll = nll.view_as(targets).float()  # [B, n, T]
    frame_w = torch.ones(2, 40)
    frame_w[:, 7:13] = 5.0
    frame_w[:, 17:23] = 5.0
    w = out.mask.float() * frame_w[:, None]
    expected = ((nll * w).sum((0, 2)) / w.sum((0, 2))).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-4)
    plain = ((nll * out.mask).sum((0, 2)) / out.mask.sum((0, 2))).mean()
    assert abs(float(expected - plain)) > 1e-3  # the weights matter on this batch

    # Validation is the plain mean over frames.
    module.validation_step(batch, 0)
    torch.testing.assert_close(module.val_loss.compute(), plain, rtol=1e-4, atol=1e-4)


def test_transition_weight_settings_are_checked():
    with pytest.raises(ValueError, match="needs silence_codes"):
        PretrainModule(make_model(), caption_dropout=0.0, transition_weight=5.0)
    with pytest.raises(ValueError, match="transition_weight must be > 0"):
        PretrainModule(make_model(), caption_dropout=0.0, transition_weight=0.0)
    with pytest.raises(ValueError, match="transition_frames >= 1"):
        PretrainModule(make_model(), caption_dropout=0.0, transition_frames=0)


class _FixedCodec(torch.nn.Module):
    """Encodes anything to fixed codebook-0 codes: edges 3 and 1, inside 5 (as a codec does)."""

    sample_rate = 100

    def encode(self, audio):
        t = audio.shape[-1] // 10
        cb0 = torch.full((t,), 5)
        cb0[0], cb0[-1] = 3, 1
        return torch.stack([cb0, cb0 * 0]).unsqueeze(0)  # [1, 2, T]


def test_silence_codes_counts_codebook_zero_of_silence(capsys, monkeypatch):
    assert silence_codes(_FixedCodec(), seconds=2.0) == {1: 1, 3: 1, 5: 18}
    with pytest.raises(ValueError, match="seconds must be > 0"):
        silence_codes(_FixedCodec(), seconds=0.0)
    monkeypatch.setattr("siren_lightning.codec.checkpoint.load_codec", lambda spec: _FixedCodec())
    assert cli.main(["silence-codes", "--codec", "any", "--seconds", "1"]) == 0
    assert "silence_codes: [1, 3, 5]" in capsys.readouterr().out
