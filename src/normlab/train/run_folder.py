"""Run folders: the one module that knows their file names and how they are written and read.

Layout of a run folder::

    RUN/
      .lock           held (``fcntl.flock``) by the one process writing the folder
      config.yaml     the resolved config (what ``normlab train --resume RUN`` uses)
      metrics.jsonl   one JSON row per finished epoch
      summary.json    status, final/best accuracy, time, environment
      last.pt         the state after the most recent finished epoch (it also holds its row),
                      or after a step inside the next one (``run.checkpoint_every``)
      prev.pt         the ``last.pt`` it replaced (the fallback if ``last.pt`` is damaged)
      best.pt         a copy of ``last.pt`` of the epoch with the best test accuracy

Every file is written to ``<name>.tmp``, flushed and fsync'ed, then moved into place with
``os.replace``: a reader (or a crash) sees the old file or the new one, never a partial one.
A write that fails (disk full, read-only folder) raises :class:`FolderWriteError` — one line,
``cannot write <path>: <reason>`` — with the temporary removed and the previous file intact.

:meth:`RunFolder.commit_epoch` writes an epoch's four files in the order ``last.pt``,
``best.pt``, ``metrics.jsonl``, ``summary.json``: after a kill at any point each file is either
up to date or one step behind ``last.pt``, never ahead of it, and :meth:`RunFolder.recover`
brings the lagging ones back in line before a run resumes. A checkpoint inside an epoch
(:meth:`RunFolder.commit_step`) writes ``last.pt`` then ``summary.json`` and no metrics row:
rows are written per finished epoch only. Checkpoints hold only tensors and
plain python values and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from normlab.train.errors import CheckpointError, RunDirError

__all__ = [
    "BEST",
    "CONFIG",
    "FORMAT",
    "LAST",
    "LOCK",
    "METRICS",
    "PREV",
    "SUMMARY",
    "FolderLock",
    "FolderWriteError",
    "RunFolder",
    "atomic_save",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_json_atomic",
    "write_text_atomic",
]

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
LAST, PREV, BEST, LOCK = "last.pt", "prev.pt", "best.pt", ".lock"
TMP_SUFFIX = ".tmp"
FORMAT = "normlab-checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "epoch", "model")


class FolderWriteError(RunDirError, OSError):
    """A file of a run folder could not be written (disk full, read-only folder, ...).

    It is a :class:`~normlab.train.errors.RunDirError` and, as the failure it reports, an
    ``OSError``.
    """


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _write_error(path: Path, exc: OSError) -> FolderWriteError:
    return FolderWriteError(f"cannot write {path}: {_reason(exc)}")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def _write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """The one atomic write: ``write`` to ``<path>.tmp``, fsync, ``os.replace`` onto ``path``.

    Raises:
        FolderWriteError: Writing failed; the temporary is removed, ``path`` is unchanged.
    """
    path = Path(path)
    _replace(_write_tmp(path, write), path)


def _write_tmp(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """``write`` to ``<path>.tmp`` and fsync it; the temporary is removed on failure."""
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    return tmp


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise _write_error(path, exc) from exc


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) atomically: readers see the old file or the new one.

    Raises:
        FolderWriteError: The file cannot be written (the old one is kept).
    """
    data = text.encode()
    _write_atomic(path, lambda f: f.write(data))


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`write_text_atomic`).

    If saving fails, ``path`` keeps its old content and no temporary file is left.
    """
    _write_atomic(path, lambda f: torch.save(obj, f))


def _copy_atomic(source: Path, path: Path) -> None:
    with open(source, "rb") as src:
        _write_atomic(path, lambda f: shutil.copyfileobj(src, f))


def _append_line(path: Path, line: str) -> None:
    """Append one line and fsync; on failure the file is cut back to its old length."""
    try:
        with open(path, "ab") as f:
            size = f.tell()
            try:
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise
    except OSError as exc:
        raise _write_error(path, exc) from exc


def save_checkpoint(
    state: dict[str, Any], run_dir: str | Path, *, best: bool = False
) -> Path:
    """Write ``last.pt`` (moving the old one to ``prev.pt``) and, if ``best``, ``best.pt``.

    Args:
        state: Checkpoint payload; ``format``, ``version`` and ``best`` are added.
        run_dir: The run folder.
        best: Also write ``best.pt`` (a copy of the new ``last.pt``).

    Returns:
        Path of ``last.pt``.

    Raises:
        FolderWriteError: A file cannot be written; ``last.pt`` and ``best.pt`` are the old ones.
    """
    run_dir = Path(run_dir)
    payload = {"format": FORMAT, "version": VERSION, **state, "best": best}
    last = run_dir / LAST
    tmp = _write_tmp(last, lambda f: torch.save(payload, f))
    if last.exists():
        try:
            os.replace(last, run_dir / PREV)
        except OSError as exc:
            _remove(tmp)
            raise _write_error(run_dir / PREV, exc) from exc
    _replace(tmp, last)
    if best:
        _copy_atomic(last, run_dir / BEST)
    return last


def _fallback_hint(path: Path) -> str:
    prev = path.with_name(PREV)
    if path.name == LAST and prev.is_file():
        return (
            f" The previous checkpoint is kept: resume from it with "
            f"`normlab train --resume {prev}` (it is the checkpoint before it)."
        )
    return ""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a normlab checkpoint (``torch.load(weights_only=True)``).

    Args:
        path: A ``*.pt`` file written by :func:`save_checkpoint`.
        map_location: Where tensors are loaded.

    Returns:
        The checkpoint payload (keys include ``epoch``, ``model``, ``optimizer``, ``rng``).

    Raises:
        CheckpointError: The file is missing, unreadable (truncated or corrupt), or not a
            normlab checkpoint. The message names the older checkpoint still usable, if any.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}.{_fallback_hint(path)}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read, it is truncated or corrupt "
            f"({type(exc).__name__}: {first}).{_fallback_hint(path)}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a normlab training checkpoint (no format={FORMAT!r} marker); "
            f"to load plain weights use torch.load and model.load_state_dict."
            f"{_fallback_hint(path)}"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}.{_fallback_hint(path)}"
        )
    if payload["version"] > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload['version']}, newer than this "
            f"normlab reads ({VERSION}); upgrade normlab."
        )
    return payload


def resolve_checkpoint(spec: str | Path, default: str = LAST) -> Path:
    """A checkpoint file from a run folder (``default`` inside it) or a file path.

    Raises:
        CheckpointError: Neither a run folder with that file nor a file.
    """
    path = Path(spec)
    if path.is_dir():
        path = path / default
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: give a run folder holding {default} or a *.pt file."
            f"{_fallback_hint(path)}"
        )
    return path


class FolderLock:
    """An exclusive lock on a folder, held by one process and released when it dies.

    ``fcntl.flock`` on ``<folder>/.lock``; the holder writes its pid, host and command line
    into the file so that a second writer's error can name it. The kernel drops the lock when
    the holder's process ends, even on ``kill -9``, so a crashed run never leaves its folder
    locked. ``with FolderLock(folder): ...``; entering a lock already held by this object
    does nothing, leaving it releases it.

    Args:
        folder: An existing folder.
        what: What the folder is, for the error message (``"run folder"``, ``"sweep folder"``).
    """

    def __init__(self, folder: str | Path, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def holder(self) -> str:
        """What the lock file says about its holder (``pid <pid> on <host>: <command>``)."""
        try:
            text = (self.folder / LOCK).read_text().strip()
        except OSError:
            text = ""
        return text or "pid unknown"

    def acquire(self) -> FolderLock:
        """Take the lock.

        Raises:
            RunDirError: Another process holds it (the message names its pid), or the
                lock file cannot be created (read-only or missing folder).
        """
        if self._fd is not None:
            return self
        path = self.folder / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _write_error(path, exc) from exc
            raise RunDirError(
                f"{self.what} {self.folder} is in use by another process "
                f"({self.holder()}); wait for it to finish, or stop that process"
            ) from None
        self._fd = fd
        command = " ".join(sys.argv)[:200]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {command}\n".encode())
        return self

    def release(self) -> None:
        """Give the lock up (the lock file stays, unlocked)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _position(epoch: int, step: int) -> str:
    return f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")


