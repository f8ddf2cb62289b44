"""What a run records besides its run folder's files: environment, settings, TensorBoard.

The run folder's files (``metrics.jsonl``, ``summary.json``, checkpoints) are written and
read by :mod:`normlab.train.run_folder`, which also holds the one atomic write.

- :func:`environment`: versions, device and source commit, for ``summary.json``.
- :func:`pin_settings`: results in a folder are only comparable with the same settings.
- Optional TensorBoard scalars (``run.tensorboard: true``; needs the ``tensorboard`` package).
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from normlab.train.errors import RunDirError
from normlab.train.run_folder import write_json_atomic

__all__ = [
    "TensorBoardLog",
    "differences",
    "environment",
    "pin_settings",
]


def differences(asked: Any, stored: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, asked value)`` of every leaf where two nested
    dictionaries of settings differ, sorted by key."""
    if isinstance(asked, dict) and isinstance(stored, dict):
        found = []
        for key in sorted(set(asked) | set(stored)):
            found += differences(asked.get(key), stored.get(key), f"{prefix}{key}.")
        return found
    return [] if asked == stored else [(prefix[:-1], stored, asked)]


def pin_settings(settings: dict[str, Any], path: str | Path, what: str) -> None:
    """Write ``settings`` (JSON-able) to ``path``, or check that the file there holds the same.

    Results in a folder are only comparable when they were made with the same settings.

    Raises:
        ValueError: ``path`` holds other settings (the message names the keys that differ).
    """
    path = Path(path)
    mine = json.loads(json.dumps(settings))
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mine, path)
        return
    changed = [key for key, _, _ in differences(mine, json.loads(path.read_text()))]
    if changed:
        raise ValueError(
            f"{path.parent} holds {what} made with other settings ({', '.join(changed)}); "
            "choose another --out or delete that folder to start over"
        )


class TensorBoardLog:
    """Scalars to TensorBoard, if requested; raises a clear error when it is not installed."""

    def __init__(self, run_dir: str | Path, enabled: bool) -> None:
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency: tensorboard
        except ImportError as exc:
            raise RunDirError(
                "run.tensorboard is true but TensorBoard is not installed: "
                "`pip install normlab[tensorboard]`, or set run.tensorboard=false"
            ) from exc
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        """Write every numeric field of an epoch row at step ``epoch``."""
        if self._writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        """Close the writer."""
        if self._writer is not None:
            self._writer.close()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and source commit, for ``summary.json``."""
    try:
        normlab_version = metadata.version("normlab")
    except metadata.PackageNotFoundError:
        normlab_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "normlab_version": normlab_version,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": name or platform.machine(),
        "num_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }
