"""Deterministic random generators derived from tuples of integers."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["seeded_generator"]


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys`` (e.g. ``(seed, epoch)``).

    The keys are hashed with NumPy's ``SeedSequence``, so nearby keys give independent
    streams and the same keys always give the same stream, on every machine.

    Args:
        *keys: Non-negative integers.
    """
    if any(k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative, got {keys}")
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
