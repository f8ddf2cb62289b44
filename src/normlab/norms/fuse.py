"""Inference fusion: fold evaluation-mode norms that are a per-channel affine into convolutions.

In eval mode a normlab layer computes ``y = A * x + B`` (DESIGN.md). When ``A`` and ``B``
do not depend on the sample — BN with running statistics, InstanceNorm with running
statistics, SN hardened to BN (SN paper 4.1.4), BIN at rho = 1, IEBN whose gate ignores the
input (``gate_weight`` = 0, its initial value) — the layer is a fixed per-channel affine map,
and :func:`fuse_for_inference` folds it into the convolution it follows
(``W' = A * W``, ``b' = A * b + B``, per output channel) or, where no convolution precedes
it, replaces it by a :class:`ChannelAffine`. The coefficients come from the layer's own
coefficient function (no second implementation of any norm), evaluated on the running
statistics.

Layers whose eval coefficients read the sample (IN, LN, GN, soft SN, BIN with rho < 1,
IEBN with an input-dependent gate) keep their eval forward, which already is the cheapest
exact form (one pass for the per-(n, c) moments, one for ``A * x + B``), wrapped in an
:class:`EvalNorm` that keeps them in eval mode and makes the fused model
TorchScript-compatible: ``torch.jit.script`` compiles an :class:`EvalNorm` as the
``torch.jit.trace`` of its layer on a (N, C, M)-shaped view of the input, which holds for
every batch and spatial size.

Which layers are sample-independent is decided per family by :data:`FOLD_RULES` (the
mixing weight of every per-sample statistic is exactly zero, so it contributes ``0 * finite``)
and then checked: the coefficients at two different moment probes must be bit-identical.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.norms.base import NormBase
from normlab.norms.batch_instance import BatchInstanceNorm
from normlab.norms.iebn import IEBN
from normlab.norms.switch import SwitchNorm

__all__ = [
    "FOLD_RULES",
    "ChannelAffine",
    "EvalNorm",
    "activation_tail",
    "channel_affine",
    "fuse_for_inference",
]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ChannelAffine(nn.Module):
    """A frozen per-channel affine map ``y[:, c] = scale[c] * x[:, c] + shift[c]``.

    The evaluation form of a norm whose coefficients do not depend on the sample; buffers,
    not parameters (it is an inference module). TorchScript-compatible.

    Shape:
        - input: (N, C) or (N, C, *); output: same.
    """

    if TYPE_CHECKING:  # buffers (TorchScript reads class annotations)
        scale: torch.Tensor
        shift: torch.Tensor

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = self.scale.view(shape)
        shift = self.shift.view(shape)
        return torch.addcmul(shift, scale, x).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


class _FlatSpatial(nn.Module):
    """Runs a traced layer on the input viewed with all spatial axes flattened into one
    (padded with size-1 axes to the rank the layer takes), then restores the shape."""

    def __init__(self, traced: nn.Module, rank: int) -> None:
        super().__init__()
        self.traced = traced
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0], x.shape[1], -1] + [1] * (self.rank - 3)
        y: torch.Tensor = self.traced(x.reshape(shape))
        return y.reshape(x.shape)


class EvalNorm(nn.Module):
    """A normlab layer frozen in eval mode, for a layer whose coefficients read the sample.

    Its forward is the layer's eval forward; ``train()`` leaves the layer in eval mode (a
    fused model is for inference only). Under ``torch.jit.script`` it becomes the
    ``torch.jit.trace`` of the layer on an (N, C, M)-shaped view of the input (moments
    over the flattened spatial axes are the same moments), so a fused model scripts.

    Shape:
        - input: as for the layer; output: same.
    """

    def __init__(self, layer: NormBase) -> None:
        super().__init__()
        self.layer = layer.eval()

    def train(self, mode: bool = True) -> EvalNorm:
        super().train(mode)
        self.layer.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.layer(x)
        return y

    def __prepare_scriptable__(self) -> nn.Module:
        rank = self.layer.dim + 2
        example = torch.randn(
            (2, self.layer.num_features, 4) + (1,) * (rank - 3), **_state_options(self.layer)
        )
        with torch.no_grad(), warnings.catch_warnings():
            # the shape checks it records hold for every input the layer accepts in eval
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(self.layer, example, check_trace=False)
        return _FlatSpatial(traced, rank)


def _state_options(layer: nn.Module) -> dict[str, Any]:
    """``dtype`` and ``device`` of a layer's floating-point parameters and buffers."""
    state = [t for t in (*layer.parameters(), *layer.buffers()) if t.is_floating_point()]
    if not state:
        return {"dtype": torch.get_default_dtype(), "device": None}
    return {"dtype": state[0].dtype, "device": state[0].device}


