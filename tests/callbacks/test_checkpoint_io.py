"""AtomicCheckpointIO: an interrupted save leaves the previous checkpoint whole."""

from __future__ import annotations

import os

import pytest
import torch

from siren_lightning.callbacks.checkpoint_io import AtomicCheckpointIO, atomic_torch_save


def test_save_writes_next_to_the_target_and_renames(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, path)
    ((src, dst),) = renames
    assert os.path.dirname(src) == str(path.parent) and dst == str(path)
    assert torch.load(path, weights_only=True)["step"] == 3
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_a_save_killed_half_way_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    before = path.read_bytes()

    def half_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # stands for the process dying during the write

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_saved_checkpoint_has_the_mode_of_a_plain_file(tmp_path):
    from siren_lightning.callbacks.checkpoint_io import atomic_torch_save

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").stat().st_mode == plain.stat().st_mode
