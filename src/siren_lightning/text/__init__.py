"""Frozen text encoders behind one interface: `TextEncoder(backend).encode(captions)`."""

from siren_lightning.text.encoder import (
    TextEncoder,
    TextEncoderNotFoundError,
    TextStates,
    minilm_path,
)

__all__ = ["TextEncoder", "TextEncoderNotFoundError", "TextStates", "minilm_path"]
