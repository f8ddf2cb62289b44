"""Checking config values against their type annotations: types, closed choices, ranges.

A config field's annotation says everything a value must satisfy:

- its type (``int``, ``float``, ``bool``, ``str``, ``list[float]``, ``X | None``);
- a closed set of choices, ``typing.Literal["none", "bf16"]``;
- a range or a pattern, as ``typing.Annotated`` metadata: ``Annotated[int, Range(1)]``
  (``>= 1``), ``Annotated[str, Pattern(r"cpu|cuda", "cpu or cuda")]``.

:func:`check_value` applies all of them and raises :class:`~normlab.errors.ConfigError`
with a one-line message naming the key, what was expected and what was given. Open sets
of names (norms, models, data sets) are checked against their registries by the config
sections themselves, with :func:`unknown_name` giving the nearest valid names.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from normlab.errors import ConfigError

__all__ = [
    "Fraction",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Pattern",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "UnitInterval",
    "check_keywords",
    "check_value",
    "closest",
    "keyword_parameters",
    "one_of",
    "unknown_name",
]

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_UNPACK = re.compile(r"(?:\w+\.)*Unpack\[(\w+)\]")
_SCALARS = (int, float, bool, str, type(None))


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in (``Annotated`` metadata).

    Attributes:
        low: Lower bound, or ``None`` for none.
        high: Upper bound, or ``None`` for none.
        low_open: Exclude ``low`` itself (``> low`` rather than ``>= low``).
        high_open: Exclude ``high`` itself.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Pattern:
    """A regular expression a string must match in full (``Annotated`` metadata).

    Attributes:
        regex: The pattern.
        text: What it accepts, in words, for messages (e.g. ``auto, cpu, cuda or cuda:N``).
    """

    regex: str
    text: str

    def holds(self, value: str) -> bool:
        """Whether ``value`` matches the whole pattern."""
        return re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.text


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1, high_open=True)]
"""A number in ``[0, 1)`` (momentum, label smoothing)."""
UnitInterval = Annotated[float, Range(0, 1)]
"""A number in ``[0, 1]`` (a learning-rate factor)."""


def one_of(choices: Iterable[Any]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``: choices for a message."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def closest(name: str, valid: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the valid names nearest ``name``, or an empty string."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" Did you mean {one_of(close)}?" if close else ""


def unknown_name(key: str, name: str, what: str, valid: Iterable[str], listing: str) -> ConfigError:
    """The error for a name no registry holds: the nearest valid names, then all of them.

    Args:
        key: The config key, e.g. ``model.name``.
        name: The value given.
        what: What the registry holds, e.g. ``model``.
        valid: The valid names.
        listing: The command that lists them, e.g. ``normlab list models``.
    """
    valid = list(valid)
    return ConfigError(
        f"{key}: unknown {what} {name!r}.{closest(name, valid)} "
        f"Valid: {', '.join(valid)} (see `{listing}`)."
    )


def _type_name(annotation: Any) -> str:
    if typing.get_args(annotation):
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _base(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` metadata (also inside ``X | None``)."""
    if typing.get_origin(annotation) is Annotated:
        return typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = tuple(_base(a) for a in typing.get_args(annotation))
        return typing.Union[options]  # noqa: UP007 (a runtime union of runtime values)
    return annotation


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as ``annotation`` (no metadata) says, converting only losslessly."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        choices = typing.get_args(annotation)
        if value in choices and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be {one_of(choices)}, got {value!r}")
    elif annotation is Any:
        return value
    elif origin is list and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(annotation)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple and isinstance(value, (list, tuple)):
        items = typing.get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        if len(items) == len(value):
            return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    elif origin is dict and isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    elif annotation is bool and isinstance(value, bool):
        return value
    elif annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    elif annotation is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
    elif annotation is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(
        f"config key {key!r} expects {_type_name(annotation)}, got {value!r} "
        f"({type(value).__name__})"
    )


