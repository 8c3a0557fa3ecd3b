"""TinyCLAP: shapes, padding mask, a loss that falls, retrieval, save/load, backbone wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from siren_lightning.metrics.tiny_clap import (
    TinyCLAP,
    TinyCLAPBackbone,
    TinyCLAPConfig,
    load_tiny_clap,
    save_tiny_clap,
)
from siren_lightning.metrics.tiny_clap_module import (
    TinyCLAPModule,
    _contrastive_loss,
    class_prompts,
    retrieval_recall,
)
from siren_lightning.metrics.weights import WeightsError
from siren_lightning.text import TextEncoder

SR = 16000


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder("minilm")


def _batch(n: int, seed: int):
    """Low tones captioned as such vs high noise bursts, 0.5 s, the second half padded."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(SR // 2) / SR
    audio, captions = [], []
    for i in range(n):
        if i % 2 == 0:
            f = 150 + 50 * torch.rand((), generator=g)
            audio.append(0.5 * torch.sin(2 * math.pi * f * t))
            captions.append("a low steady tone")
        else:
            audio.append(0.3 * torch.randn(len(t), generator=g))
            captions.append("a burst of loud noise")
    audio = torch.stack(audio)
    mask = torch.ones_like(audio, dtype=torch.bool)
    mask[:, SR // 4 :] = False
    audio = audio * mask
    return {"audio": audio[:, None], "audio_mask": mask, "captions": captions}


def test_shapes_and_padding_is_ignored(text_encoder):
    torch.manual_seed(0)
    net = TinyCLAP(TinyCLAPConfig.from_name("test"), text_encoder).eval()
    batch = _batch(4, 0)
    emb = net.encode_audio(batch["audio"], batch["audio_mask"])
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    # Changing only the masked (padded) region leaves the embedding unchanged... mostly: the
    # conv receptive field straddles the boundary, so compare a clip against its own padding.
    noisy = batch["audio"].clone()
    noisy[:, :, SR // 4 + 4000 :] = 1.0
    emb2 = net.encode_audio(noisy, batch["audio_mask"])
    assert torch.allclose(emb, emb2, atol=1e-5)
    assert net(batch["audio"], batch["captions"], batch["audio_mask"]).shape == (4, 4)


def test_training_lowers_the_loss_and_retrieves(text_encoder):
    torch.manual_seed(0)
    net = TinyCLAP(TinyCLAPConfig.from_name("test"), text_encoder)
    module = TinyCLAPModule(net, lr=5e-3)
    opt = module.configure_optimizers()
    batch = _batch(8, 1)
    with torch.no_grad():
        before = module._step(batch)[0].item()
    for step in range(40):
        loss = module._step(_batch(8, 100 + step))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        after, audio_emb, _ = module._step(batch)
    assert after.item() < before - 0.2
    # Each caption retrieves a clip of its own kind first.
    text_emb = net.encode_text(["a low steady tone", "a burst of loud noise"])
    best = (text_emb @ audio_emb.T).argmax(1)
    assert best[0] % 2 == 0 and best[1] % 2 == 1


def test_contrastive_loss_treats_equal_captions_as_positives():
    # Clips 0 and 1 share a caption: logits that split row 0's mass between them are optimal.
    logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    same_logits = logits.clone().requires_grad_(True)
    same = _contrastive_loss(same_logits, ["a", "a", "b"])
    same.backward()
    distinct_logits = logits.clone().requires_grad_(True)
    _contrastive_loss(distinct_logits, ["a", "c", "b"]).backward()
    assert same_logits.grad.abs().max() < 1e-3 < distinct_logits.grad.abs().max()
    # Minimum = mean entropy of the soft targets: (log 2 + log 2 + 0) / 3.
    assert same.item() == pytest.approx(math.log(2) * 2 / 3, abs=1e-3)


def test_retrieval_recall_counts_ranks():
    text = torch.eye(3)
    audio = torch.tensor([[1.0, 0, 0], [2.0, 0.1, 0], [0, 0, 1.0]])
    assert retrieval_recall(text, audio, ks=(1, 2)) == {"r1": pytest.approx(2 / 3), "r2": 1.0}


def test_save_load_roundtrip_and_backbone(text_encoder, tmp_path):
    torch.manual_seed(0)
    net = TinyCLAP(TinyCLAPConfig.from_name("test"), text_encoder).eval()
    prompts = ["a low steady tone", "a burst of loud noise", "clicks"]
    sha = save_tiny_clap(net, tmp_path / "clap.pt", prompts)
    loaded, got_prompts, got_sha = load_tiny_clap(tmp_path / "clap.pt", text_encoder)
    assert got_prompts == prompts and got_sha == sha
    batch = _batch(3, 2)
    torch.testing.assert_close(
        loaded.encode_audio(batch["audio"]), net.encode_audio(batch["audio"])
    )
    backbone = TinyCLAPBackbone(loaded, prompts, weights_sha256=got_sha)
    out = backbone(batch["audio"][:, 0])
    assert out.embedding.shape == (3, 16) and out.logits.shape == (3, 3)
    # Resampling path: 32 kHz input of twice the length gives nearly the 16 kHz embedding.
    up = torch.nn.functional.interpolate(batch["audio"], scale_factor=2, mode="linear")[:, 0]
    assert backbone.embed(up, 32000).shape == (3, 16)
    with pytest.raises(WeightsError, match="not found"):
        load_tiny_clap(tmp_path / "missing.pt", text_encoder)


def test_class_prompts_one_per_attribute_combination():
    from siren_lightning.data.manifest import Clip

    def clip(i, caption, **attrs):
        return Clip(
            id=str(i), audio=None, captions=[caption], duration=None, split=None, attributes=attrs
        )

    clips = [
        clip(0, "low tone", source="tone", pitch="low", frequency_hz=100.0),
        clip(1, "a low tone again", source="tone", pitch="low", frequency_hz=110.0),
        clip(2, "high tone", source="tone", pitch="high", frequency_hz=900.0),
    ]
    assert class_prompts(clips) == ["high tone", "low tone"]


def test_manifest_retrieval_and_training_tool(text_encoder, synthcaps_small, tmp_path):
    from siren_lightning.metrics.tiny_clap_module import main, manifest_retrieval

    torch.manual_seed(0)
    net = TinyCLAP(TinyCLAPConfig.from_name("test"), text_encoder)
    out = manifest_retrieval(net, synthcaps_small["test"])
    assert out["clips"] == 16 and 0.0 <= out["r1"] <= out["r5"] <= 1.0
    # The tool trains one short epoch and writes a loadable checkpoint and its summary.
    ckpt = tmp_path / "clap.pt"
    argv = [
        "--train",
        str(synthcaps_small["train"]),
        "--val",
        str(synthcaps_small["val"]),
        "--out",
        str(ckpt),
        "--size",
        "test",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--crop-seconds",
        "1.0",
        "--test",
        str(synthcaps_small["test"]),
    ]
    assert main(argv) == 0
    model, prompts, _ = load_tiny_clap(ckpt, text_encoder)
    assert len(prompts) >= 2 and model.config.channels == [4, 8]
    assert "test_retrieval" in (tmp_path / "clap.json").read_text()
