"""``convert_norm``: swap a model's normalization layers for normlab ones, and say what changed.

Converted, wherever found: torch's ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm``,
torchvision's ``FrozenBatchNorm2d``, timm's norm+act layers (``BatchNormAct2d``,
``SyncBatchNormAct``, ``FrozenBatchNormAct2d``) and normlab's own layers; on request
(``source``) ``GroupNorm``/timm's ``GroupNormAct`` and ``InstanceNorm1d/2d/3d``. Kept
from each: weight, bias, running statistics, ``eps``, ``momentum``, ``affine``, ``bias``,
``track_running_stats``, the frozen state (a frozen source gives a layer frozen by
:func:`normlab.freeze_norm`), the activation and drop layer of a norm+act layer (moved into
the normlab ``<Norm>Act`` layer), device, dtype and training mode. Layers whose axes no
normlab norm shares (``LayerNorm`` over the last dimension, timm's ``LayerNorm2d``,
``RMSNorm``, ``LocalResponseNorm``, unknown ``*Norm*`` layers) are never converted; they,
and every layer a filter kept, are listed in the :class:`ConversionReport`.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normlab.norms.base import NormBase
from normlab.norms.freeze import freeze_norm, is_frozen
from normlab.norms.norm_act import NormAct, get_norm_act_layer
from normlab.norms.registry import NormSpec, create_norm, list_norms, resolve_norm
from normlab.norms.selection import ModuleFilter, matches
from normlab.norms.zoo import LayerKind, layer_kind, left_reason

__all__ = ["ConversionReport", "convert_norm", "is_norm_layer"]

logger = logging.getLogger(__name__)

SOURCES = ("bn", "gn", "in", "normlab")
_CARRIED_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_INPUT_DIMS = {2: 1, 3: 1, 4: 2, 5: 3}
_LAYER_DIMS: tuple[tuple[type, int], ...] = (
    (nn.Linear, 1), (nn.Conv1d, 1), (nn.ConvTranspose1d, 1),
    (nn.Conv2d, 2), (nn.ConvTranspose2d, 2), (nn.Conv3d, 3), (nn.ConvTranspose3d, 3),
)


@dataclass
class ConversionReport:
    """What :func:`convert_norm` did.

    Attributes:
        converted: ``(name, old type, new type, note)`` per replaced layer; ``note`` says
            what is worth knowing (how the dimensionality was found, the residual of
            ``init="from_bn"``, running statistics the source had not).
        left: ``(name, type, reason)`` per normalization layer not converted.
    """

    converted: list[tuple[str, str, str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of converted layers by old type, and the layers left."""
        counts = Counter(old for _, old, _, _ in self.converted)
        text = f"converted {len(self.converted)} layer(s)"
        if counts:
            text += " (" + ", ".join(f"{n} {t}" for t, n in counts.items()) + ")"
        if self.left:
            text += f"; left {len(self.left)}: " + ", ".join(
                f"{name or '<model>'} ({kind})" for name, kind, _ in self.left
            )
        return text

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [
            f"  {name or '<model>'}: {old} -> {new}" + (f" ({note})" if note else "")
            for name, old, new, note in self.converted
        ]
        lines += [f"  left {name or '<model>'}: {kind}: {why}" for name, kind, why in self.left]
        return "\n".join(lines)


def _type_name(module: nn.Module) -> str:
    """The layer's class with the package it comes from, e.g. ``"timm BatchNormAct2d"`` (timm
    and normlab both have a ``BatchNormAct2d``)."""
    cls = type(module)
    return f"{cls.__module__.partition('.')[0]} {cls.__name__}"


def is_norm_layer(module: nn.Module) -> bool:
    """Whether :func:`convert_norm` converts ``module`` with the default ``source``."""
    kind = _kind(module)
    return kind is not None and kind.family in ("bn", "normlab")


def _kind(module: nn.Module) -> LayerKind | None:
    if isinstance(module, NormBase):
        return LayerKind(
            "normlab", module.dim, is_frozen(module),
            isinstance(module, NormAct),
        )
    return layer_kind(module)


