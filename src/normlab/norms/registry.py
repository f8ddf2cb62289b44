"""The norm registry: each normalizer registers itself, and everything else asks here.

A normalizer is one module of this package whose family class carries
``@register_norm(name, ...)``. Registering gives it, without any other file knowing its
name:

- its layer classes for :func:`create_norm`, :func:`get_norm_layer` and
  :func:`resolve_norm` (the family class ``Foo`` names its forms ``Foo1d``/``Foo2d``/
  ``Foo3d`` in its own module), by name or alias;
- its constructor options for configuration files and the command line
  (:func:`norm_options`, :func:`validate_norm_kwargs`);
- what :func:`~normlab.norms.norm_summary` records of its learned state (``summary``, and
  ``probe`` for what it measures on an input batch);
- its figure in reports, as data (:class:`FigureSpec`; the drawing code lives in
  :mod:`normlab.report.figures`, norms import no plotting library);
- its rows in the generated test tables: its constructor variants (``test_variants``) and
  how it meets its closest ``torch.nn`` layer (:class:`TorchTwin`, or ``None``).

As in timm's norm registry, ``norm`` may be a registered name (or alias), a layer class, or
a :func:`functools.partial` of one; models take such a value and build every
normalization layer through :func:`create_norm`. The normalizers that ship with normlab
are imported, in the order :func:`list_norms` gives them, by :mod:`normlab.norms.builtin`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from normlab.norms.base import NormBase, NormConfigError

__all__ = [
    "FigureSpec",
    "NormInfo",
    "NormSpec",
    "TorchTwin",
    "canonical_norm",
    "create_norm",
    "get_norm_layer",
    "list_norms",
    "norm_aliases",
    "norm_figure",
    "norm_info",
    "norm_info_of",
    "norm_layer",
    "norm_options",
    "register_norm",
    "registered_norm",
    "resolve_norm",
    "unregister_norm",
    "validate_norm_kwargs",
]

NormSpec = str | type | Callable[..., nn.Module]
Record = dict[str, Any]
"""One layer's plain-data description (a ``norm_summary`` entry or part of one)."""
T = TypeVar("T", bound=type)

DIMS = (1, 2, 3)
NOT_OPTIONS = ("self", "num_features")
"""Constructor parameters that are not options of a norm (C comes from the model)."""


@dataclass(frozen=True)
class FigureSpec:
    """How a report draws what a norm learned, one mark per layer (``norm_summary``
    records), as data: :func:`normlab.report.figures.draw_norm_figure` draws it.

    Attributes:
        kind: ``"ratios"`` (one panel of stacked bars per key: each record's list of
            ratios, stacked over the names in ``record[parts]``), ``"boxes"`` (a box plot
            of each record's list of values under ``keys[0]``) or ``"quantiles"`` (median,
            quartile and min-max bands of each record's statistics under ``keys[0]``).
        file: the figure's file name in a report folder.
        caption: what the figure shows, one sentence for reports.
        keys: the record entries drawn; a figure is drawn only when every record has them
            (IEBN's gate values exist only when ``norm_summary`` was given inputs).
        labels: y-axis label of each key's panel.
        xlabel: x-axis label.
        ylim: y-axis range.
        parts: ``"ratios"``: the record entry naming the stacked parts.
        reference: a horizontal reference line ``(value, label)``, or ``None``.
        needs_inputs: drawn from what ``norm_summary`` measures on an input batch (the
            norm's ``probe``), so only where a report has such a batch.
    """

    kind: str
    file: str
    caption: str
    keys: tuple[str, ...]
    labels: tuple[str, ...]
    xlabel: str
    ylim: tuple[float, float] = (0.0, 1.0)
    parts: str = ""
    reference: tuple[float, str] | None = None
    needs_inputs: bool = False


@dataclass(frozen=True)
class TorchTwin:
    """How a norm meets its closest ``torch.nn`` layer (tests/norms/test_torch_contract.py
    compares every registered norm that declares one with it, in float64).

    Attributes:
        kind: ``"bn"`` (``nn.BatchNorm{1,2,3}d``), ``"in"`` (``nn.InstanceNorm{1,2,3}d``)
            or ``"gn"`` (``nn.GroupNorm``).
        groups: groups of the ``nn.GroupNorm`` twin (kind ``"gn"``).
        kwargs: constructor arguments the norm always gets in the comparison.
        point: extra constructor arguments that make the layer compute what the twin
            computes (outputs and gradients); empty when it always does.
        init: constructor arguments giving its own parameters non-default initial
            values (for the ``reset_parameters`` tests).
        instance_branch: the layer also normalizes each (n, c) by its own statistics (so
            it needs more than one value per (n, c) in training).
    """

    kind: str
    groups: int = 0
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    point: Mapping[str, Any] = field(default_factory=dict)
    init: Mapping[str, Any] = field(default_factory=dict)
    instance_branch: bool = False


