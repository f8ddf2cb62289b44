"""``convert_norm``: swap every torch BatchNorm and normlab norm in a model for another norm."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normlab.norms.base import NormBase
from normlab.norms.registry import NormSpec, create_norm, resolve_norm

__all__ = ["convert_norm", "is_norm_layer"]

_TORCH_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
_CARRIED_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``convert_norm`` replaces ``module`` (torch BatchNorm*, any normlab norm)."""
    return isinstance(module, (_BatchNorm, NormBase))


def _layer_dim(module: nn.Module) -> int:
    if isinstance(module, NormBase):
        return module.dim
    return next((d for cls, d in _TORCH_DIMS.items() if isinstance(module, cls)), 2)


def _accepted(target: Any, names: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return names
    return {k: v for k, v in names.items() if k in parameters}


def _inherited_kwargs(old: nn.Module, target: Any) -> dict[str, Any]:
    """Settings carried from the old layer: eps, momentum, affine, disabled running stats."""
    inherited = {"eps": old.eps, "affine": old.affine}
    if hasattr(old, "momentum"):
        inherited["momentum"] = old.momentum
    if getattr(old, "track_running_stats", True) is False:
        inherited["track_running_stats"] = False
    return _accepted(target, inherited)


@torch.no_grad()
def _replace(old: nn.Module, norm: NormSpec, kwargs: dict[str, Any]) -> nn.Module:
    dim = _layer_dim(old)
    target = resolve_norm(norm, dim) if isinstance(norm, str) else norm
    options = {**_inherited_kwargs(old, target), **kwargs}
    new = create_norm(target, old.num_features, dim=dim, **options)
    reference = next(iter(old.parameters()), None)
    if reference is None:
        reference = next(iter(old.buffers()), None)
    if reference is not None:
        new = new.to(device=reference.device, dtype=reference.dtype)
    for name in _CARRIED_TENSORS:
        source, dest = getattr(old, name, None), getattr(new, name, None)
        if isinstance(source, torch.Tensor) and isinstance(dest, torch.Tensor):
            if source.shape == dest.shape:
                dest.copy_(source)
    return new.train(old.training)


def convert_norm(model: nn.Module, norm: NormSpec, **kwargs: Any) -> nn.Module:
    """Replace every torch ``BatchNorm{1,2,3}d`` and every normlab norm in ``model``.

    The new layers carry over ``weight``, ``bias`` and running statistics (where both
    layers have them with equal shapes), ``eps``, ``momentum`` and ``affine`` (unless
    given in ``kwargs``), device, dtype and training mode. Converting BN to ``"bn"``
    therefore preserves eval outputs exactly.

    Args:
        model: the network (modified in place).
        norm: a registry name, class or callable, as for :func:`create_norm`.
        **kwargs: options for every new layer (they override carried settings).

    Returns:
        ``model``, or the new layer when ``model`` itself is a norm layer.
    """
    if is_norm_layer(model):
        return _replace(model, norm, kwargs)
    for name, child in model.named_children():
        converted = convert_norm(child, norm, **kwargs)
        if converted is not child:
            setattr(model, name, converted)
    return model
