"""Replays of a forward pass: recomputations that must not repeat its side effects.

A coefficient function may update buffers as a side effect (the running statistics of
BN-type layers, ``num_batches_tracked``). When the fused backend recomputes a forward to
differentiate it a second time (``create_graph=True``, see
:class:`~normlab.functional.AffineNormFunction`), it runs the coefficient function again
inside :func:`replaying`; layers check :func:`is_replaying` and leave their buffers alone.

The flag is per thread: a forward running on another thread at the same time is not a
replay.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["is_replaying", "replaying"]

_state = threading.local()


def is_replaying() -> bool:
    """Whether the current thread is replaying a forward (inside :func:`replaying`); never
    in a ``torch.jit.script`` module, which runs no fused backend to replay it."""
    if torch.jit.is_scripting():
        return False
    else:
        return getattr(_state, "active", False)


@contextmanager
def replaying() -> Iterator[None]:
    """Mark the code inside the ``with`` block as a replay of a forward already run: layers
    compute what they computed then and do not update buffers again."""
    previous = is_replaying()
    _state.active = True
    try:
        yield
    finally:
        _state.active = previous
