"""Checkpoints: atomic writes, a kept previous checkpoint, and validated loading.

Files in a run folder:

- ``last.pt``: the state after the most recent finished epoch;
- ``prev.pt``: the ``last.pt`` it replaced (the fallback if ``last.pt`` is ever damaged);
- ``best.pt``: the state after the epoch with the best test accuracy.

Every file is written to ``<name>.tmp``, flushed and fsync'ed, then moved into place with
``os.replace``, so a crash mid-write never leaves a partial ``*.pt``: the previous file is
intact and the temporary is removed (or, after a power cut, ignored). Checkpoints hold only
tensors and plain python values and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from normlab.train.errors import CheckpointError

__all__ = [
    "BEST",
    "FORMAT",
    "LAST",
    "PREV",
    "atomic_save",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "normlab-checkpoint"
VERSION = 1
LAST, PREV, BEST = "last.pt", "prev.pt", "best.pt"
_REQUIRED = ("format", "version", "epoch", "model")


def _write_tmp(obj: Any, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``.

    If saving fails, ``path`` keeps its old content and no temporary file is left.
    """
    path = Path(path)
    os.replace(_write_tmp(obj, path), path)


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, *, best: bool = False) -> Path:
    """Write ``last.pt`` (moving the old one to ``prev.pt``) and, if ``best``, ``best.pt``.

    Args:
        state: Checkpoint payload; ``format`` and ``version`` are added.
        run_dir: The run folder.
        best: Also write ``best.pt``.

    Returns:
        Path of ``last.pt``.
    """
    run_dir = Path(run_dir)
    payload = {"format": FORMAT, "version": VERSION, **state}
    last = run_dir / LAST
    tmp = _write_tmp(payload, last)
    if last.exists():
        os.replace(last, run_dir / PREV)
    os.replace(tmp, last)
    if best:
        atomic_save(payload, run_dir / BEST)
    return last


def _fallback_hint(path: Path) -> str:
    prev = path.with_name(PREV)
    if path.name == LAST and prev.is_file():
        return (
            f" The previous checkpoint is kept: resume from it with "
            f"`normlab train --resume {prev}` (it is one epoch older)."
        )
    return ""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a normlab checkpoint.

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
        raise CheckpointError(
            f"checkpoint {path} cannot be read, it is truncated or corrupt "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
            f"{_fallback_hint(path)}"
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
