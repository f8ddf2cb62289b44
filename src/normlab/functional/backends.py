"""Backend selection for the moments -> affine op: ``"reference"`` or ``"fused"``.

The global default is ``"fused"``. :func:`use_backend` switches it for a block of code;
each normlab layer can also pin its own backend (``layer.backend = "reference"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BACKENDS", "get_backend", "resolve_backend", "set_backend", "use_backend"]

BACKENDS = ("reference", "fused")
_default = "fused"


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The global default backend."""
    return _default


def set_backend(name: str) -> None:
    """Set the global default backend (``"reference"`` or ``"fused"``)."""
    global _default
    _default = _check(name)


def resolve_backend(name: str | None) -> str:
    """A layer's backend: its own choice, or the global default when ``None``."""
    return _default if name is None else _check(name)


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use ``name`` as the global default backend inside a ``with`` block."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
