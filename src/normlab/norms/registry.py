"""Name -> layer registry: ``create_norm(name, C, dim=2, **kw)`` and ``list_norms()``.

As in timm's norm registry, ``norm`` may be a registered name (or alias), a layer class, or
a :func:`functools.partial` of one; models take such a value and build every
normalization layer through :func:`create_norm`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from normlab.norms import batch_instance, iebn, standard, switch

__all__ = [
    "NormSpec",
    "create_norm",
    "get_norm_layer",
    "list_norms",
    "norm_aliases",
    "norm_layer",
    "register_norm",
    "resolve_norm",
]

NormSpec = str | type | Callable[..., nn.Module]

_FAMILIES: dict[str, dict[int, type]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_norm(name: str, classes: dict[int, type], aliases: tuple[str, ...] = ()) -> None:
    """Register a normalizer family: ``classes`` maps dim (1, 2, 3) to its layer class."""
    _FAMILIES[name] = dict(classes)
    for alias in (name, *aliases):
        _ALIASES[_key(alias)] = name


def list_norms() -> list[str]:
    """The registered canonical names, in registration order."""
    return list(_FAMILIES)


def norm_aliases() -> dict[str, str]:
    """Every accepted spelling -> canonical name."""
    return dict(_ALIASES)


def resolve_norm(name: str, dim: int = 2) -> type:
    """The layer class registered under ``name`` (or an alias) for ``dim``."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise ValueError(
            f"unknown norm {name!r}; valid names: {', '.join(list_norms())} "
            f"(aliases: {', '.join(sorted(a for a in _ALIASES if a not in _FAMILIES))})"
        )
    classes = _FAMILIES[canonical]
    if dim not in classes:
        raise ValueError(f"norm {canonical!r} has no {dim}d form; dims: {sorted(classes)}")
    return classes[dim]


def get_norm_layer(spec: NormSpec, dim: int = 2, **bind: Any) -> type | functools.partial:
    """The layer class of ``spec`` for ``dim``, or a :func:`functools.partial` of it keeping
    ``bind`` — the ``norm_layer`` argument torchvision's and timm's models take::

        torchvision.models.resnet50(norm_layer=normlab.norm_layer("sn"))
        timm.create_model("resnet50", norm_layer=normlab.norm_layer("iebn", momentum=0.05))

    Models call it as ``norm_layer(C, **factory_kwargs)`` (timm adds ``device``/``dtype``).
    Like timm's ``get_norm_layer`` it returns a class or a partial, never a built layer; a
    class or partial ``spec`` is returned with ``bind`` merged into it.

    Args:
        spec: a registered name or alias, a layer class, or a partial of one.
        dim: 1, 2 or 3 — which form of a named norm.
        **bind: arguments bound for every layer the model builds.
    """
    if isinstance(spec, functools.partial):
        bind = {**spec.keywords, **bind}
        spec = spec.func
    layer = resolve_norm(spec, dim) if isinstance(spec, str) else spec
    if not callable(layer):
        raise TypeError(f"norm must be a name, a class or a callable, got {type(spec).__name__}")
    return functools.partial(layer, **bind) if bind else layer


norm_layer = get_norm_layer  # named after the models' argument: resnet50(norm_layer=...)


def create_norm(norm: NormSpec, num_features: int, dim: int = 2, **kwargs: Any) -> nn.Module:
    """Build a normalization layer for ``num_features`` channels.

    Args:
        norm: a registered name or alias (see :func:`list_norms`), a layer class, or a
            callable such as ``functools.partial(IEBN2d, operator="fc")``.
        num_features: C.
        dim: 1, 2 or 3 — which form of a named norm to build (ignored for classes and
            callables, which already fix it).
        **kwargs: passed to the layer.
    """
    if isinstance(norm, str):
        return resolve_norm(norm, dim)(num_features, **kwargs)
    if callable(norm):
        return norm(num_features, **kwargs)
    raise TypeError(f"norm must be a name, a class or a callable, got {type(norm).__name__}")


def _family(module, prefix: str) -> dict[int, type]:
    return {d: getattr(module, f"{prefix}{d}d") for d in (1, 2, 3)}


register_norm("bn", _family(standard, "BatchNorm"), ("batchnorm", "batch"))
register_norm("in", _family(standard, "InstanceNorm"), ("instancenorm", "instance"))
register_norm("ln", _family(standard, "LayerNorm"), ("layernorm", "layer"))
register_norm("gn", _family(standard, "GroupNorm"), ("groupnorm", "group"))
register_norm("sn", _family(switch, "SwitchNorm"), ("switchnorm", "switchable", "switch"))
register_norm("iebn", _family(iebn, "IEBN"), ("instanceenhancement", "ban"))
register_norm(
    "bin", _family(batch_instance, "BatchInstanceNorm"), ("batchinstancenorm", "batchinstance")
)
