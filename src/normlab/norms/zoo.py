"""The normalization layers of torch, torchvision and timm that :func:`convert_norm` knows.

Each known class is described by a :class:`LayerKind`: which normalization it computes
(``"bn"``, ``"gn"``, ``"in"``), its dimensionality when the class fixes it, whether it is
frozen (running statistics and affine as buffers, no training) and whether it carries an
activation and a drop layer (timm's norm+act layers).

torchvision and timm stay optional: this module never imports them. It looks their classes
up in ``sys.modules`` — a model can only hold an instance of a class whose module has been
imported, so a class that is not there is not in the model either.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

__all__ = ["LayerKind", "layer_kind", "left_reason"]


@dataclass(frozen=True)
class LayerKind:
    """What a foreign normalization layer computes, as far as conversion needs to know.

    Attributes:
        family: ``"bn"`` (batch statistics), ``"gn"`` (groups of channels per sample) or
            ``"in"`` (each channel per sample).
        dim: 1, 2 or 3, or ``None`` when the class takes inputs of any dimensionality
            (``SyncBatchNorm``, ``GroupNorm``).
        frozen: running statistics in training too and no trainable parameters.
        act: the layer holds ``act`` and ``drop`` submodules applied after normalizing.
    """

    family: str
    dim: int | None = None
    frozen: bool = False
    act: bool = False


_TORCH_KINDS: tuple[tuple[type[nn.Module], LayerKind], ...] = (
    (nn.SyncBatchNorm, LayerKind("bn")),
    (nn.BatchNorm1d, LayerKind("bn", 1)),
    (nn.BatchNorm2d, LayerKind("bn", 2)),
    (nn.BatchNorm3d, LayerKind("bn", 3)),
    (nn.InstanceNorm1d, LayerKind("in", 1)),
    (nn.InstanceNorm2d, LayerKind("in", 2)),
    (nn.InstanceNorm3d, LayerKind("in", 3)),
    (nn.GroupNorm, LayerKind("gn")),
)

# (module, class name, kind) of torchvision's and timm's layers.
_FOREIGN_KINDS: tuple[tuple[str, str, LayerKind], ...] = (
    ("torchvision.ops.misc", "FrozenBatchNorm2d", LayerKind("bn", 2, frozen=True)),
    ("timm.layers.norm_act", "BatchNormAct2d", LayerKind("bn", 2, act=True)),
    ("timm.layers.norm_act", "SyncBatchNormAct", LayerKind("bn", 2, act=True)),
    ("timm.layers.norm_act", "FrozenBatchNormAct2d", LayerKind("bn", 2, frozen=True, act=True)),
    ("timm.layers.norm_act", "GroupNormAct", LayerKind("gn", act=True)),
    ("timm.layers.norm_act", "GroupNorm1Act", LayerKind("gn", act=True)),
    ("timm.layers.norm", "GroupNorm", LayerKind("gn")),
    ("timm.layers.norm", "GroupNorm1", LayerKind("gn")),
)

_LEFT_REASONS: tuple[tuple[type, str], ...] = (
    (nn.LayerNorm, "normalizes each position over its last dimension(s) (timm's LayerNorm2d: "
     "over the channels), not each channel over (*): no normlab norm computes it"),
    (nn.RMSNorm, "RMS normalization over the last dimension(s): no normlab norm computes it"),
    (nn.LocalResponseNorm, "normalizes across neighbouring channels: no normlab norm "
     "computes it"),
)


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The :class:`LayerKind` of a known torch/torchvision/timm normalization layer, else
    ``None``. Classes are matched exactly (timm's ``BatchNormAct2d`` is not taken for the
    ``BatchNorm2d`` it subclasses); a subclass of a torch class that keeps its ``forward``
    counts as that class, one with its own ``forward`` is unknown (it may do more)."""
    cls = type(module)
    for module_name, class_name, kind in _FOREIGN_KINDS:
        if getattr(sys.modules.get(module_name), class_name, None) is cls:
            return kind
    for torch_class, kind in _TORCH_KINDS:
        if isinstance(module, torch_class) and cls.forward is torch_class.forward:
            return kind
    return None


def left_reason(module: nn.Module) -> str | None:
    """Why a normalization layer that is not converted cannot be, or ``None`` when the
    module is not a normalization layer (its class name holds no "Norm", or it is a
    container such as timm's ``ConvNormAct``: children other than ``act``/``drop``)."""
    for cls, reason in _LEFT_REASONS:
        if isinstance(module, cls):
            return reason
    if "Norm" not in type(module).__name__:
        return None
    if any(name not in ("act", "drop") for name, _ in module.named_children()):
        return None
    return "a normalization layer convert_norm does not know"