def _accepted(target: Any, names: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return names
    return {k: v for k, v in names.items() if k in parameters}


def _inherited_kwargs(old: nn.Module, target: Any) -> dict[str, Any]:
    """Settings carried from the old layer (those the new layer's class takes)."""
    affine = bool(getattr(old, "affine", getattr(old, "weight", None) is not None))
    inherited: dict[str, Any] = {"eps": old.eps, "affine": affine}
    for name in ("momentum", "track_running_stats", "num_groups"):
        if hasattr(old, name):
            inherited[name] = getattr(old, name)
    if affine and getattr(old, "bias", None) is None:
        inherited["bias"] = False
    return _accepted(target, inherited)


def _channels(old: nn.Module) -> int:
    for name in ("num_features", "num_channels"):
        if hasattr(old, name):
            return int(getattr(old, name))
    running_mean = old.get_buffer("running_mean")  # torchvision's FrozenBatchNorm2d
    return int(running_mean.shape[0])


def _from_bn_error(target: str, source: str = "a BatchNorm") -> ValueError:
    able = [n for n in list_norms() if hasattr(resolve_norm(n, 2), "start_from_bn")]
    return ValueError(
        f"init='from_bn': {target} cannot compute what {source} computes (it needs batch "
        f"statistics, or a BatchNorm source); norms that can: {', '.join(able)}"
    )


def _start_from_bn(new: nn.Module, old: nn.Module, kind: LayerKind) -> str:
    plain_bn = kind.family == "bn" or getattr(old, "is_plain", lambda: False)()
    start = getattr(new, "start_from_bn", None)
    if not plain_bn or start is None:
        raise _from_bn_error(type(new).__name__, "a BatchNorm" if plain_bn else type(old).__name__)
    return f"from_bn: {start()}"


@torch.no_grad()
def _replace(
    old: nn.Module, kind: LayerKind, dim: int, norm: NormSpec, kwargs: dict[str, Any],
    init: str | None,
) -> tuple[nn.Module, str]:
    target = resolve_norm(norm, dim) if isinstance(norm, str) else norm
    options = {**_inherited_kwargs(old, target), **kwargs}
    if kind.act:
        target = get_norm_act_layer(target, dim)
    new = create_norm(target, _channels(old), dim=dim, **options)
    reference: torch.Tensor | None = next(iter(old.parameters(recurse=False)), None)
    if reference is None:
        reference = next((b for b in old.buffers(recurse=False) if b.is_floating_point()), None)
    if reference is not None:
        new = new.to(device=reference.device, dtype=reference.dtype)
    notes = []
    for name in _CARRIED_TENSORS:
        source, dest = getattr(old, name, None), getattr(new, name, None)
        if isinstance(source, torch.Tensor) and isinstance(dest, torch.Tensor):
            if source.shape == dest.shape:
                dest.copy_(source)
        elif name == "running_mean" and isinstance(dest, torch.Tensor):
            notes.append("running statistics start at 0 and 1 (the source has none)")
    if kind.act:
        new.act, new.drop = old.act, old.drop
    if init == "from_bn":
        notes.append(_start_from_bn(new, old, kind))
    if kind.frozen:
        frozen_params = kind.family != "normlab" or bool(getattr(old, "frozen_params", ()))
        freeze_norm(new, stats=True, params=frozen_params)
        notes.append("frozen")
    return new.train(old.training), "; ".join(notes)


def _probe_dims(
    model: nn.Module, layers: Sequence[nn.Module], example_inputs: Any
) -> dict[int, int]:
    """Input dimensionality each layer sees in an eval forward of ``example_inputs``."""
    seen: dict[int, int] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.setdefault(id(module), _INPUT_DIMS.get(args[0].dim(), 2))

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    modes = {module: module.training for module in model.modules()}
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return seen


def _preceding_dim(parent: nn.Module, child_name: str) -> int | None:
    """The dimensionality of the last convolution/linear registered before ``child_name``
    in ``parent`` (torchvision's and timm's ``conv -> norm`` order)."""
    dim = None
    for name, module in parent.named_children():
        if name == child_name:
            return dim
        dim = next((d for cls, d in _LAYER_DIMS if isinstance(module, cls)), dim)
    return None


def convert_norm(
    model: nn.Module,
    norm: NormSpec,
    *,
    source: str | Sequence[str] = ("bn", "normlab"),
    include: ModuleFilter | None = None,
    exclude: ModuleFilter | None = None,
    init: str | None = None,
    example_inputs: Any = None,
    return_report: bool = False,
    **kwargs: Any,
) -> nn.Module | tuple[nn.Module, ConversionReport]:
    """Replace the normalization layers of ``model`` with the normlab norm ``norm``.

    Converting to ``"bn"`` gives bit-identical eval outputs on CPU (normlab's BN computes
    torch's coefficients in torch's order; a frozen one, torchvision's ``FrozenBatchNorm2d``
    formula). With ``init="from_bn"`` each new layer starts where it computes what the BN
    it replaces computed, so fine-tuning starts from the pretrained function:

    - ``bn``: exact (nothing to do).
    - ``bin``: rho = 1, the IN branch has weight 0 — exact in exact arithmetic; rho learns.
    - ``sn``: ratios hardened to one-hot BN — exact in exact arithmetic; the ratios stay
      frozen (no softmax point is BN-only, see ``SwitchNorm.start_from_bn``).
    - ``iebn``: gate made constant (gamma_hat = 0) and folded into gamma, nudged so that
      gamma * delta rounds to the old gamma; the gate learns from there.
    - ``in``, ``ln``, ``gn``: cannot — they normalize with each sample's statistics, never
      with the running ones; ``ValueError``.

    For ``sn``, ``bin`` and ``iebn`` the eval outputs then differ from BN's by rounding
    only: their coefficients take normlab's general order (``gamma * s``,
    ``beta + gamma * t``), not torch's. Measured in float32 on randomly initialized timm and
    torchvision ResNet-18/50, EfficientNet-B0, RegNetY-016 and MobileNetV3-Small: 4e-7 to
    1.3e-6 of the largest output (tests/norms/test_convert_zoo.py).

    Args:
        model: the network (modified in place), or a single layer.
        norm: a registry name, class or callable, as for :func:`create_norm`.
        source: which layers to convert, from ``"bn"`` (the BatchNorm family of torch,
            torchvision and timm), ``"gn"`` (``GroupNorm``, timm's ``GroupNormAct``),
            ``"in"`` (``InstanceNorm*``), ``"normlab"`` (normlab's own layers), or
            ``"all"``. Layers of another source are listed as left.
        include, exclude: names (glob such as ``"layer4.*"``, or a prefix of name parts
            such as ``"layer4"``) or classes; only layers ``include`` selects (default
            all) and ``exclude`` does not are converted, the others are listed as left.
        init: ``None`` (weights and statistics carried, the new layer's own parameters at
            their defaults) or ``"from_bn"`` (see above).
        example_inputs: an input (or tuple of inputs) of ``model``: an eval forward shows
            the dimensionality of layers whose class does not fix it (``SyncBatchNorm``,
            ``GroupNorm``). Without it, the last convolution or linear layer registered
            before the layer decides, else 2d is assumed (with a warning).
        return_report: also return the :class:`ConversionReport`.
        **kwargs: options for every new layer (they override carried settings).

    Returns:
        ``model`` (the new layer when ``model`` itself is converted), and the report when
        ``return_report``. The report's summary is logged at INFO level.

    Raises:
        ValueError: an unknown ``source`` or ``init``, or ``init="from_bn"`` with a norm
            that cannot start as BN.
    """
    sources = set(SOURCES if source == "all" else (source,) if isinstance(source, str)
                  else source)
    if not sources <= set(SOURCES):
        raise ValueError(
            f"unknown source {sorted(sources - set(SOURCES))}; valid: {', '.join(SOURCES)}, all"
        )
    if init not in (None, "from_bn"):
        raise ValueError(f"init must be None or 'from_bn', got {init!r}")
    if init == "from_bn" and isinstance(norm, (str, type)):  # refuse before changing anything
        target = resolve_norm(norm, 2) if isinstance(norm, str) else norm
        if not hasattr(target, "start_from_bn"):
            raise _from_bn_error(target.__name__)
    report = ConversionReport()
    probed: dict[int, int] = {}
    if example_inputs is not None:
        unsized = [m for m in model.modules() if (k := _kind(m)) is not None and k.dim is None]
        probed = _probe_dims(model, unsized, example_inputs) if unsized else {}

    def visit(module: nn.Module, name: str, parent: nn.Module | None, child: str) -> nn.Module:
        kind = _kind(module)
        if kind is None:
            reason = left_reason(module)
            if reason is not None:
                report.left.append((name, _type_name(module), reason))
                return module
            for child_name, sub in list(module.named_children()):
                new = visit(sub, f"{name}.{child_name}" if name else child_name, module,
                            child_name)
                if new is not sub:
                    setattr(module, child_name, new)
            return module
        reason = None
        if kind.family not in sources:
            reason = f"source {kind.family!r} not requested (source={sorted(sources)})"
        elif (include is not None and not matches(name, module, include)) or (
            exclude is not None and matches(name, module, exclude)
        ):
            reason = "filtered out by include/exclude"
        if reason is not None:
            report.left.append((name, _type_name(module), reason))
            return module
        dim, how = kind.dim, ""
        if dim is None:
            dim = probed.get(id(module))
            how = "dim from example_inputs"
            if dim is None and parent is not None:
                dim, how = _preceding_dim(parent, child), "dim from the preceding layer"
            if dim is None:
                dim, how = 2, "dim ASSUMED 2d (pass example_inputs= to measure it)"
                logger.warning("convert_norm: %s (%s): %s", name, type(module).__name__, how)
        new, note = _replace(module, kind, dim, norm, kwargs, init)
        note = "; ".join(n for n in (how, note) if n)
        report.converted.append((name, _type_name(module), _type_name(new), note))
        return new

    result = visit(model, "", None, "")
    logger.info("convert_norm to %s: %s", getattr(norm, "__name__", norm), report.summary())
    return (result, report) if return_report else result
