"""Keep the Hugging Face hub offline where a library would otherwise wait on the network.

`laion_clap` (imported by `frechet_audio_distance`) loads three tokenizers from the hub at import
time; without network and without `HF_HUB_OFFLINE=1` it retries each for minutes (measured here:
over 200 s behind a refusing proxy, 14 s with the switch). The `siren` command sets the switch
unless the user did (`cli._offline_defaults`); library code that imports such a package wraps the
import in `hub_offline()`, which also works when `huggingface_hub` was imported earlier (its
constants are read once, at import).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def hub_offline() -> Iterator[None]:
    """Within the block the hub is offline (environment and `huggingface_hub.constants`)."""
    saved = {k: os.environ.get(k) for k in _SWITCHES}
    from huggingface_hub import constants

    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update(dict.fromkeys(_SWITCHES, "1"))
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        constants.HF_HUB_OFFLINE = saved_constant


def import_offline(name: str) -> ModuleType:
    """Import a module whose import reaches for the hub (e.g. `frechet_audio_distance`) offline."""
    with hub_offline():
        return importlib.import_module(name)
