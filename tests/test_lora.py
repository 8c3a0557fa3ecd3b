"""LoRA fine-tuning (issue 18): only adapters train, merging is exact, exports round-trip."""

import copy
import json

import lightning as L
import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import TableCodec, make_model

from siren_lightning import export
from siren_lightning.lora import (
    LoraSettings,
    add_lora,
    for_sampling,
    has_lora,
    is_lora_parameter,
    merge_lora,
    target_layers,
)
from siren_lightning.models.sampling import generate
from siren_lightning.stages.pretrain import PretrainModule

BUILD = {"siren": make_model, "delay": make_delay_model}


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "codes": torch.randint(16, (2, 6, 5), generator=g),
        "mask": torch.ones(2, 5, dtype=torch.bool),
        "captions": ["a", "b"],
        "text_states": torch.randn(2, 3, 12, generator=g),
        "text_mask": torch.ones(2, 3, dtype=torch.bool),
    }


def _fit(module: PretrainModule, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader([_batch(s) for s in range(steps)], None))
    return trainer


def _text():
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 12, generator=g), torch.ones(2, 3, dtype=torch.bool)


@pytest.fixture(scope="module", params=["siren", "delay"])
def lora_run(tmp_path_factory, request):
    """A base export, then 3 LoRA steps on top of it: (module, snapshot before, base, tmp)."""
    tmp = tmp_path_factory.mktemp("lora")
    build = BUILD[request.param]
    codec = TableCodec(build().codebook_table.clone())
    base = PretrainModule(build(), codec=codec, caption_dropout=0.0, warmup_steps=1, total_steps=2)
    trainer = _fit(base, 1)
    trainer.save_checkpoint(tmp / "base.ckpt")
    base_folder = export.export_checkpoint(tmp / "base.ckpt", tmp / "base")
    module = PretrainModule(
        build(seed=5),  # other initial weights: the base's must be loaded over them
        codec=codec,
        init_weights=str(base_folder),
        lora=LoraSettings(rank=2, alpha=4.0),
        optimizer={"init_args": {"lr": 1e-2, "weight_decay": 0.05}},
        caption_dropout=0.0,
        warmup_steps=1,
        total_steps=4,
    )
    before = {k: v.clone() for k, v in module.network.state_dict().items()}
    trainer = _fit(module, 3)
    trainer.save_checkpoint(tmp / "lora.ckpt")
    module.network.eval()
    return module, before, base_folder, tmp


def test_lora_targets_every_transformer_linear_and_starts_as_a_no_op():
    # Siren: 3 experts x (2 temporal blocks x 9 linears + 1 decoder block x 5); delay: 2 x 9.
    for name, count in (("siren", 3 * (2 * 9 + 5)), ("delay", 2 * 9)):
        model = BUILD[name]()
        targets = target_layers(model)
        assert len(targets) == count
        assert not any("projectors" in t or "heads" in t or "summary" in t for t in targets)
        states, mask = _text()
        codes = torch.randint(16, (2, 6, 4))
        plain = model(codes, states, mask).logits
        add_lora(model, LoraSettings(rank=2))
        assert has_lora(model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(is_lora_parameter(n) for n in trainable)
        assert len(trainable) == 2 * count  # A and B of each adapted layer
        assert torch.equal(model(codes, states, mask).logits, plain)  # B starts at zero
    assert len(target_layers(make_model(), groups=[1])) == 23


def test_only_lora_parameters_change(lora_run):
    module, before, base_folder, _ = lora_run
    after = module.network.state_dict()
    assert set(after) == set(before)
    lora_keys = [k for k in after if is_lora_parameter(k)]
    assert lora_keys
    for k in after:
        if is_lora_parameter(k):
            assert not torch.equal(after[k], before[k]), f"{k} did not train"
        else:
            assert torch.equal(after[k], before[k]), f"{k} changed"
    # The frozen weights are the base export's (not the seed-5 initial ones).
    base, _ = export.load_lm(base_folder)
    base_state = base.state_dict()
    for k, v in after.items():
        if not is_lora_parameter(k):
            assert torch.equal(v, base_state[k.replace(".base_layer", "")]), k


def test_merged_equals_unmerged_output(lora_run):
    module, *_ = lora_run
    network = copy.deepcopy(module.network).double()
    merged = merge_lora(copy.deepcopy(network))
    assert not has_lora(merged) and has_lora(network)
    assert set(merged.state_dict()) == {
        k.replace(".base_layer", "") for k in network.state_dict() if not is_lora_parameter(k)
    }
    states, mask = _text()
    codes = torch.randint(16, (2, 6, 6), generator=torch.Generator().manual_seed(3))
    lora_logits = network(codes, states.double(), mask).logits
    merged_logits = merged(codes, states.double(), mask).logits
    torch.testing.assert_close(merged_logits, lora_logits, rtol=0, atol=1e-10)
    # The adapters moved the output: merging a no-op would pass the check above trivially.
    plain = copy.deepcopy(network)
    for name, param in plain.named_parameters():
        if ".lora_B." in name:
            param.data.zero_()
    assert (plain(codes, states.double(), mask).logits - lora_logits).abs().max() > 1e-4
    # Sampling sees the adapters: greedy codes of `for_sampling` are those of the merged model.
    kwargs = dict(temperature=0.0, cfg_scale=1.0)
    sampled = generate(for_sampling(network), states.double(), mask, 6, **kwargs)
    assert torch.equal(sampled, generate(merged, states.double(), mask, 6, **kwargs))


def test_lora_exports_merged_and_adapter_only(lora_run, tmp_path):
    module, _, base_folder, tmp = lora_run
    merged_dir = export.export_checkpoint(tmp / "lora.ckpt", tmp_path / "merged", merge=True)
    adapter_dir = export.export_checkpoint(tmp / "lora.ckpt", tmp_path / "adapter")
    assert (merged_dir / "model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").is_file()
    adapter_bytes = (adapter_dir / export.ADAPTER_FILE).stat().st_size
    model_bytes = (merged_dir / "model.safetensors").stat().st_size
    assert adapter_bytes < model_bytes / 4, (adapter_bytes, model_bytes)
    states, mask = _text()
    codes = torch.randint(16, (2, 6, 6), generator=torch.Generator().manual_seed(4))
    expected = module.network(codes, states, mask).logits
    for folder in (merged_dir, adapter_dir, tmp / "lora.ckpt"):  # load_lm merges a .ckpt's too
        model, sidecar = export.load_lm(folder)
        assert not has_lora(model) and sidecar["lora"]["rank"] == 2
        torch.testing.assert_close(model(codes, states, mask).logits, expected)
    assert json.loads((adapter_dir / export.SIDECAR).read_text())["adapter"]["base"] == str(
        base_folder.resolve()
    )
    # An adapter refuses a base whose weights are not those it was trained on.
    sidecar = json.loads((adapter_dir / export.SIDECAR).read_text())
    sidecar["adapter"]["base_sha256"] = "0" * 64
    (adapter_dir / export.SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(export.ExportError, match="not the same base model"):
        export.load_lm(adapter_dir)


def test_merge_needs_a_lora_checkpoint_and_lora_needs_a_base(lora_run, tmp_path):
    _, _, _, tmp = lora_run
    with pytest.raises(export.ExportError, match="no LoRA adapters"):
        export.export_checkpoint(tmp / "base.ckpt", tmp_path / "x", merge=True)
    with pytest.raises(ValueError, match="init_weights"):
        PretrainModule(make_model(), lora=LoraSettings(), caption_dropout=0.0)
