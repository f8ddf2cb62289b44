"""RunFolder: exclusive creation, the folder lock, write order after kills, recovery, and
one-line errors for full disks and read-only folders."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from normlab.train import RunDirError
from normlab.train import run_folder as rf
from normlab.train.run_folder import (
    BEST,
    LAST,
    LOCK,
    METRICS,
    PREV,
    SUMMARY,
    FolderLock,
    FolderWriteError,
    RunFolder,
    atomic_save,
    write_json_atomic,
    write_text_atomic,
)


def _state(epoch, best_epoch=None):
    return {
        "epoch": epoch,
        "model": {"w": torch.full((2,), float(epoch))},
        "best_epoch": epoch if best_epoch is None else best_epoch,
    }


def _row(epoch):
    return {"epoch": epoch, "test_acc": float(epoch)}


def _summary(epoch):
    return {"status": "running", "epochs_done": epoch}


def _commit(folder, epoch, *, best=True):
    folder.commit_epoch(_state(epoch), _row(epoch), _summary(epoch), best=best)


def _consistent(folder):
    """The four files agree: metrics rows 1..k, summary at k, best.pt the best epoch."""
    last = folder.load_checkpoint(LAST)
    epoch = last["epoch"]
    assert [r["epoch"] for r in folder.metrics()] == list(range(1, epoch + 1))
    assert folder.read_summary().get("epochs_done", epoch) <= epoch
    assert folder.load_checkpoint(BEST)["epoch"] == last["best_epoch"]
    assert not list(folder.path.glob("*.tmp"))


# -- creating ---------------------------------------------------------------------------


def test_create_default_names_in_one_second_are_distinct(tmp_path, monkeypatch):
    monkeypatch.setattr(rf.time, "strftime", lambda fmt: "20260101-000000")
    folders = [RunFolder.create(tmp_path, None, "run") for _ in range(3)]
    assert [f.path.name for f in folders] == [
        "run-20260101-000000",
        "run-20260101-000000-2",
        "run-20260101-000000-3",
    ]
    assert all(f.lock().held for f in folders)


def test_create_named_folder_refuses_a_used_one(tmp_path):
    first = RunFolder.create(tmp_path, "a", "run")
    with pytest.raises(RunDirError, match=rf"run folder .* in use .*pid {os.getpid()}"):
        RunFolder.create(tmp_path, "a", "run")  # claimed (locked) but still empty
    first.write_config("x: 1\n")
    first.lock().release()
    with pytest.raises(RunDirError, match="--resume"):
        RunFolder.create(tmp_path, "a", "run")
    (tmp_path / "empty").mkdir()
    assert RunFolder.create(tmp_path, "empty", "run").path == tmp_path / "empty"


def test_open_requires_a_run_folder(tmp_path):
    with pytest.raises(RunDirError, match="does not exist; it is not a normlab run folder"):
        RunFolder.open(tmp_path / "nope")
    with pytest.raises(RunDirError, match="has no config.yaml"):
        RunFolder.open(tmp_path)


def test_discard_if_empty(tmp_path):
    folder = RunFolder.create(tmp_path, "x", "run")
    assert folder.discard_if_empty() and not folder.path.exists()
    folder = RunFolder.create(tmp_path, "y", "run")
    folder.write_config("a: 1\n")
    assert not folder.discard_if_empty() and folder.path.is_dir()


# -- the lock -----------------------------------------------------------------------------

_HOLD = """
import sys, time
from normlab.train.run_folder import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_writer_is_refused_naming_the_holder_and_kill_releases(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError) as info:
            FolderLock(tmp_path).acquire()
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "in use by another process" in message
        assert "\n" not in message
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with FolderLock(tmp_path) as lock:  # released by the kernel on kill -9
        assert lock.held
        assert f"pid {os.getpid()}" in (tmp_path / LOCK).read_text()
    assert not lock.held


def test_lock_in_one_process_blocks_another_object(tmp_path):
    with FolderLock(tmp_path, "sweep folder"):
        with pytest.raises(RunDirError, match=r"^sweep folder .* in use .*pid \d+"):
            FolderLock(tmp_path, "sweep folder").acquire()
    FolderLock(tmp_path).acquire().release()


# -- write order and recovery ----------------------------------------------------------------


def test_commit_epoch_writes_consistent_files(tmp_path):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    _commit(folder, 2, best=False)
    folder.commit_epoch(_state(3, best_epoch=1), _row(3), _summary(3), best=False)
    assert folder.load_checkpoint(LAST)["row"] == _row(3)
    assert folder.load_checkpoint(PREV)["epoch"] == 2
    assert folder.load_checkpoint(BEST)["epoch"] == 1
    assert folder.recover() == []
    _consistent(folder)


