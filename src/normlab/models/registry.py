"""Model registry: name -> constructor + metadata (input size, paper tables).

Every network module registers its constructors with :func:`register_model`;
:func:`create_model` builds one by name, :func:`list_models` and :func:`model_info` feed
``normlab list models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "model_constructor",
    "register_model",
]

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """Printable facts about a registered network.

    Attributes:
        name: registry name.
        family: ``"cifar"``, ``"imagenet"`` or ``"style"``.
        input_size: ``(channels, height, width)`` the network is meant for.
        num_classes: default number of outputs (``None`` for non-classifiers).
        tables: the paper tables/figures that use it, e.g. ``"IEBN Table 1"``.
        summary: first line of the constructor's docstring.
    """

    name: str
    family: str
    input_size: tuple[int, int, int]
    num_classes: int | None
    tables: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(
    family: str,
    input_size: tuple[int, int, int],
    num_classes: int | None,
    tables: tuple[str, ...] = (),
    name: str | None = None,
) -> Callable[[F], F]:
    """Decorator registering a constructor under ``name`` (default: its ``__name__``)."""

    def decorate(fn: F) -> F:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        channels, height, width = input_size
        size = (channels, height, width)
        info = ModelInfo(key, family, size, num_classes, tuple(tables), summary)
        _REGISTRY[key] = (fn, info)
        return fn

    return decorate


def _lookup(name: str) -> tuple[Callable[..., nn.Module], ModelInfo]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name``; ``kwargs`` go to its constructor.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    return _lookup(name)[0](**kwargs)


def list_models(family: str | None = None) -> list[str]:
    """Sorted registered names, optionally only those of one ``family``."""
    return sorted(k for k, (_, i) in _REGISTRY.items() if family in (None, i.family))


def model_info(name: str) -> dict[str, Any]:
    """Metadata of ``name`` as a plain dict (printable, JSON-serialisable)."""
    return asdict(_lookup(name)[1])


def model_constructor(name: str) -> Callable[..., nn.Module]:
    """The function ``create_model(name, ...)`` calls, e.g. to read the options its
    signature accepts (:func:`normlab.train.validation.keyword_parameters`)."""
    return _lookup(name)[0]
