import math
import zlib

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from siren_lightning.data.datamodule import SirenDataModule
from siren_lightning.metrics.adherence import attribute_captions
from siren_lightning.metrics.tiny_clap import (
    TinyCLAP,
    contrastive_loss,
    load_tiny_clap,
    retrieval_recall,
)
from siren_lightning.stages.tiny_clap import TinyCLAPModule, evaluate_retrieval

TINY = dict(width=32, layers=1, heads=2, embed_dim=16, n_mels=32, text_dim=8, max_seconds=2.0)


def test_embeddings_are_unit_vectors_of_the_right_shape():
    clap = TinyCLAP(**TINY).eval()
    audio = torch.randn(3, 16_000) * 0.1
    a = clap.embed_audio(audio, torch.ones(3, 16_000, dtype=torch.bool))
    t = clap.embed_text(torch.randn(3, 8))
    assert a.shape == (3, 16) and t.shape == (3, 16)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3)) and torch.allclose(
        t.norm(dim=-1), torch.ones(3)
    )
    # resampling entry point: 8 kHz input of the same duration gives the same token count
    assert clap.embed(torch.randn(2, 8_000) * 0.1, 8_000).shape == (2, 16)
    with pytest.raises(ValueError, match="too long"):
        clap.embed_audio(torch.zeros(1, 16_000 * 3))


def test_contrastive_loss_matches_a_hand_computation():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    t = F.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0]]), dim=-1)
    scale = torch.tensor(math.log(10.0))
    s = 10.0 * (a @ t.T)
    a2t = -(torch.log_softmax(s, 1)[0, 0] + torch.log_softmax(s, 1)[1, 1]) / 2
    t2a = -(torch.log_softmax(s.T, 1)[0, 0] + torch.log_softmax(s.T, 1)[1, 1]) / 2
    assert torch.allclose(contrastive_loss(a, t, scale), (a2t + t2a) / 2)


def test_retrieval_recall_on_a_known_ranking():
    audio = torch.eye(3)
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.9, 1.0]])
    # query 0 -> clip 0 (hit); query 1 -> clip 2 first (miss), query 2 -> clip 2 (hit)
    assert retrieval_recall(text, audio, ["a", "b", "c"], ks=(1, 2)) == {"R@1": 2 / 3, "R@2": 2 / 3}
    # grouping clips 1 and 2 together turns query 1's first result into a hit
    assert retrieval_recall(text, audio, ["a", "b", "b"], ks=(1,)) == {"R@1": 1.0}