@dataclass(frozen=True)
class NormInfo:
    """Everything registered with a norm (see :func:`register_norm`)."""

    name: str
    family: type[NormBase]
    aliases: tuple[str, ...]
    dims: tuple[int, ...]
    twin: TorchTwin | None
    summary: Callable[[Any], Record] | None = None
    probe: Callable[[Any, torch.Tensor], Record] | None = None
    figure: FigureSpec | None = None
    test_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"": {}})
    gradcheck_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def layer_class(self, dim: int) -> type[NormBase]:
        """The family's form for ``dim``: the class ``<Family><dim>d`` of its module."""
        if dim not in self.dims:
            raise NormConfigError(
                f"norm {self.name!r} has no {dim}d form; dims: {list(self.dims)}"
            )
        class_name = f"{self.family.__name__}{dim}d"
        cls = getattr(sys.modules[self.family.__module__], class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, self.family)):
            raise TypeError(
                f"norm {self.name!r} registers {self.family.__name__} for {dim}d, but its "
                f"module {self.family.__module__} defines no subclass {class_name}"
            )
        return cls


_NORMS: dict[str, NormInfo] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_norm(
    name: str,
    *,
    twin: TorchTwin | None,
    aliases: tuple[str, ...] = (),
    dims: tuple[int, ...] = DIMS,
    summary: Callable[[Any], Record] | None = None,
    probe: Callable[[Any, torch.Tensor], Record] | None = None,
    figure: FigureSpec | None = None,
    test_variants: Mapping[str, Mapping[str, Any]] | None = None,
    gradcheck_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[T], T]:
    """Class decorator registering a normalizer family under ``name``.

    Example (a new norm is one module of ``normlab/norms`` like this, and its import in
    :mod:`normlab.norms.builtin`)::

        @register_norm("brn", aliases=("batchrenorm",), twin=TorchTwin("bn", point=...))
        class BatchRenorm(BatchNorm): ...

        class BatchRenorm1d(BatchRenorm):
            dim = 1
        # ... BatchRenorm2d, BatchRenorm3d

    Args:
        name: the canonical name (``model.norm`` in configs, ``create_norm(name, C)``).
        twin: how it meets its closest ``torch.nn`` layer, or ``None`` when it has none
            (a required declaration: the torch-contract tables cover every norm with one).
        aliases: other accepted spellings (case, ``-`` and ``_`` are ignored).
        dims: the forms it has (classes ``<Family>1d`` ... in the family's module).
        summary: ``summary(layer) -> dict``: its learned state for ``norm_summary``.
        probe: ``probe(layer, x) -> dict``: what ``norm_summary(model, inputs)`` measures
            on the layer's input ``x``.
        figure: its figure in reports (:class:`FigureSpec`).
        test_variants: variant suffix -> constructor arguments, one row each in the
            generated test tables (default ``{"": {}}``: the defaults only).
        gradcheck_kwargs: constructor arguments the generated numerical gradient checks
            add in training, for a norm whose backward treats part of its training
            forward as constant (BRN's r and d): where that part is constant, so that the
            gradient is the forward's derivative. Default: none (it always is).

    Raises:
        NormConfigError: when ``name`` or an alias is taken by another norm.
    """

    def register(family: T) -> T:
        if not issubclass(family, NormBase):
            raise TypeError(f"register_norm({name!r}) decorates a NormBase subclass")
        spellings = {_key(alias) for alias in (name, *aliases)}
        taken = sorted(a for a in spellings if a in _ALIASES and _ALIASES[a] != name)
        if taken:
            raise NormConfigError(f"norm name(s) {taken} of {name!r} are already registered")
        unregister_norm(name, missing_ok=True)
        _NORMS[name] = NormInfo(
            name=name,
            family=family,
            aliases=tuple(aliases),
            dims=tuple(dims),
            twin=twin,
            summary=summary,
            probe=probe,
            figure=figure,
            test_variants={"": {}} if test_variants is None else dict(test_variants),
            gradcheck_kwargs=dict(gradcheck_kwargs or {}),
        )
        for spelling in spellings:
            _ALIASES[spelling] = name
        return family

    return register