def _no_batch_statistics(layer: NormBase) -> bool:
    uses = getattr(layer, "uses_batch_statistics", None)
    return uses is None or not uses()


def _reads_no_moments(layer: NormBase) -> bool:
    return not layer.needs_mean() and not layer.needs_variance()


FOLD_RULES: dict[type[NormBase], Callable[[Any], bool]] = {
    SwitchNorm: lambda layer: (
        layer.hard and layer.selected() == ("bn", "bn") and _no_batch_statistics(layer)
    ),
    BatchInstanceNorm: lambda layer: (
        bool((layer.gate == 1).all()) and _no_batch_statistics(layer)
    ),
    IEBN: lambda layer: (
        layer.operator == "linear"
        and bool((layer.gate_weight == 0).all())
        and _no_batch_statistics(layer)
    ),
}
"""Family -> whether an eval-mode layer of it is sample-independent although it reads the
moments (their weights are exactly zero). Every other layer qualifies when it reads no
moments in eval (``needs_mean()`` and ``needs_variance()`` both False: BN, and IN with
running statistics)."""


def _rule(layer: NormBase) -> bool:
    for family, rule in FOLD_RULES.items():
        if isinstance(layer, family):
            return rule(layer)
    return _reads_no_moments(layer)


def _coefficients(
    layer: NormBase, mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    params = layer.coefficient_params()
    scale, shift = layer.coefficients(mean, var, params, 2)
    return scale.reshape(-1), shift.reshape(-1)


@torch.no_grad()
def channel_affine(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, B)``, each (C,), when the eval-mode ``layer`` is ``y = tail(A[c] * x + B[c])``.

    ``tail`` is :func:`activation_tail` (identity for a plain norm). ``None`` for layers in
    training mode, non-normlab modules, layers whose eval coefficients depend on the sample
    and layers whose forward does something else (checked on a probe input).
    """
    if not isinstance(layer, NormBase) or layer.training or not _rule(layer):
        return None
    options = _state_options(layer)
    c = layer.num_features
    generator = torch.Generator().manual_seed(0)
    probes = [
        (torch.zeros(1, c), torch.ones(1, c)),
        (
            10 * torch.randn(1, c, generator=generator),
            10 * torch.rand(1, c, generator=generator) + 0.5,
        ),
    ]
    first, second = (
        _coefficients(layer, mean.to(**options), var.to(**options)) for mean, var in probes
    )
    if not all(torch.equal(a, b) for a, b in zip(first, second)):
        return None
    x = 4 * torch.randn((2, c) + (3,) * layer.dim, generator=generator).to(**options)
    expected = layer(x)
    folded = activation_tail(layer)(ChannelAffine(*first)(x))
    if not torch.allclose(folded, expected, rtol=1e-4, atol=1e-4 * expected.abs().max()):
        return None
    return first


def activation_tail(layer: nn.Module) -> nn.Sequential | nn.Identity:
    """What a norm+activation layer applies after normalizing: its ``drop`` then ``act``
    children (timm's ``BatchNormAct2d`` convention, which normlab's norm+act layers follow:
    ``act(drop(norm(x)))``); ``nn.Identity`` for a plain norm. :func:`channel_affine`
    checks the order on a probe input."""
    found = [getattr(layer, key, None) for key in ("drop", "act")]
    parts = [part for part in found if isinstance(part, nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _fold_into_conv(conv: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``conv <- A * conv + B`` per output channel, computed in float64."""
    assert isinstance(conv, _CONVS), "folds into a convolution only"
    weight = conv.weight.detach().double()
    a, b = scale.double(), shift.double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
    folded_weight = weight * a.reshape((-1,) + (1,) * (weight.dim() - 1))
    conv.weight = nn.Parameter(folded_weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter((bias * a + b).to(conv.weight.dtype), requires_grad=False)


def _sequential_pairs(model: nn.Module) -> Iterator[tuple[str, str]]:
    """(conv, norm) qualified names that are consecutive in a plain ``nn.Sequential``."""
    for name, module in model.named_modules():
        if type(module).forward is not nn.Sequential.forward:
            continue
        items = list(module.named_children())
        prefix = f"{name}." if name else ""
        for (first, a), (second, b) in zip(items, items[1:]):
            if isinstance(a, _CONVS) and isinstance(b, NormBase):
                yield prefix + first, prefix + second


def _traced_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv, norm) names where the traced graph feeds a conv's only output into a norm
    and nothing else; ``None`` when ``torch.fx`` cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any untraceable model: fall back to Sequential pairs
        return None
    calls: dict[str, int] = {}  # a module called twice shares its weights: never folded
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        target = str(node.target)  # a module's qualified name for call_module nodes
        if node.op != "call_module" or not isinstance(modules[target], NormBase):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[str(source.target)], _CONVS)
            and len(source.users) == 1
            and calls[str(source.target)] == 1
            and calls[target] == 1
            and len(node.args) == 1
            and not node.kwargs
        ):
            pairs.append((str(source.target), target))
    return pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def fuse_for_inference(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every evaluation-mode norm that is a per-channel affine into the preceding conv.

    A norm qualifies when its eval coefficients do not depend on the sample (see the
    module docstring). It is folded into a ``Conv1d/2d/3d`` whose output feeds only this
    norm — found by tracing the model with ``torch.fx`` (normlab layers are leaf modules),
    or, for models ``torch.fx`` cannot trace, as consecutive children of a plain
    ``nn.Sequential`` — and replaced by ``nn.Identity`` (by its activation, for a
    norm+activation layer: :func:`activation_tail`); a qualifying norm after anything else
    becomes a :class:`ChannelAffine` (followed by its activation). Every other normlab layer
    is wrapped in an :class:`EvalNorm` (its own eval forward, kept in eval mode,
    TorchScript-compatible).

    Args:
        model: a model in eval mode.
        inplace: fuse ``model`` itself instead of a deep copy.

    Returns:
        The fused model (in eval mode). Its folded convolutions' parameters do not
        require grad: it is meant for inference only.

    Raises:
        ValueError: when ``model`` or one of its normlab layers is in training mode.
    """
    if model.training or any(m.training for m in model.modules() if isinstance(m, NormBase)):
        raise ValueError(
            "fuse_for_inference expects a model in eval mode (it folds the evaluation-mode "
            "norms); call model.eval() first"
        )
    if not inplace:
        model = copy.deepcopy(model)
    pairs = _traced_pairs(model)
    if pairs is None:
        pairs = list(_sequential_pairs(model))
    conv_of = {norm: conv for conv, norm in pairs}
    modules = dict(model.named_modules())
    for name, layer in list(modules.items()):
        coefficients = channel_affine(layer)
        if not name or not isinstance(layer, NormBase):
            continue
        if coefficients is None:
            _replace(model, name, EvalNorm(layer))
        elif name in conv_of:
            _fold_into_conv(modules[conv_of[name]], *coefficients)
            _replace(model, name, activation_tail(layer))
        else:
            tail = activation_tail(layer)
            affine = ChannelAffine(*coefficients)
            _replace(model, name, affine if isinstance(tail, nn.Identity) else
                     nn.Sequential(affine, *tail))
    return model
