"""Checkpoints: atomic writes, a kept previous checkpoint, and validated loading.

The implementation lives in :mod:`normlab.train.run_folder`, the one module that knows how
run-folder files are written; this module keeps the public names importable.

Files in a run folder:

- ``last.pt``: the state after the most recent finished epoch;
- ``prev.pt``: the ``last.pt`` it replaced (the fallback if ``last.pt`` is ever damaged);
- ``best.pt``: the state after the epoch with the best test accuracy.
"""

from __future__ import annotations

from normlab.train.run_folder import (
    BEST,
    FORMAT,
    LAST,
    PREV,
    VERSION,
    atomic_save,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = [
    "BEST",
    "FORMAT",
    "LAST",
    "PREV",
    "VERSION",
    "atomic_save",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