def unregister_norm(name: str, *, missing_ok: bool = False) -> None:
    """Remove a registered norm and its aliases (for tests and interactive sessions)."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        if missing_ok:
            return
        raise _unknown(name)
    del _NORMS[canonical]
    for alias in [a for a, n in _ALIASES.items() if n == canonical]:
        del _ALIASES[alias]


@contextmanager
def registered_norm(name: str, family: T, **options: Any) -> Iterator[T]:
    """Register ``family`` as :func:`register_norm` would, for the ``with`` block only."""
    options.setdefault("twin", None)
    register_norm(name, **options)(family)
    try:
        yield family
    finally:
        unregister_norm(name, missing_ok=True)


def list_norms() -> list[str]:
    """The registered canonical names, in registration order."""
    return list(_NORMS)


def norm_aliases() -> dict[str, str]:
    """Every accepted spelling -> canonical name."""
    return dict(_ALIASES)


def _unknown(name: str) -> NormConfigError:
    """The error for a name that is neither a registered name nor an alias."""
    close = difflib.get_close_matches(_key(name), list(_ALIASES), n=1)
    hint = f"did you mean {_ALIASES[close[0]]!r}? " if close else ""
    aliases = sorted(a for a in _ALIASES if a not in _NORMS)
    return NormConfigError(
        f"unknown norm {name!r}; {hint}valid names: {', '.join(list_norms())} "
        f"(aliases: {', '.join(aliases)})"
    )


def canonical_norm(name: str) -> str:
    """The canonical name of a registered name or alias.

    Raises:
        NormConfigError: (a ValueError) for an unknown name, naming the closest valid one.
    """
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise _unknown(name)
    return canonical


def norm_info(name: str) -> NormInfo:
    """What is registered under ``name`` (or an alias)."""
    return _NORMS[canonical_norm(name)]


def norm_info_of(layer: nn.Module | type) -> NormInfo | None:
    """The registration of the most specific registered family ``layer`` belongs to (so an
    IEBN layer gets IEBN's, not BatchNorm's); ``None`` for unregistered layers."""
    cls = layer if isinstance(layer, type) else type(layer)
    by_family = {info.family: info for info in _NORMS.values()}
    for base in cls.__mro__:
        if base in by_family:
            return by_family[base]
    return None


def norm_figure(name: str) -> FigureSpec | None:
    """The report figure of the norm named ``name`` (or an alias); ``None`` if it has none."""
    return norm_info(name).figure


def resolve_norm(name: str, dim: int = 2) -> type[NormBase]:
    """The layer class registered under ``name`` (or an alias) for ``dim``."""
    return norm_info(name).layer_class(dim)


def norm_options(name: str, dim: int = 2) -> dict[str, inspect.Parameter]:
    """The constructor options of a norm, by name (everything after C: ``eps``,
    ``momentum``, its own settings, ``device``...), for configs and the command line; a
    constructor that passes ``**kwargs`` on adds its base class's options. Annotations
    are evaluated (types, not the text ``from __future__ import annotations`` leaves)."""
    options: dict[str, inspect.Parameter] = {}
    for cls in resolve_norm(name, dim).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init, eval_str=True).parameters.values()
        except NameError:  # an annotation names a TYPE_CHECKING-only import
            parameters = inspect.signature(init).parameters.values()
        for p in parameters:
            if p.name not in NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                options.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return options


def validate_norm_kwargs(name: str, kwargs: Mapping[str, Any], dim: int = 2) -> None:
    """Check options for the norm ``name`` as a training config gives them: every key of
    ``kwargs`` is a constructor option, and ``eps`` is positive.

    The layers themselves take any ``eps`` that torch's twin takes (GroupNorm and
    InstanceNorm accept ``eps <= 0`` and then divide by zero or take the root of a negative
    number); a config that trains with such an ``eps`` is refused here, before a run
    produces NaN.

    Raises:
        NormConfigError: for an unknown norm, an unknown option (naming the closest valid
            one and listing them all), or ``eps <= 0``.
    """
    options = norm_options(name, dim)
    for key in kwargs:
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise NormConfigError(
                f"norm {canonical_norm(name)!r} has no option {key!r}; {hint}"
                f"valid options: {', '.join(options)}"
            )
    eps = kwargs.get("eps")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and not eps > 0:
        raise NormConfigError(
            f"norm {canonical_norm(name)!r}: eps must be > 0 (it is added to the variance "
            f"before the square root), got {eps!r}"
        )


def get_norm_layer(spec: NormSpec, dim: int = 2, **bind: Any) -> Callable[..., nn.Module]:
    """The layer class of ``spec`` for ``dim``, or a :func:`functools.partial` of it keeping
    ``bind`` — the ``norm_layer`` argument torchvision's and timm's models take::

        torchvision.models.resnet50(norm_layer=normlab.norm_layer("gn"))
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
        layer: nn.Module = norm(num_features, **kwargs)
        return layer
    raise TypeError(f"norm must be a name, a class or a callable, got {type(norm).__name__}")