@pytest.mark.parametrize("killed_before", ["best", "metrics", "summary"])
def test_kill_at_any_step_is_repaired_by_recover(tmp_path, monkeypatch, killed_before):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    target = {"best": "_copy_atomic", "metrics": "_append_line", "summary": "write_json_atomic"}

    def killed(*args, **kwargs):
        (folder.path / "best.pt.tmp").write_bytes(b"half")  # a leftover temporary
        raise KeyboardInterrupt

    monkeypatch.setattr(rf, target[killed_before], killed)
    with pytest.raises(KeyboardInterrupt):
        _commit(folder, 2)
    monkeypatch.undo()
    repairs = folder.recover()
    assert any("best.pt.tmp" in line for line in repairs)
    if killed_before == "best":
        assert any(line.startswith("best.pt") for line in repairs)
    _consistent(folder)
    assert folder.load_checkpoint(LAST)["epoch"] == 2
    assert folder.recover() == []


def test_recover_drops_rows_newer_than_last_and_repeated_rows(tmp_path):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    _commit(folder, 2)
    with open(folder.path / METRICS, "a") as f:  # two writers / an older layout
        f.write(json.dumps(_row(2)) + "\n" + json.dumps(_row(3)) + "\n" + '{"epoch": 4, "te')
    folder.write_summary(_summary(3))
    repairs = folder.recover()
    assert len(repairs) == 4, repairs
    assert folder.read_summary()["epochs_done"] == 2
    assert folder.read_summary()["status"] == "interrupted"
    _consistent(folder)


def test_metrics_with_a_bad_line_is_one_line_error(tmp_path):
    folder = RunFolder.create(tmp_path, "r", "run")
    (folder.path / METRICS).write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(RunDirError, match="line 2 is not a metrics row"):
        folder.metrics()


# -- full disk and read-only folders ---------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_old_files_and_no_temporary(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    before = {p.name: p.read_bytes() for p in folder.path.iterdir()}
    monkeypatch.setattr(rf.os, "fsync", _enospc)
    for write in (
        lambda: _commit(folder, 2),
        lambda: folder.write_summary(_summary(2)),
        lambda: folder.write_config("a: 2\n"),
        lambda: folder.append_metrics(_row(2)),
        lambda: atomic_save({"a": 1}, folder.path / "other.pt"),
        lambda: write_text_atomic("x", folder.path / "note.txt"),
        lambda: write_json_atomic({}, folder.path / "x.json"),
    ):
        with pytest.raises(FolderWriteError) as info:
            write()
        message = str(info.value)
        assert message.startswith(f"cannot write {folder.path}") and "No space left" in message
        assert "\n" not in message and isinstance(info.value, RunDirError)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.path.iterdir()} == before
    assert folder.recover() == []


def test_read_only_folder_is_one_line_error(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    real_open = open

    def refused(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refused)
    with pytest.raises(FolderWriteError, match=r"^cannot write .*last.pt: Permission denied$"):
        _commit(folder, 2)
    with pytest.raises(FolderWriteError, match=r"summary.json: Permission denied$"):
        folder.write_summary(_summary(2))
    monkeypatch.undo()
    assert folder.load_checkpoint(LAST)["epoch"] == 1
    assert folder.read_summary() == _summary(1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_with_chmod(tmp_path):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    folder.path.chmod(0o500)
    try:
        with pytest.raises(FolderWriteError, match="Permission denied"):
            _commit(folder, 2)
        with pytest.raises(FolderWriteError, match="Permission denied"):
            RunFolder.create(folder.path, "sub", "run")
    finally:
        folder.path.chmod(0o700)
    assert folder.load_checkpoint(LAST)["epoch"] == 1


def test_summary_never_ahead_of_last(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path, "r", "run")
    _commit(folder, 1)
    calls = []

    def full_on_checkpoint(obj, f, *args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_on_checkpoint)
    with pytest.raises(FolderWriteError, match="last.pt: No space left"):
        _commit(folder, 2)
    assert calls and folder.read_summary()["epochs_done"] == 1
    assert [r["epoch"] for r in folder.metrics()] == [1]
    assert sorted(p.name for p in folder.path.iterdir()) == sorted(
        [LOCK, LAST, BEST, METRICS, SUMMARY]
    )


def test_recover_for_a_resume_from_prev(tmp_path):
    folder = RunFolder.create(tmp_path, "r", "run")
    for epoch in (1, 2, 3):
        _commit(folder, epoch)
    (folder.path / LAST).write_bytes(b"damaged")
    repairs = folder.recover(PREV)
    assert [r["epoch"] for r in folder.metrics()] == [1, 2]
    assert folder.load_checkpoint(BEST)["epoch"] == 2
    assert folder.read_summary()["epochs_done"] == 2
    assert len(repairs) == 3, repairs
