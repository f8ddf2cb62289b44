"""The cache of an index (image folder, WebDataset shards): one ``.npz`` file per index.

A cache file holds the index's arrays and a JSON record of the key it was built for (and
whatever else its owner needs to check freshness). It is found by a digest of the key,
written atomically (temporary file, then rename), and a missing, broken or foreign file
reads as no cache, so the index is rebuilt and the file rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_DIR_ENV", "cache_file", "default_cache_dir", "load_index", "store_index"]

CACHE_DIR_ENV = "NORMLAB_CACHE_DIR"
"""Environment variable naming the index cache folder."""


def default_cache_dir() -> Path:
    """``$NORMLAB_CACHE_DIR`` when set, else ``~/.cache/normlab/index``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "normlab" / "index"


def cache_file(cache_dir: str | Path | None, kind: str, key: dict[str, Any]) -> Path:
    """The cache file of the index ``key`` of ``kind`` (e.g. ``"folder"``) in ``cache_dir``
    (default :func:`default_cache_dir`)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return folder / f"{kind}-{digest}.npz"


def load_index(
    file: Path, key: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The record and arrays stored in ``file`` for ``key``; ``None`` when the file is
    missing, broken or holds another key."""
    try:
        with np.load(file, allow_pickle=False) as stored:
            record = json.loads(str(stored["record"]))
            if record.get("key") != json.loads(json.dumps(key)):
                return None
            return record, {name: stored[name] for name in stored.files if name != "record"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def store_index(
    file: Path, key: dict[str, Any], record: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Write ``arrays`` and ``record`` (with ``key``) to ``file`` atomically; a cache that
    cannot be written only warns (the index is rebuilt next time)."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp", delete=False) as out:
            payload: dict[str, Any] = {
                "record": np.array(json.dumps({**record, "key": key})), **arrays
            }
            np.savez(out, **payload)
        os.replace(out.name, file)
    except OSError as error:
        warnings.warn(f"cannot write the index cache {file}: {error}", stacklevel=3)
