import copy
import math

import lightning as L
import pytest
import torch
from delay_testing import make_delay_model  # noqa: E402
from siren_testing import make_model  # noqa: E402
from torch import nn

from siren_lightning.stages.pretrain import PretrainModule, masked_codebook_stats, warmup_cosine  # noqa: E402
from siren_lightning.text.encoder import TextStates  # noqa: E402


class CharEncoder(nn.Module):
    """A deterministic stand-in text encoder: one token per character (empty caption: one token)."""

    dim = 12

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(128, self.dim)
        self.calls: list[list[str]] = []

    @torch.no_grad()
    def encode(self, captions):
        self.calls.append(list(captions))
        ids = [[0] + [ord(ch) % 128 for ch in c] for c in captions]
        n = max(map(len, ids))
        tokens = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        mask = torch.tensor([[True] * len(i) + [False] * (n - len(i)) for i in ids])
        states = self.table(tokens)
        return TextStates(states, mask, states.mean(1))


def _batch(model, b=4, t=8, seed=0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, -2:] = False
    return {
        "codes": torch.randint(c.codebook_size, (b, c.num_codebooks, t), generator=g),
        "mask": mask,
        "text_states": torch.randn(b, 5, c.text_dim, generator=g),
        "text_mask": torch.ones(b, 5, dtype=torch.bool),
        "captions": [f"clip {i}" for i in range(b)],
        "ids": [str(i) for i in range(b)],
    }


def _per_codebook_ce(network, batch):
    network.eval()
    with torch.no_grad():
        out = network(batch["codes"], batch["text_states"], batch["text_mask"], batch["mask"])
        ce, _, _ = masked_codebook_stats(out.logits, batch["codes"], out.mask)
    return ce


def _trainer(steps):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )


@pytest.mark.slow
def test_fifty_step_overfit_lowers_every_trained_codebook_and_freezes_the_rest():
    network = make_model(seed=0)
    batch = _batch(network)
    before = _per_codebook_ce(network, batch)
    initial = copy.deepcopy(network.state_dict())
    module = PretrainModule(
        network,
        optimizer={"init_args": {"lr": 3e-3}},
        warmup_steps=5,
        total_steps=50,
        train_groups=[0, 2],
        caption_dropout=0.0,
    )
    _trainer(50).fit(
        module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None)
    )
    after = _per_codebook_ce(network, batch)
    trained = [0, 1, 4, 5]
    assert (after[trained] < 0.3 * before[trained]).all(), (before, after)
    state = network.state_dict()
    for name, value in state.items():
        moved = not torch.equal(value, initial[name])
        assert moved == name.startswith(("experts.0.", "experts.2.")) or value.dim() == 0, name
    assert torch.equal(state["codebook_table"], initial["codebook_table"])
    torch.testing.assert_close(after[[2, 3]], before[[2, 3]])


def test_masked_stats_match_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    targets = torch.randint(5, (2, 3, 4))
    mask = torch.rand(2, 3, 4) > 0.3
    ce, acc, count = masked_codebook_stats(logits, targets, mask)
    for i in range(3):
        m = mask[:, i]
        ref = torch.nn.functional.cross_entropy(logits[:, i][m], targets[:, i][m])
        torch.testing.assert_close(ce[i], ref)
        torch.testing.assert_close(
            acc[i], (logits[:, i][m].argmax(-1) == targets[:, i][m]).float().mean()
        )
        assert count[i] == m.sum()


def test_schedule_and_weight_decay_groups():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    )
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    module = PretrainModule(make_model(), total_steps=100, warmup_steps=10, caption_dropout=0.0)
    opt = module.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 3e-4
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.network.parameters()))


def test_caption_dropout_uses_the_empty_caption():
    torch.manual_seed(0)
    encoder = CharEncoder()
    module = PretrainModule(make_model(), text_encoder=encoder, caption_dropout=0.5)
    batch = _batch(module.network, b=64)
    del batch["text_states"], batch["text_mask"]
    module.text_inputs(batch, dropout=0.5)
    dropped = sum(c == "" for c in encoder.calls[-1])
    assert 16 <= dropped <= 48
    # Cached states: dropped rows become the empty caption's states, the others stay.
    batch = _batch(module.network, b=64)
    states, mask = module.text_inputs(batch, dropout=0.5)
    empty = encoder.encode([""])
    is_empty = mask.sum(1) == 1
    assert 16 <= is_empty.sum() <= 48
    torch.testing.assert_close(
        states[is_empty][:, 0], empty.states[0, 0].expand(int(is_empty.sum()), -1)
    )
    torch.testing.assert_close(states[~is_empty][:, :5], batch["text_states"][~is_empty])
    assert module.text_inputs(batch, dropout=0.0)[0] is batch["text_states"]


def test_checks_codec_agreement_and_arguments():
    class Codec:
        n_codebooks, codebook_size = 8, 16

        def codebook_table(self):
            return torch.randn(8, 16, 8)

    module = PretrainModule(make_model(), codec=Codec(), caption_dropout=0.0)
    with pytest.raises(ValueError, match=r"codec has r=8 .*K=16.*r=6, K=16"):
        module.setup("fit")
    Codec.n_codebooks = 6
    Codec.codebook_table = lambda self: torch.ones(6, 16, 8)
    network = make_model()
    network.codebook_table.zero_()
    PretrainModule(network, codec=Codec(), caption_dropout=0.0).setup("fit")
    assert torch.equal(network.codebook_table, torch.ones(6, 16, 8))
    with pytest.raises(ValueError, match="train_groups"):
        PretrainModule(make_model(), train_groups=[3], caption_dropout=0.0)
    with pytest.raises(ValueError, match="caption_dropout"):
        PretrainModule(make_model())
    with pytest.raises(ValueError, match="text_dim=12"):
        enc = CharEncoder()
        enc.dim = 384
        PretrainModule(make_model(), text_encoder=enc)


def test_checkpoint_leaves_out_the_text_encoder_and_round_trips():
    module = PretrainModule(make_model(), text_encoder=CharEncoder(), caption_dropout=0.1)
    state = module.state_dict()
    assert not any(k.startswith("text_encoder.") for k in state)
    assert "network.codebook_table" in state
    other = PretrainModule(make_model(seed=5), text_encoder=CharEncoder(), caption_dropout=0.1)
    other.load_state_dict(state)
    for k, v in other.network.state_dict().items():
        assert torch.equal(v, module.network.state_dict()[k])


def test_lightning_cli_builds_the_module_from_yaml(tmp_path):
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "siren.yaml"
    config.write_text(
        """
model:
  class_path: siren_lightning.stages.pretrain.PretrainModule
  init_args:
    network:
      class_path: siren_lightning.models.siren.SirenLM
      init_args:
        config: {num_codebooks: 4, codebook_size: 16, latent_dim: 8, width: 32, num_heads: 4,
                 temporal_layers: 1, decoder_layers: 1, text_dim: 12}
    codec: assets/codec_tiny
    train_groups: [1]
    caption_dropout: 0.0
    warmup_steps: 7
"""
    )
    cli = LightningCLI(
        LightningModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(config), "--trainer.accelerator=cpu", "--trainer.logger=false"],
    )
    module = cli.model
    assert isinstance(module, PretrainModule)
    assert module.network.config.num_groups == 2 and module.network.config.mlp_hidden == 256
    assert module.train_groups == [1] and module.hparams.warmup_steps == 7
    assert module.codec_spec == "assets/codec_tiny"  # loaded lazily, in setup


def test_sample_codes_is_seeded_and_restores_training_mode():
    module = PretrainModule(make_model(), text_encoder=CharEncoder(), caption_dropout=0.1)
    module.network.train()
    a = module.sample_codes(["a beep", "a hum"], 4, seed=1, top_k=5)
    b = module.sample_codes(["a beep", "a hum"], 4, seed=1, top_k=5)
    assert a.shape == (2, 6, 4) and torch.equal(a, b)
    assert module.network.training


@pytest.mark.slow
def test_the_delay_pattern_baseline_trains_unchanged():
    network = make_delay_model(seed=0)
    batch = _batch(network)
    before = _per_codebook_ce(network, batch)
    module = PretrainModule(
        network,
        optimizer={"init_args": {"lr": 3e-3}},
        warmup_steps=5,
        total_steps=80,
        caption_dropout=0.0,
    )
    assert module.train_groups == [0] and module.codebooks == list(range(6))
    _trainer(80).fit(
        module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None)
    )
    after = _per_codebook_ce(network, batch)
    assert (after < 0.3 * before).all(), (before, after)
    with pytest.raises(ValueError, match="train_groups"):
        PretrainModule(make_delay_model(), train_groups=[1], caption_dropout=0.0)
    module = PretrainModule(make_delay_model(), text_encoder=CharEncoder(), caption_dropout=0.1)
    codes = module.sample_codes(["a beep"], 4, seed=1, top_k=5)
    assert codes.shape == (1, 6, 4) and codes.max() < 16


