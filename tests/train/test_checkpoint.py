"""Atomic checkpoint writes, rotation to prev.pt and clear errors for bad files."""

from __future__ import annotations

import pytest
import torch

from normlab.train import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from normlab.train.checkpoint import resolve_checkpoint


def _state(epoch):
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}}


def test_save_rotates_last_to_prev(tmp_path):
    save_checkpoint(_state(1), tmp_path)
    save_checkpoint(_state(2), tmp_path, best=True)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "prev.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "prev.pt"]


def test_failed_write_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    save_checkpoint(_state(1), tmp_path)
    real_save = torch.save

    def broken(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(2), tmp_path)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(_state(2), tmp_path / "other.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_corrupt_checkpoint_error_names_previous_which_still_loads(tmp_path):
    save_checkpoint(_state(1), tmp_path)
    save_checkpoint(_state(2), tmp_path)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(last)
    assert str(tmp_path / "prev.pt") in str(info.value)
    assert load_checkpoint(tmp_path / "prev.pt")["epoch"] == 1
    last.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="prev.pt"):
        load_checkpoint(last)


def test_foreign_and_missing_files(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a normlab training checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="give a run folder"):
        resolve_checkpoint(tmp_path)
