"""`AtomicCheckpointIO`: a checkpoint file is either the old one or the complete new one.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction whose temporary file lies in
the system temp folder; `shutil.move` then renames it only when that folder is on the same file
system as the checkpoint, and otherwise copies it, so a kill during the copy leaves a truncated
`last.ckpt` (common on clusters: /tmp is local, checkpoints on a shared disk). Here the
temporary file is written next to the target, flushed to disk, and renamed over it with
`os.replace` (atomic on POSIX). Remote URLs keep Lightning's behaviour.

Use it in a YAML: `trainer: {plugins: [{class_path: siren_lightning.callbacks.checkpoint_io.AtomicCheckpointIO}]}`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary sibling of `path`, fsync, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and exc.filename is None:
            # a full disk surfaces from f.write without a file name: give it the checkpoint's
            raise OSError(
                errno.ENOSPC, exc.strerror or os.strerror(errno.ENOSPC), str(path)
            ) from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic (see the module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))
