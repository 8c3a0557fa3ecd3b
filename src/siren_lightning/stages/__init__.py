"""The training stages, side by side: one LightningModule each, chosen by a YAML's class_path.

- `chassis`: `StageModule`, what the LM stages share (text encoder left out of checkpoints, the
  lazy codec, the `siren` checkpoint record, freezing) and the optimizer built from YAML;
- `codec`: `CodecModule`, trains or fine-tunes the codec;
- `tiny_clap`: `TinyCLAPModule`, the contrastive tiny CLAP (reward and evaluation backbones);
- `pretrain`: `PretrainModule`, stage 1, teacher forcing of `SirenLM` / `DelayPatternLM`;
- `align`: `AlignModule`, stage 2, anti-causal alignment by reinforcement learning.
"""
