"""Norm + activation layers: ``<Norm>Act{1,2,3}d`` for every registered norm, as timm's.

timm fuses a normalization with the activation (and a drop path / drop block) that follows
it in one module, ``BatchNormAct2d``: a subclass of the norm (so its state-dict keys are the
norm's) holding ``drop`` and ``act`` submodules, ``y = act(drop(norm(x)))``. normlab gives
every registered norm the same form — :func:`norm_act_class` derives ``SwitchNormAct2d``
from ``SwitchNorm2d`` and so on — so that a timm model converted by
:func:`normlab.convert_norm` keeps each activation and drop layer where it was, and timm's
norm+act factories can build normlab layers:

    timm.create_model("efficientnet_b0",
                      norm_layer=normlab.norm_act("sn", act_layer=torch.nn.SiLU))

timm 1.0's ``get_norm_act_layer`` takes a plain function as "a fn that creates a norm_act
layer" and passes it **no** ``act_layer`` (only classes of its own get the model's
activation bound). The function :func:`norm_act` returns therefore raises when it is asked
for an activation and none was bound, instead of silently using a default; for models whose
blocks use different activations, build the model with timm's layers and convert it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.norms.registry import NormSpec, list_norms, resolve_norm

__all__ = ["NormAct", "create_act", "get_norm_act_layer", "norm_act", "norm_act_class"]

_TORCH_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "celu": nn.CELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hard_sigmoid": nn.Hardsigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "hard_swish": nn.Hardswish,
    "hardswish": nn.Hardswish,
    "prelu": nn.PReLU,
    "identity": nn.Identity,
}


def _act_class(act_layer: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if not isinstance(act_layer, str):
        return act_layer
    key = act_layer.lower()
    if key in _TORCH_ACTS:
        return _TORCH_ACTS[key]
    found: Callable[..., nn.Module] | None
    try:  # timm's names (e.g. "gelu_tanh"), when timm is installed
        from timm.layers import get_act_layer  # optional dependency: timm

        found = get_act_layer(key)
    except (ImportError, KeyError):
        found = None
    if found is None:
        raise ValueError(
            f"unknown activation {act_layer!r}; give a module class or one of "
            f"{', '.join(sorted(_TORCH_ACTS))}"
        )
    return found


def create_act(
    act_layer: str | Callable[..., nn.Module] | None,
    act_kwargs: dict[str, Any] | None = None,
    inplace: bool = True,
    apply_act: bool = True,
) -> nn.Module:
    """The activation module of a norm+act layer (``nn.Identity`` when there is none).

    ``inplace`` is passed only to activations that take it (as timm's ``_create_act``).
    """
    if not apply_act or act_layer is None:
        return nn.Identity()
    act_class = _act_class(act_layer)
    kwargs = dict(act_kwargs or {})
    try:
        takes_inplace = "inplace" in inspect.signature(act_class).parameters
    except (TypeError, ValueError):
        takes_inplace = False
    if takes_inplace:
        kwargs.setdefault("inplace", inplace)
    return act_class(**kwargs)


class NormAct(nn.Module):
    """Mixin: a normlab norm followed by ``drop`` and ``act`` (``act(drop(norm(x)))``).

    Args:
        num_features: C.
        apply_act: False builds no activation (``act`` is ``nn.Identity``).
        act_layer: activation class, name, or ``None`` for none (default ``nn.ReLU``, as
            timm's ``BatchNormAct2d``).
        act_kwargs: keyword arguments of the activation.
        inplace: in-place activation where the activation supports it.
        drop_layer: class of a drop path / drop block applied before the activation.
        **norm_kwargs: the norm's own arguments (``eps``, ``momentum``, ``device``, ...).

    The parameters and buffers of the norm keep their names, so a norm's state dict loads
    into its norm+act layer (and back); ``act`` and ``drop`` are submodules, as in timm.
    """

    if TYPE_CHECKING:  # from the norm class it is mixed with (see norm_act_class)

        def normalize(self, x: torch.Tensor) -> torch.Tensor: ...

    def __init__(
        self,
        num_features: int,
        *,
        apply_act: bool = True,
        act_layer: str | Callable[..., nn.Module] | None = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: Callable[[], nn.Module] | None = None,
        **norm_kwargs: Any,
    ) -> None:
        super().__init__(num_features, **norm_kwargs)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = create_act(act_layer, act_kwargs, inplace, apply_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.drop(self.normalize(x)))
        return y


@functools.cache
def norm_act_class(norm_class: type) -> type:
    """The ``<Norm>Act`` class of a normlab layer class, e.g. ``SwitchNormAct2d``.

    The class is created once per norm class and published in this module under its name,
    so that models holding it pickle and unpickle.
    """
    if issubclass(norm_class, NormAct):
        return norm_class
    name = norm_class.__name__
    dims = name[-2:] if name[-2:] in ("1d", "2d", "3d") else ""
    act_name = f"{name[: len(name) - len(dims)]}Act{dims}"
    cls = type(
        act_name,
        (NormAct, norm_class),
        {"__module__": __name__, "__qualname__": act_name, "__doc__": (
            f"{name} followed by ``drop`` and ``act`` (see :class:`NormAct`)."
        )},
    )
    globals().setdefault(act_name, cls)
    return cls


def get_norm_act_layer(
    spec: NormSpec, dim: int = 2, **bind: Any
) -> type | functools.partial[nn.Module]:
    """The norm+act class of ``spec`` for ``dim``, or a :func:`functools.partial` of it
    keeping ``bind`` (as timm's ``get_norm_act_layer`` returns a class or a partial)."""
    if isinstance(spec, functools.partial):
        bind = {**spec.keywords, **bind}
        spec = spec.func
    norm_class = resolve_norm(spec, dim) if isinstance(spec, str) else spec
    if not isinstance(norm_class, type):
        raise TypeError(
            f"norm_act needs a registered name or a normlab layer class, got {spec!r}"
        )
    cls = norm_act_class(norm_class)
    return functools.partial(cls, **bind) if bind else cls


_UNBOUND = object()


def norm_act(spec: NormSpec = "bn", dim: int = 2, **bind: Any) -> Callable[..., nn.Module]:
    """A function ``build(num_features, **kwargs) -> <Norm>Act`` for timm's factories.

    timm's ``get_norm_act_layer``/``create_norm_act_layer`` accept it as a norm+act layer
    (a plain function). They pass it no ``act_layer``, so bind the activation here:
    ``norm_act("sn", act_layer=nn.SiLU)``; ``act_layer=None`` for none. A call that asks
    for an activation (``apply_act=True``, the default) when none was bound or passed
    raises ``TypeError`` rather than picking one silently.

    Args:
        spec: a registered name (see :func:`normlab.list_norms`) or a normlab layer class.
        dim: 1, 2 or 3.
        **bind: arguments of every layer built (``act_layer``, ``eps``, ``momentum``, ...).
    """
    layer = get_norm_act_layer(spec, dim)
    name = getattr(layer, "__name__", spec)
    bound_act = bind.pop("act_layer", _UNBOUND)

    def build(num_features: int, **kwargs: Any) -> nn.Module:
        kwargs = {**bind, **kwargs}
        act_layer = kwargs.pop("act_layer", bound_act)
        if act_layer is _UNBOUND:
            if kwargs.get("apply_act", True):
                raise TypeError(
                    f"normlab.norm_act({spec!r}): no act_layer was bound or passed (timm "
                    "passes none to a function); bind the model's activation, e.g. "
                    f"normlab.norm_act({spec!r}, act_layer=torch.nn.SiLU), or act_layer=None"
                )
            act_layer = None
        built: nn.Module = layer(num_features, act_layer=act_layer, **kwargs)
        return built

    build.__name__ = build.__qualname__ = f"norm_act_{name}"
    return build


_FAMILIES: list[type] = [resolve_norm(n, d) for n in list_norms() for d in (1, 2, 3)]
_GENERATED = [norm_act_class(family) for family in _FAMILIES]
__all__ += [cls.__name__ for cls in _GENERATED]  # noqa: PLE0605 - generated classes
