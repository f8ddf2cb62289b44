"""Freezing normalization layers: running statistics in training too, no trained parameters.

What torchvision's ``FrozenBatchNorm2d`` does for every detection backbone, and timm's
``freeze_batch_norm_2d``, as a state of every normlab layer instead of a class swap — so the
layer keeps its type, its state-dict keys and everything else it does (IEBN's gate, SN's
instance and layer statistics, BIN's instance branch still read each sample):

- ``stats``: the layer normalizes with its running statistics in training as in eval and
  never moves them (layers with batch statistics: BN, IN with running stats, IEBN, SN,
  BIN). A frozen plain BN computes exactly what torchvision's ``FrozenBatchNorm2d``
  computes (``x * scale + shift``, same operations in the same order).
- ``params``: the layer's own parameters stop requiring gradients (its ``act`` and ``drop``
  submodules are left alone), so optimizers built from ``requires_grad`` skip them.

The frozen state is an attribute, not saved in the state dict: freeze again after loading.
"""

from __future__ import annotations

import logging

from torch import nn

from normlab.norms.base import NormBase
from normlab.norms.batch_stats import BatchStatistics
from normlab.norms.selection import ModuleFilter, matches

__all__ = ["freeze_norm", "is_frozen", "unfreeze_norm"]

logger = logging.getLogger(__name__)


def _selected(model: nn.Module, submodules: ModuleFilter) -> list[tuple[str, NormBase]]:
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, NormBase) and (not submodules or matches(name, module, submodules))
    ]
    foreign = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and (not submodules or matches(name, module, submodules))
    ]
    if foreign:
        logger.warning(
            "freeze_norm: %d torch BatchNorm layer(s) are not normlab layers and stay as they "
            "are (%s); convert them first with normlab.convert_norm",
            len(foreign), ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""),
        )
    if submodules and not chosen:
        raise ValueError(f"freeze_norm: no normlab norm layer in the submodules {submodules!r}")
    return chosen


def _set(layer: NormBase, frozen: bool, stats: bool, params: bool) -> None:
    if stats and isinstance(layer, BatchStatistics):
        layer.frozen_stats = frozen
    if params:
        if frozen:
            names = tuple(n for n, p in layer.named_parameters(recurse=False) if p.requires_grad)
            layer.frozen_params = tuple(sorted({*getattr(layer, "frozen_params", ()), *names}))
        else:
            names = getattr(layer, "frozen_params", ())
            layer.frozen_params = ()
        for name in names:
            getattr(layer, name).requires_grad_(not frozen)


def freeze_norm(
    model: nn.Module,
    submodules: ModuleFilter = (),
    *,
    stats: bool = True,
    params: bool = True,
) -> list[str]:
    """Freeze the normlab norm layers of ``model`` (or of some of its submodules).

    Args:
        model: a network or a single layer.
        submodules: names (glob or prefix of name parts, e.g. ``["conv1", "layer1"]`` as
            torchvision's detection backbones freeze by layer) or classes selecting what to
            freeze; empty: every layer.
        stats: use and keep the running statistics in training too.
        params: stop gradients to the layers' own parameters.

    Returns:
        The names of the layers frozen (``""`` for ``model`` itself).

    Raises:
        ValueError: ``submodules`` selects no normlab layer.
    """
    chosen = _selected(model, submodules)
    for _, layer in chosen:
        _set(layer, True, stats, params)
    return [name for name, _ in chosen]


def unfreeze_norm(
    model: nn.Module,
    submodules: ModuleFilter = (),
    *,
    stats: bool = True,
    params: bool = True,
) -> list[str]:
    """Undo :func:`freeze_norm`: parameters it froze train again (others, e.g. SN's
    hardened ratios, stay as they were), batch statistics are used in training again."""
    chosen = _selected(model, submodules)
    for _, layer in chosen:
        _set(layer, False, stats, params)
    return [name for name, _ in chosen]


def is_frozen(layer: nn.Module) -> bool:
    """Whether a normlab layer uses its running statistics in training (frozen stats)."""
    return bool(getattr(layer, "frozen_stats", False))