def test_training_separates_pitches():
    torch.manual_seed(0)
    clap = TinyCLAP(**TINY)
    t = torch.arange(16_000) / 16_000
    audio = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (200, 500, 1300, 3000)])
    text = torch.randn(4, 8)
    opt = torch.optim.Adam(clap.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = contrastive_loss(clap.embed_audio(audio), clap.embed_text(text), clap.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    clap.eval()
    assert (
        retrieval_recall(clap.embed_text(text), clap.embed_audio(audio), [0, 1, 2, 3])["R@1"] == 1
    )


def test_save_and_load_round_trip(tmp_path, monkeypatch):
    clap = TinyCLAP(**TINY).eval()
    clap.save_pretrained(tmp_path / "clap")
    back = load_tiny_clap(tmp_path / "clap")
    x = torch.randn(2, 16_000) * 0.1
    assert torch.equal(back.embed_audio(x), clap.embed_audio(x))
    monkeypatch.setenv("SIREN_ASSETS", str(tmp_path / "no-assets"))
    with pytest.raises(FileNotFoundError, match="tiny-clap-eval.yaml"):
        load_tiny_clap("tiny-clap-eval")
    # an overlay: the message names both YAMLs, base first
    with pytest.raises(FileNotFoundError, match="reward.yaml --config experiments/tiny-clap-rew"):
        load_tiny_clap("tiny-clap-reward-clean")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_tiny_clap(tmp_path / "missing")


@pytest.mark.slow
def test_module_fits_on_synthcaps_with_minilm_and_exports(synthcaps_small, tmp_path):
    L.seed_everything(0)
    clap = TinyCLAP(**{**TINY, "text_dim": 384})
    module = TinyCLAPModule(clap, warmup_steps=2, export_dir=str(tmp_path / "export"))
    dm = SirenDataModule(
        train_manifest=str(synthcaps_small["train"]),
        val_manifest=str(synthcaps_small["val"]),
        crop_seconds=2.0,
        batch_size=8,
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=dm)
    assert "val/R@1" in trainer.callback_metrics
    exported = load_tiny_clap(tmp_path / "export")
    result = evaluate_retrieval(exported, synthcaps_small["test"], module.captions, max_seconds=2.0)
    assert result["clips"] == 16 and 0 <= result["combo_R@1"] <= result["combo_R@5"] <= 1


def test_log_floor_hides_a_noise_floor_and_is_saved(tmp_path):
    """With the clean CLAPs' floor 0.1 a noise floor at RMS 5e-4 (the clean codec's silence)
    leaves digital silence's log-mel all but unchanged; the default 1e-5 moves it by nats."""
    noise = 5e-4 * torch.randn(1, 16_000, generator=torch.Generator().manual_seed(0))
    silence = torch.zeros(1, 16_000)
    default, floored = TinyCLAP(**TINY), TinyCLAP(**TINY, log_floor=0.1)
    assert (default.log_mel(noise) - default.log_mel(silence)).mean() > 3.0
    assert (floored.log_mel(noise) - floored.log_mel(silence)).abs().max() < 0.1
    tone = 0.05 * torch.sin(2 * math.pi * 500 * torch.arange(16_000) / 16_000)[None]
    assert (floored.log_mel(tone) - floored.log_mel(silence)).max() > 5.0  # events stay visible
    floored.save_pretrained(tmp_path / "clap")
    assert load_tiny_clap(tmp_path / "clap").log_floor == 0.1
    with pytest.raises(ValueError, match="log_floor"):
        TinyCLAP(**TINY, log_floor=0.0)


class _FakeCaptions:
    """caption -> a fixed [8] vector seeded by the caption's bytes (a stand-in text encoder)."""

    def __call__(self, captions: list[str]) -> torch.Tensor:
        rows = []
        for c in captions:
            g = torch.Generator().manual_seed(zlib.crc32(c.encode()))
            rows.append(torch.randn(8, generator=g))
        return torch.stack(rows)


SWAP_CLIPS = [
    {"source": "tone", "pitch": "low", "count": "once", "envelope": "steady"},
    {"source": "clicks", "pitch": "high", "count": "continuous", "envelope": "fade_out"},
    {"source": "siren", "pitch": "medium", "count": "twice", "envelope": "fade_in"},
]


def test_attribute_swap_loss_matches_a_hand_computation():
    """Per clip, a 4-way softmax over (own caption, pitch-, count-, envelope-swapped), own first."""
    torch.manual_seed(0)
    module = TinyCLAPModule(TinyCLAP(**TINY), attribute_loss_weight=1.0)
    module.captions = _FakeCaptions()
    audio = F.normalize(torch.randn(3, 16), dim=-1)
    loss, acc = module._attribute_swap(audio, SWAP_CLIPS)

    captions = attribute_captions(SWAP_CLIPS, rng_seed=0)  # step 0 of a module without a trainer
    scale = module.clap.logit_scale.exp().item()
    expected, right = 0.0, 0
    for i in range(3):
        texts = [captions[key][i] for key in ("own", "pitch", "count", "envelope")]
        t = module.clap.embed_text(module.captions(texts))
        scores = [scale * float(audio[i] @ t[j]) for j in range(4)]
        expected += -(scores[0] - math.log(sum(math.exp(x) for x in scores))) / 3
        right += max(range(4), key=lambda j: scores[j]) == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert acc.item() == pytest.approx(right / 3)
    with pytest.raises(ValueError, match="attribute_loss_weight > 0 needs SynthCaps attributes"):
        module._attribute_swap(audio, [{}, {}, {}])
    with pytest.raises(ValueError, match=">= 0"):
        TinyCLAPModule(TinyCLAP(**TINY), attribute_loss_weight=-1.0)


def test_attribute_swap_loss_trains_the_audio_toward_its_own_attributes():
    """A few steps on the swap loss alone raise the own caption's rank among its swaps."""
    torch.manual_seed(0)
    module = TinyCLAPModule(TinyCLAP(**TINY), attribute_loss_weight=1.0)
    module.captions = _FakeCaptions()
    audio = torch.randn(3, 16_000) * 0.1
    opt = torch.optim.Adam(module.clap.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, _ = module._attribute_swap(module.clap.embed_audio(audio), SWAP_CLIPS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_attention_key_bias_gets_exactly_zero_gradient():
    # softmax ignores a score added to every key: that bias's true gradient is 0, and float
    # noise in its place would become learning-rate-sized Adam steps that differ between CPUs.
    torch.manual_seed(0)
    clap = TinyCLAP(**TINY)
    audio = torch.randn(3, 16_000) * 0.1
    text = clap.embed_text(torch.randn(3, 8))
    contrastive_loss(clap.embed_audio(audio), text, clap.logit_scale).backward()
    grad = clap.transformer.layers[0].self_attn.in_proj_bias.grad  # [3 x width]
    assert torch.equal(grad[32:64], torch.zeros(32))
    assert grad[:32].abs().max() > 0 and grad[64:].abs().max() > 0  # queries, values learn


def test_the_bundled_checkpoints_load():
    for name in ("tiny-clap-reward", "tiny-clap-eval"):
        clap = load_tiny_clap(name).eval()
        emb = clap.embed_audio(torch.zeros(1, 16_000))
        assert emb.shape == (1, clap.audio_proj[1].out_features) and torch.isfinite(emb).all()


def _fault_batch() -> dict:
    """Three 1 s SynthCaps clips (two padded), as the audio DataModule batches them."""
    import numpy as np

    from siren_lightning.data.synthcaps import synthesize

    waves, mask = torch.zeros(3, 16_000), torch.zeros(3, 16_000, dtype=torch.bool)
    for i, (attrs, seconds) in enumerate(zip(SWAP_CLIPS, (1.0, 0.8, 0.9), strict=True)):
        audio, _ = synthesize(attrs, seconds, np.random.default_rng(i))
        waves[i, : audio.size] = torch.from_numpy(audio)
        mask[i, : audio.size] = True
    return {"audio": waves[:, None], "audio_mask": mask, "attributes": SWAP_CLIPS}


def test_fault_ranking_loss_matches_a_hand_computation():
    """Per clip, a 2-way softmax over (clip, its faulted copy), both with the clip's caption."""
    from siren_lightning.data.faults import add_fault

    torch.manual_seed(0)
    module = TinyCLAPModule(TinyCLAP(**TINY), fault_loss_weight=1.0).eval()  # fixed batch norm
    batch = _fault_batch()
    audio = module.clap.embed_audio(batch["audio"][:, 0], batch["audio_mask"])
    text = F.normalize(torch.randn(3, 16), dim=-1)
    faulted, faulted_mask, keep = module._faulted(batch)
    assert keep == [0, 1, 2]
    bad = module.clap.embed_audio(faulted, faulted_mask)
    loss, acc = module._fault_ranking(audio, bad, text, keep)

    generator = torch.Generator().manual_seed(0)  # step 0 of a module without a trainer
    scale = module.clap.logit_scale.exp().item()
    expected, right, n = 0.0, 0, 0
    for i in range(3):
        valid = int(batch["audio_mask"][i].sum())
        out = add_fault(batch["audio"][i, 0], 16_000, valid, generator, SWAP_CLIPS[i]["envelope"])
        bad = module.clap.embed_audio(out[0][None], batch["audio_mask"][i : i + 1])[0]
        good_score, bad_score = scale * float(audio[i] @ text[i]), scale * float(bad @ text[i])
        expected += math.log(1 + math.exp(bad_score - good_score))
        right += good_score > bad_score
        n += 1
    assert loss.item() == pytest.approx(expected / n, rel=1e-5)
    assert acc.item() == pytest.approx(right / n)
    with pytest.raises(ValueError, match="fault_loss_weight must be >= 0"):
        TinyCLAPModule(TinyCLAP(**TINY), fault_loss_weight=-1.0)


def test_fault_ranking_loss_trains_the_clip_over_its_faulted_copies():
    """A few steps on the fault loss alone raise each clip over its faulted copies (batch norm
    fixed: its statistics over six clips would swamp the loss's own direction)."""
    torch.manual_seed(0)
    module = TinyCLAPModule(TinyCLAP(**TINY), fault_loss_weight=1.0).eval()
    batch = _fault_batch()
    text = F.normalize(torch.randn(3, 16), dim=-1)
    opt = torch.optim.Adam(module.clap.parameters(), lr=1e-3)
    losses = []
    faulted, faulted_mask, keep = module._faulted(batch)  # step 0's faults, every step
    for _ in range(30):
        both = module.clap.embed_audio(
            torch.cat([batch["audio"][:, 0], faulted]),
            torch.cat([batch["audio_mask"], faulted_mask]),
        )
        loss, _ = module._fault_ranking(both[:3], both[3:], text, keep)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_init_from_starts_from_a_saved_clap_of_the_same_config(tmp_path):
    torch.manual_seed(0)
    saved = TinyCLAP(**TINY)
    saved.save_pretrained(tmp_path / "start")
    module = TinyCLAPModule(TinyCLAP(**TINY), init_from=str(tmp_path / "start"))
    for (name, a), b in zip(module.clap.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="init_from .* has config"):
        TinyCLAPModule(TinyCLAP(**{**TINY, "width": 64}), init_from=str(tmp_path / "start"))
