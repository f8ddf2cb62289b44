"""Seeding and capture/restore of every random generator a training run draws from."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and all CUDA devices).

    Args:
        seed: The seed.
        deterministic: Also ask torch for deterministic algorithms (warns, not fails, where
            an operation has none) and turn off cuDNN auto-tuning.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code draws from the global generator
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict[str, Any]:
    """Snapshot of all global generators, storable with ``torch.save(weights_only=True)``.

    numpy's state is stored as a tensor so that checkpoints load with ``weights_only=True``.
    """
    legacy_state = np.random.get_state()  # noqa: NPY002
    assert isinstance(legacy_state, tuple)  # legacy=True, the default, gives the tuple
    kind, keys, pos, has_gauss, cached = legacy_state
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from :func:`get_rng_state` (CUDA states only when CUDA is present)."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (
            np_state["kind"],
            keys,
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
