"""Contrasted captions (`PretrainModule(caption_contrast_weight)`): each training clip is also
scored under its caption with one judged attribute swapped, and a hinge on the text gap joins
the loss."""

import json

import pytest
import torch
import torch.nn.functional as F
from siren_testing import HashTextEncoder, make_model

from siren_lightning.metrics.adherence import JUDGED, attribute_captions
from siren_lightning.stages.pretrain import PretrainModule, clip_text_gap

ATTRS = [
    {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"},
    {"source": "chord", "pitch": "high", "count": "twice", "envelope": "fade_in"},
    {"source": "siren", "pitch": "medium", "count": "continuous", "envelope": "fade_out"},
]


def test_clip_text_gap_by_hand():
    ce_own = torch.tensor([[[1.0, 2.0, 9.0]], [[1.0, 1.0, 1.0]]])  # [B=2, n=1, T=3]
    ce_other = torch.tensor([[[1.5, 2.1, 0.0]], [[2.0, 2.0, 2.0]]])
    mask = torch.tensor([[[True, True, False]], [[True, True, True]]])
    # Clip 0: (0.5 + 0.1) / 2 = 0.3 (its padded frame left out); clip 1: 1.0.
    torch.testing.assert_close(clip_text_gap(ce_own, ce_other, mask), torch.tensor([0.3, 1.0]))
    # Swapping own and other (a flipped sign) gives the opposite.
    torch.testing.assert_close(clip_text_gap(ce_other, ce_own, mask), torch.tensor([-0.3, -1.0]))


def _manifest(tmp_path) -> str:
    path = tmp_path / "train.jsonl"
    lines = [
        {"id": f"c{i}", "audio": f"c{i}.wav", "captions": ["x"], "duration": 1.0, "attributes": a}
        for i, a in enumerate(ATTRS)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def _module(tmp_path, **settings):
    settings = {"attributes_manifest": _manifest(tmp_path), **settings}
    network = make_model()
    module = PretrainModule(
        network, text_encoder=HashTextEncoder(dim=12), caption_dropout=0.0, warmup_steps=0,
        **settings,
    )  # fmt: skip
    module.setup("fit")
    return module


def test_step_scores_own_and_swapped_captions_on_one_history(tmp_path, monkeypatch):
    w, margin = 0.7, 0.3
    module = _module(tmp_path, caption_contrast_weight=w, caption_contrast_margin=margin,
                     history_noise=0.5)  # fmt: skip
    b, t = 3, 20
    codes = torch.randint(16, (b, 6, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[2, 12:] = False
    batch = {"codes": codes, "mask": mask, "ids": ["c0", "c1", "c2"], "captions": ["x"] * 3}
    seen, encoded = [], []
    network, encoder = module.network, module.text_encoder
    forward, encode = network.forward, encoder.encode

    def spy(codes_in, *args, **kwargs):
        out = forward(codes_in, *args, **kwargs)
        seen.append((codes_in, kwargs["history"], out))
        return out

    monkeypatch.setattr(network, "forward", spy)
    monkeypatch.setattr(encoder, "encode", lambda c: encoded.append(list(c)) or encode(c))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    torch.manual_seed(0)
    loss = module.training_step(batch, 0)

    # The captions: own wording and one attribute swapped, both from one caption seed.
    torch.manual_seed(0)
    rows = attribute_captions(ATTRS, int(torch.randint(2**31 - 1, ())))
    swap = torch.randint(len(JUDGED), (b,)).tolist()
    (captions,) = encoded
    assert captions[:b] == rows["own"]
    assert captions[b:] == [rows[JUDGED[j]][i] for i, j in enumerate(swap)]
    assert all(o != s for o, s in zip(captions[:b], captions[b:]))

    # One forward of both halves, on the same (noisy) history and the true targets.
    ((codes_in, history, out),) = seen
    assert torch.equal(codes_in[:b], codes) and torch.equal(codes_in[b:], codes)
    assert torch.equal(history[:b], history[b:]) and not torch.equal(history[:b], codes)

    # The loss, recomputed from the logits: mean per-codebook CE under the own captions plus
    # w x the mean hinge of each clip's gap.
    targets = codes[:, out.codebooks]
    tok = F.cross_entropy(
        out.logits.float().flatten(0, 2), targets.repeat(2, 1, 1).flatten(), reduction="none"
    ).view(2 * b, *targets.shape[1:])
    m = out.mask[:b].float()
    ce = (tok[:b] * m).sum((0, 2)) / m.sum((0, 2))
    gap = ((tok[b:] - tok[:b]) * m).sum((1, 2)) / m.sum((1, 2))
    expected = ce.mean() + w * (margin - gap).clamp_min(0).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert (margin - gap).clamp_min(0).mean() > 0  # the hinge is active at random weights


def test_dropped_captions_leave_the_hinge(tmp_path, monkeypatch):
    module = _module(tmp_path, caption_contrast_weight=1.0)
    module.hparams.caption_dropout = 0.999999
    codes = torch.randint(16, (3, 6, 10), generator=torch.Generator().manual_seed(0))
    batch = {"codes": codes, "mask": torch.ones(3, 10, dtype=torch.bool), "ids": ["c0", "c1", "c2"]}
    encoded = []
    encode = module.text_encoder.encode
    monkeypatch.setattr(module.text_encoder, "encode", lambda c: encoded.append(c) or encode(c))
    torch.manual_seed(0)
    ce, hinge, gap = module._contrast_stats(batch)
    assert encoded[0][:3] == ["", "", ""]  # every own caption dropped
    assert hinge.numel() == 0 and gap.numel() == 0 and torch.isfinite(ce).all()


def test_contrast_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs attributes_manifest"):
        PretrainModule(make_model(), text_encoder=HashTextEncoder(12), caption_contrast_weight=1.0)
    with pytest.raises(ValueError, match="caption_contrast_margin"):
        PretrainModule(make_model(), caption_dropout=0.0, caption_contrast_margin=0.0)
    module = _module(tmp_path, caption_contrast_weight=1.0)
    batch = {"codes": torch.zeros(1, 6, 4, dtype=torch.long), "mask": torch.ones(1, 4).bool()}
    with pytest.raises(ValueError, match="clip 'nope' is not in attributes_manifest"):
        module._contrast_stats({**batch, "ids": ["nope"]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "audio": "a.wav", "captions": ["x"]}) + "\n")
    with pytest.raises(ValueError, match="clip a has no pitch/count/envelope"):
        _module(tmp_path, caption_contrast_weight=1.0, attributes_manifest=str(bad))
