"""Old import path of `siren_lightning.stages.align.AlignModule`.

Kept because run configs, and the `_class_path` that LightningCLI saves in a checkpoint's
hyper-parameters, name it. New code imports the stage.
"""

from siren_lightning.stages.align import AlignModule

__all__ = ["AlignModule"]
