"""Which modules of a model a filter of names or types selects (``include``/``exclude``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

__all__ = ["ModuleFilter", "matches"]

ModuleFilter = str | type | Iterable[str | type]


def _items(patterns: ModuleFilter) -> tuple[str | type, ...]:
    if isinstance(patterns, (str, type)):
        return (patterns,)
    return tuple(patterns)


def matches(name: str, module: nn.Module, patterns: ModuleFilter) -> bool:
    """Whether the module called ``name`` in its model is selected by ``patterns``.

    A string selects by qualified name: a glob (``"layer1.*.bn1"``) matching the name, or a
    prefix of whole name parts (``"layer1"`` selects ``layer1`` and everything in it); a
    class selects its instances. ``""`` selects the whole model.
    """
    for pattern in _items(patterns):
        if isinstance(pattern, type):
            if isinstance(module, pattern):
                return True
        elif (
            pattern == ""
            or fnmatch.fnmatchcase(name, pattern)
            or name == pattern
            or name.startswith(pattern + ".")
        ):
            return True
    return False