def _exists_message(folder: Path) -> str:
    return (
        f"run folder {folder} already exists and is not empty; resume it with "
        f"`normlab train --resume {folder}`, or choose another run.name / run.out_dir"
    )


class RunFolder:
    """One run's folder: its files, written in a safe order and read back validated.

    Create a new folder with :meth:`create` (exclusive: two runs never share one), open an
    existing one with :meth:`open`, and write only while holding :meth:`lock`.

    Attributes:
        path: The folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = FolderLock(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- creating and opening ---------------------------------------------------------------

    @classmethod
    def create(cls, parent: str | Path, name: str | None, default_stem: str) -> RunFolder:
        """Create a new run folder, exclusively, and take its lock.

        Args:
            parent: Where run folders go (``run.out_dir``); created if missing.
            name: The folder's name; ``None`` for ``<default_stem>-<YYYYmmdd-HHMMSS>``, with
                ``-2``, ``-3``, ... appended when that name is taken (two runs started in
                the same second get two folders).
            default_stem: Name stem when ``name`` is ``None`` (e.g. the config's name).

        Returns:
            The folder, its lock held by this object (released by ``with folder.lock():``
            or when the process ends).

        Raises:
            RunDirError: ``name`` exists and is not empty (or another process is creating
                it), or the folder cannot be created.
        """
        parent = Path(parent)
        where = (parent / name).parent if name is not None else parent
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(where, exc) from exc
        if name is not None:
            return cls._claim(parent / name, fresh=False)
        stem = f"{default_stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        for index in range(1, 10_000):
            path = parent / (stem if index == 1 else f"{stem}-{index}")
            try:
                return cls._claim(path, fresh=True)
            except FileExistsError:
                continue
        raise RunDirError(f"no free run folder name {stem}-<n> in {parent}")

    @classmethod
    def _claim(cls, path: Path, *, fresh: bool) -> RunFolder:
        """Make ``path`` (must be new when ``fresh``), lock it, and check it is empty."""
        try:
            os.mkdir(path)
        except FileExistsError:
            if fresh:
                raise
            if not path.is_dir() or any(p.name != LOCK for p in path.iterdir()):
                raise RunDirError(_exists_message(path)) from None
        except OSError as exc:
            raise _write_error(path, exc) from exc
        folder = cls(path)
        try:
            folder._lock.acquire()
        except FolderWriteError:
            raise
        except RunDirError:
            if fresh:
                raise FileExistsError(path) from None
            raise
        if any(p.name != LOCK for p in path.iterdir()):
            folder._lock.release()
            if fresh:
                raise FileExistsError(path)
            raise RunDirError(_exists_message(path))
        return folder

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (one holding ``config.yaml``).

        Raises:
            RunDirError: ``path`` is not a normlab run folder.
        """
        path = Path(path)
        if not (path / CONFIG).is_file():
            what = "does not exist" if not path.exists() else f"has no {CONFIG}"
            raise RunDirError(f"{path} {what}; it is not a normlab run folder")
        return cls(path)

    def lock(self) -> FolderLock:
        """This folder's lock: ``with folder.lock(): ...`` around every write.

        Raises (on entering):
            RunDirError: Another process writes this folder (the message names its pid).
        """
        return self._lock

    def discard_if_empty(self) -> bool:
        """Remove the folder if it holds nothing but its lock file (a run that failed
        before writing anything); release the lock. Returns whether it was removed."""
        self._lock.release()
        if self.path.is_dir() and all(p.name == LOCK for p in self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)
            return True
        return False

    # -- writing (under the lock) -----------------------------------------------------------

    def write_config(self, text: str) -> None:
        """Write ``config.yaml``."""
        write_text_atomic(text, self.path / CONFIG)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json``."""
        write_json_atomic(summary, self.path / SUMMARY)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (all or nothing)."""
        _append_line(self.path / METRICS, json.dumps(row) + "\n")

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` by ``rows``."""
        write_text_atomic("".join(json.dumps(r) + "\n" for r in rows), self.path / METRICS)

    def commit_epoch(
        self, state: dict[str, Any], row: dict[str, Any], summary: dict[str, Any], *, best: bool
    ) -> None:
        """Record a finished epoch: ``last.pt`` (holding ``row``), ``best.pt``, the metrics
        row, then ``summary.json`` — the order that keeps them consistent after a kill.

        Args:
            state: Checkpoint payload (``epoch``, ``model``, ...).
            row: The epoch's metrics row.
            summary: The summary after this epoch.
            best: Whether this epoch is the best so far (``best.pt`` is written).

        Raises:
            FolderWriteError: A file cannot be written; what was already written is
                consistent (nothing claims an epoch that ``last.pt`` does not hold).
        """
        save_checkpoint({**state, "row": row}, self.path, best=best)
        self.append_metrics(row)
        self.write_summary(summary)

    def commit_step(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        """Record a checkpoint inside an epoch: ``last.pt`` (``state`` holds the ``step``
        and the epoch's progress), then ``summary.json``; ``best.pt`` and the metrics rows,
        which are per finished epoch, stay as they are.

        Raises:
            FolderWriteError: A file cannot be written (``last.pt`` is the old one, or the
                summary lags one step behind it).
        """
        save_checkpoint(state, self.path)
        self.write_summary(summary)

    def recover(self, checkpoint: str | Path = LAST) -> list[str]:
        """Bring the folder's files in line with ``checkpoint`` before a run resumes from it.

        Removes leftover ``*.tmp`` files; drops metrics rows newer than the checkpoint (and
        repeated rows of one epoch); re-appends the row stored in the checkpoint if it is
        missing; rewrites ``best.pt`` from the checkpoint when it is a best epoch that
        ``best.pt`` does not hold; marks a summary that claims more epochs than it holds.

        Args:
            checkpoint: The checkpoint the run resumes from (a file name in this folder or
                a path); default ``last.pt``.

        Returns:
            One line per repair made (empty when the folder was consistent).

        Raises:
            CheckpointError: The checkpoint is missing or unreadable.
            FolderWriteError: A repair cannot be written.
        """
        repairs = []
        for tmp in sorted(self.path.glob("*" + TMP_SUFFIX)):
            _remove(tmp)
            repairs.append(f"removed the unfinished write {tmp.name}")
        source = self._checkpoint_file(checkpoint)
        ckpt = load_checkpoint(source)
        epoch = int(ckpt["epoch"])
        rows, torn = self._rows(strict=False)
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in rows:
            by_epoch[int(r["epoch"])] = r
        kept = [by_epoch[e] for e in sorted(by_epoch) if e <= epoch]
        if ckpt.get("row") is not None and epoch not in by_epoch:
            kept.append(ckpt["row"])
            repairs.append(f"{METRICS}: added the row of epoch {epoch} stored in {source.name}")
        dropped = len(rows) - len([r for r in rows if int(r["epoch"]) <= epoch])
        if dropped:
            repairs.append(
                f"{METRICS}: dropped {dropped} row(s) newer than {source.name} (epoch {epoch})"
            )
        repeated = len([r for r in rows if int(r["epoch"]) <= epoch]) - len(
            [e for e in by_epoch if e <= epoch]
        )
        if repeated:
            repairs.append(f"{METRICS}: dropped {repeated} repeated row(s)")
        if torn:
            repairs.append(f"{METRICS}: dropped an unfinished last line")
        if kept != rows or torn:
            self.write_metrics(kept)
        repairs += self._recover_best(ckpt, epoch, source)
        repairs += self._recover_summary(epoch, int(ckpt.get("step") or 0), source)
        return repairs

    def _recover_summary(self, epoch: int, step: int, source: Path) -> list[str]:
        """Correct a summary that claims more epochs (or steps) than the checkpoint holds."""
        summary = self.read_summary()
        done, steps = summary.get("epochs_done"), summary.get("steps_done_in_epoch") or 0
        if not isinstance(done, int) or not isinstance(steps, int) or (done, steps) <= (
            epoch, step
        ):
            return []
        claimed, holds = _position(done, steps), _position(epoch, step)
        summary.update(
            status="interrupted",
            epochs_done=epoch,
            steps_done_in_epoch=step,
            message=f"{SUMMARY} claimed {claimed} but {source.name} holds {holds}",
        )
        self.write_summary(summary)
        return [f"{SUMMARY}: claimed {claimed}, {source.name} holds {holds}; corrected"]

    def _recover_best(self, ckpt: dict[str, Any], epoch: int, source: Path) -> list[str]:
        if not ckpt.get("best") or ckpt.get("best_epoch", epoch) != epoch:
            return []
        best = self.path / BEST
        if best.is_file():
            try:
                if int(self.load_checkpoint(BEST)["epoch"]) == epoch:
                    return []
            except CheckpointError:
                pass
        _copy_atomic(source, best)
        return [f"{BEST}: rewritten from {source.name} (epoch {epoch} is the best epoch)"]

    # -- reading (no lock needed) -----------------------------------------------------------

    def read_config_text(self) -> str:
        """The text of ``config.yaml``."""
        try:
            return (self.path / CONFIG).read_text()
        except OSError as exc:
            raise RunDirError(f"cannot read {self.path / CONFIG}: {_reason(exc)}") from exc

    def read_summary(self) -> dict[str, Any]:
        """``summary.json``, or ``{}`` when there is none yet.

        Raises:
            RunDirError: The file is not a JSON object.
        """
        path = self.path / SUMMARY
        if not path.is_file():
            return {}
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"cannot read {path}: {exc}") from exc
        if not isinstance(summary, dict):
            raise RunDirError(f"cannot read {path}: expected a JSON object")
        return summary

    def _rows(self, *, strict: bool) -> tuple[list[dict[str, Any]], bool]:
        path = self.path / METRICS
        if not path.is_file():
            return [], False
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or "epoch" not in row:
                if number == len(lines) and not strict:
                    return rows, True
                raise RunDirError(f"{path} line {number} is not a metrics row: {line[:80]!r}")
            rows.append(row)
        return rows, False

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (``[]`` when there is none yet).

        Raises:
            RunDirError: A line is not a metrics row.
        """
        return self._rows(strict=True)[0]

    def checkpoint_path(self, name: str = LAST) -> Path:
        """Path of a checkpoint file in this folder (``last.pt``, ``prev.pt``, ``best.pt``)."""
        return self.path / name

    def _checkpoint_file(self, name_or_path: str | Path) -> Path:
        path = Path(name_or_path)
        return self.path / path if len(path.parts) == 1 else path

    def load_checkpoint(
        self, name_or_path: str | Path = LAST, map_location: str | torch.device = "cpu"
    ) -> dict[str, Any]:
        """A checkpoint of this folder (by file name) or any path, loaded and validated
        (see :func:`load_checkpoint`)."""
        return load_checkpoint(self._checkpoint_file(name_or_path), map_location)