def test_lightning_cli_builds_the_baseline_from_yaml(tmp_path):
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI

    from siren_lightning.models.delay_lm import DelayPatternLM

    config = tmp_path / "baseline.yaml"
    config.write_text(
        """
model:
  class_path: siren_lightning.stages.pretrain.PretrainModule
  init_args:
    network:
      class_path: siren_lightning.models.delay_lm.DelayPatternLM
      init_args:
        config: {num_codebooks: 4, codebook_size: 16, latent_dim: 8, width: 32, num_heads: 4,
                 num_layers: 1, text_dim: 12}
    caption_dropout: 0.0
"""
    )
    cli = LightningCLI(
        LightningModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(config), "--trainer.accelerator=cpu", "--trainer.logger=false"],
    )
    assert isinstance(cli.model.network, DelayPatternLM)
    assert cli.model.network.config.num_layers == 1 and cli.model.codebooks == [0, 1, 2, 3]


def test_init_weights_from_a_checkpoint_or_an_export_and_a_missing_one(tmp_path):
    trained = make_model(seed=1)
    torch.save(
        {"state_dict": {f"network.{k}": v for k, v in trained.state_dict().items()}},
        tmp_path / "run.ckpt",
    )
    trained.save_pretrained(tmp_path / "export")
    for source in (tmp_path / "run.ckpt", tmp_path / "export"):
        module = PretrainModule(make_model(seed=0), caption_dropout=0.0, init_weights=str(source))
        for name, value in trained.state_dict().items():
            assert torch.equal(module.network.state_dict()[name], value), (source, name)
    with pytest.raises(FileNotFoundError, match="init_weights: .*nowhere is neither"):
        PretrainModule(make_model(), caption_dropout=0.0, init_weights=str(tmp_path / "nowhere"))


def test_resuming_with_another_architecture_of_equal_shapes_is_refused(tmp_path):
    # num_heads 2 -> 4 keeps every tensor's shape: only the recorded config tells them apart
    data = torch.utils.data.DataLoader([_batch(make_model())], batch_size=None)
    first = PretrainModule(make_model(num_heads=2), caption_dropout=0.0, warmup_steps=1)
    trainer = _trainer(2)
    trainer.fit(first, data)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)

    other = PretrainModule(make_model(num_heads=4), caption_dropout=0.0, warmup_steps=1)
    with pytest.raises(ValueError) as error:
        _trainer(3).fit(other, data, ckpt_path=str(ckpt))
    assert str(error.value) == (
        f"{ckpt} was trained with another SirenLM config (num_heads: 2 there, 4 here); build "
        "the model with the checkpoint's values, or start a new run"
    )
    with pytest.raises(ValueError, match=r"num_heads: 2 there, 4 here"):
        PretrainModule(make_model(num_heads=4), caption_dropout=0.0, init_weights=str(ckpt))
    with pytest.raises(ValueError, match=r"holds a SirenLM, but this run builds a DelayPatternLM"):
        PretrainModule(make_delay_model(), caption_dropout=0.0, init_weights=str(ckpt))
    # the same architecture (dropout may differ) resumes
    same = PretrainModule(make_model(num_heads=2, dropout=0.1), caption_dropout=0.0, warmup_steps=1)
    resumed = _trainer(3)
    resumed.fit(same, data, ckpt_path=str(ckpt))
    assert resumed.global_step == 3


def test_sample_codes_fills_in_siren_generates_defaults(monkeypatch):
    """In-loop samples (TextFollowingCallback, AudioSamplesCallback) sample as `siren generate`
    and `siren adherence` do: what is not given is SamplingConfig's default (top-k 250, CFG 3),
    not generate_frames' own keyword defaults (top-k 0)."""
    from siren_lightning.models import sampling as sampling_module

    seen = {}

    def spy(model, encoder, captions, num_frames, **kwargs):
        seen.update(kwargs)
        return torch.zeros(len(captions), 6, num_frames, dtype=torch.long)

    monkeypatch.setattr(sampling_module, "generate_for_captions", spy)
    module = PretrainModule(make_model(), text_encoder=CharEncoder(), caption_dropout=0.1)
    frames = torch.tensor([4])
    module.sample_codes(["a beep"], 4, seed=1, temperature=0.5, total_frames=frames)
    assert {k: seen[k] for k in ("temperature", "top_k", "top_p", "cfg_scale")} == {
        "temperature": 0.5,
        "top_k": 250,
        "top_p": 1.0,
        "cfg_scale": 3.0,
    }
    assert seen["total_frames"] is frames