def _constraints(annotation: Any) -> tuple[list[Range | Pattern], bool]:
    """The ``Range``/``Pattern`` metadata of ``annotation`` and whether ``None`` is valid."""
    if typing.get_origin(annotation) is Annotated:
        meta = [m for m in typing.get_args(annotation)[1:] if isinstance(m, (Range, Pattern))]
        return meta, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        found = [m for a in options for m in _constraints(a)[0]]
        return found, type(None) in options
    return [], False


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to ``annotation``'s type and checked against its choices, range
    and pattern.

    Args:
        value: The value given (from YAML, an override or a Python caller).
        annotation: The field's annotation, with ``Annotated`` metadata
            (``typing.get_type_hints(cls, include_extras=True)``).
        key: The dotted config key, for the message.

    Returns:
        The value; a float written as text (YAML 1.1 reads ``5e-4`` as a string) as a
        float, a tuple as a list, mapping keys as strings.

    Raises:
        ConfigError: A value of the wrong type, not among the choices, or out of range.
    """
    value = _coerce(value, _base(annotation), key)
    constraints, optional = _constraints(annotation)
    for constraint in constraints:
        if value is not None and not constraint.holds(value):
            null = " or null" if optional else ""
            raise ConfigError(f"{key} must be {constraint}{null}, got {value!r}")
    return value


def _scope(obj: Any) -> dict[str, Any]:
    """The global names of the module that defines ``obj``."""
    module = inspect.getmodule(obj)
    return vars(module) if module is not None else {}


def _evaluated(annotation: Any, scope: Mapping[str, Any]) -> Any:
    """A text annotation (``from __future__ import annotations``) evaluated in ``scope``;
    ``Any`` when it names something not importable at run time (a ``TYPE_CHECKING``
    import)."""
    if isinstance(annotation, typing.ForwardRef):  # a TypedDict's text annotation
        annotation = annotation.__forward_arg__
    if not isinstance(annotation, str):
        return Any if annotation is inspect.Parameter.empty else annotation
    try:
        return eval(annotation, dict(scope))
    except Exception:
        return Any


def keyword_parameters(fn: Callable[..., Any], *, forwarded: bool = False) -> dict[str, Any] | None:
    """The keyword arguments ``fn`` accepts and their annotations; ``None`` when it takes
    arbitrary keywords.

    A function that forwards ``**kwargs`` to the class it returns accepts that class's
    options except the required ones (which it supplies itself); ``**options:
    Unpack[SomeTypedDict]`` accepts the TypedDict's keys.

    Args:
        fn: A function or class.
        forwarded: Only the parameters with defaults (``fn`` gets the others from a caller
            that forwards its ``**kwargs``).
    """
    signature = inspect.signature(fn)
    scope = _scope(fn)
    found: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            unpack = _UNPACK.fullmatch(str(parameter.annotation))
            target = scope.get(unpack.group(1) if unpack else str(signature.return_annotation))
            if not isinstance(target, type):
                return None
            if unpack:
                typed = _scope(target)
                found.update({k: _evaluated(a, typed) for k, a in target.__annotations__.items()})
                continue
            more = keyword_parameters(target, forwarded=True)
            if more is None:
                return None
            found.update(more)
        elif parameter.kind in (parameter.VAR_POSITIONAL, parameter.POSITIONAL_ONLY):
            continue
        elif not forwarded or parameter.default is not parameter.empty:
            found[parameter.name] = _evaluated(parameter.annotation, scope)
    return found


def _checkable(annotation: Any) -> bool:
    """Whether :func:`check_value` understands ``annotation`` whole (plain values, choices,
    lists and tuples of them, unions with ``None``)."""
    origin = typing.get_origin(annotation)
    if origin is Literal or annotation in _SCALARS:
        return True
    if origin in (typing.Union, types.UnionType, list, tuple, Annotated):
        args = typing.get_args(annotation)
        inner = args[:1] if origin is Annotated else args
        return all(a is Ellipsis or _checkable(a) for a in inner)
    return False


def check_keywords(key: str, values: Mapping[str, Any], annotations: Mapping[str, Any]) -> None:
    """Check each of ``values`` against the annotation of the parameter it is passed to,
    where :func:`check_value` understands that annotation (others are the callee's to
    check).

    Args:
        key: The dotted config key of the mapping, e.g. ``data.kwargs``.
        values: The keyword arguments.
        annotations: Parameter name -> annotation (:func:`keyword_parameters`).

    Raises:
        ConfigError: A value of the wrong type, e.g. ``data.kwargs.size=abc``.
    """
    for name, value in values.items():
        annotation = annotations.get(name, Any)
        if _checkable(annotation):
            check_value(value, annotation, f"{key}.{name}")
