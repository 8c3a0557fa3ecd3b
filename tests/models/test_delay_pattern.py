import pytest
import torch

from siren_lightning.models.delay_pattern import DelayPattern


def test_interleave_then_deinterleave_is_the_identity():
    pattern = DelayPattern(4, empty_token=1024)
    codes = torch.randint(0, 1024, (3, 4, 7))
    seq = pattern.interleave(codes)
    assert seq.shape == (3, 4, 10)
    assert torch.equal(pattern.deinterleave(seq), codes)
    logits = torch.randn(3, 4, 10, 5)  # logits de-interleave the same way
    assert pattern.deinterleave(logits).shape == (3, 4, 7, 5)
    assert torch.equal(pattern.deinterleave(logits)[:, 2, 0], logits[:, 2, 2])


def test_layout_matches_the_delay_definition():
    pattern = DelayPattern(3, empty_token=-1)
    codes = torch.tensor([[[10, 11], [20, 21], [30, 31]]])
    seq = pattern.interleave(codes)
    assert seq[0].tolist() == [[10, 11, -1, -1], [-1, 20, 21, -1], [-1, -1, 30, 31]]
    assert torch.equal(pattern.valid_mask(4), seq[0] != -1)


def test_step_order_never_puts_a_later_codebook_of_a_frame_first():
    # At step s the LM has read steps < s. Codebook q of frame t sits at step t + q; every code
    # already read with a codebook >= q is from a frame < t (lower codebooks may run ahead:
    # that is the delay pattern's approximation, which Siren's per-frame decoder avoids).
    r, t = 4, 6
    pattern = DelayPattern(r, empty_token=-1)
    frame_of = pattern.interleave(torch.arange(t).expand(1, r, t))[0]
    book_of = pattern.interleave(torch.arange(r)[:, None].expand(1, r, t))[0]
    for q in range(r):
        for f in range(t):
            s = f + q
            seen = [
                (int(frame_of[qq, ss]), int(book_of[qq, ss])) for ss in range(s) for qq in range(r)
            ]
            seen = [(fr, b) for fr, b in seen if fr >= 0]
            assert all(fr < f for fr, b in seen if b >= q)
            assert all((f, b) in seen for b in range(q))  # and the lower codebooks are there


def test_wrong_codebook_count_is_refused():
    with pytest.raises(ValueError, match="expected 4 codebooks"):
        DelayPattern(4, 0).interleave(torch.zeros(1, 3, 2, dtype=torch.long))
