"""The base class of every normlab normalization layer.

A layer is an (N, C) *coefficient function* on top of the shared moments -> affine op
(:func:`normlab.functional.affine_norm`). Subclasses implement :meth:`NormBase.normalizer`,
which turns the per-(n, c) moments into the normalization ``x_hat = s * x + t``; the base
class adds the constant-noise attack and the affine parameters, so every layer computes

    x_hat = s * x + t                     (the layer's own statistics)
    x_hat <- Na * x_hat + Nb              (IEBN paper Eqn. 11, only when ``noise`` is set)
    y = gamma' * x_hat + beta'            (gamma, beta, possibly gated: IEBN Eqn. 9)

Layers never subclass ``torch.nn.modules.batchnorm._BatchNorm`` (DESIGN.md), but each keeps
the contract of its closest torch layer (BN: ``nn.BatchNorm*d``, IN: ``nn.InstanceNorm*d``,
LN: ``nn.GroupNorm(1, C)``, GN: ``nn.GroupNorm``; IEBN, SN and BIN: BatchNorm's, for their BN
part): the same constructor arguments (``bias=``, keyword ``device=``/``dtype=``), the same
checks raising exceptions of the types torch raises (:class:`NormInputError` and its kin
derive from them), ``reset_parameters()``, ``reset_running_stats()`` and torch's
``extra_repr`` format. Deliberate differences, each for a reason:

- a forward that raises leaves the layer as it was (torch's BatchNorm has already counted
  the step in ``num_batches_tracked`` when its eps, one-value, channel or dtype check fails);
- an empty input is checked like any other (torch's BatchNorm skips the channel and dtype
  checks on it) and gives an empty output where torch's kernels raise (InstanceNorm with
  N = 0, GroupNorm with an empty spatial axis);
- per-layer deviations are in each layer's docstring (InstanceNorm's ``affine=True``
  default, GroupNorm's argument order).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from normlab.errors import ConfigError, NormlabError
from normlab.functional import affine_norm, apply_affine, plain_moments, spatial_size
from normlab.functional.tracing import fx_leaf

__all__ = [
    "Coefficients",
    "NormBase",
    "NormConfigError",
    "NormDtypeError",
    "NormInputError",
    "Params",
]

Params = dict[str, torch.Tensor | None]
"""The tensors coefficient methods read, by name (:meth:`NormBase.coefficient_params`)."""
Coefficients = tuple[torch.Tensor, torch.Tensor]
"""``(A, B)``, or ``(s, t)``: per-(n, c) scale and shift."""

_ABSENT = object()
_SCRIPT_CONSTANTS = (
    "layer_name",
    "dim",
    "frozen_stats",
    "pools_batch",
    "num_groups",
    "bn_coefficients",
)
"""Class-level facts read by compiled methods: TorchScript sees only instance attributes,
so a class that has one of these declares it a constant (see ``__init_subclass__``)."""


def shape_text(x: torch.Tensor) -> str:
    """``x``'s shape as Python prints a tuple, e.g. ``(2, 3)`` or ``(3,)`` (for messages)."""
    sizes = [str(d) for d in x.shape]
    return "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"


class NormInputError(NormlabError, ValueError, RuntimeError):
    """An input a normalization layer cannot normalize (shape, channels or dtype).

    It is both a ``ValueError`` and a ``RuntimeError``, so that code catching what torch's
    norms raise for the same misuse catches it (torch raises ValueError for a wrong number
    of dimensions, RuntimeError for a wrong channel count or mixed dtypes); and a
    :class:`normlab.errors.NormlabError`.
    """


class NormDtypeError(NormInputError, NotImplementedError):
    """A non-floating-point input; also the ``NotImplementedError`` torch's norms raise."""


class NormConfigError(ConfigError, RuntimeError):
    """A constructor argument torch's norms reject too (e.g. a negative channel count);
    a ``ValueError`` (as :class:`normlab.errors.ConfigError`) and also the ``RuntimeError``
    torch raises for it."""


class NormBase(nn.Module):
    """Common machinery of normlab layers: input checks, affine parameters, noise, backend.

    Args:
        num_features: C, the number of channels.
        eps: added to variances before the square root.
        affine: learn a per-channel scale ``weight`` (init 1) and shift ``bias`` (init 0).
        bias: with ``affine``, False keeps ``weight`` only (as torch's ``bias=False``).
        device, dtype: where and in which floating dtype parameters and buffers are made
            (torch's factory keyword arguments; ``num_batches_tracked`` stays long).
        backend: ``"reference"``, ``"fused"`` or ``None`` for the global default.

    As in torch, an input's channel count must equal C only when the layer holds
    per-channel tensors (affine parameters, running statistics, gates); its dtype must
    equal the layer's, or be float16/bfloat16 for a float32 layer (mixed precision).

    Attributes:
        noise: ``None`` or ``(Na, Nb)``: the IEBN paper's constant-noise attack (Eqn. 11),
            applied to the normalized tensor in training and in eval. Set it on a whole
            model with :func:`normlab.norms.set_noise`.
        param_roles: parameter name -> role, read by :func:`normlab.param_groups`.

    TorchScript: ``torch.jit.script`` compiles a layer's forward with the plain ops of the
    reference backend (moments -> the same coefficient methods -> ``A * x + B``); the fused
    autograd Function, which takes those methods as a Python closure, runs outside it only.
    Class-level facts the compiled code reads (``layer_name``) are TorchScript constants.
    """

    dim: int = 2
    param_roles: Mapping[str, str] = {"weight": "affine", "bias": "affine"}
    if TYPE_CHECKING:  # set by __init_subclass__ and normlab.freeze_norm
        __constants__: ClassVar[list[str]]
        __jit_unused_properties__: ClassVar[list[str]]
        frozen_params: tuple[str, ...]

    @property
    def layer_name(self) -> str:
        """The class name, for messages (a constant in a TorchScript module)."""
        return type(self).__name__

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.num_features = operator.index(num_features)
        if self.num_features < 0:
            raise NormConfigError(f"num_features must be >= 0, got {num_features!r}")
        self.eps = float(eps)
        self.affine = bool(affine)
        self.backend = backend
        self.noise: tuple[float, float] | None = None
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if self.affine:
            self.weight = nn.Parameter(self.new_channel_tensor(1.0, device, dtype))
            if bias:
                self.bias = nn.Parameter(self.new_channel_tensor(0.0, device, dtype))

    def new_channel_tensor(
        self,
        value: float,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        size: int | None = None,
    ) -> torch.Tensor:
        """A (C,) (or ``(size,)``) tensor filled with ``value``, made with torch's factory
        keyword arguments ``device`` and ``dtype``."""
        shape = (self.num_features if size is None else size,)
        return torch.full(shape, value, device=device, dtype=dtype)

    def reset_running_stats(self) -> None:
        """Zero the step counter and reset the running statistics; nothing for layers
        without them (overridden by :class:`~normlab.norms.BatchStatistics`)."""

    def reset_parameters(self) -> None:
        """Re-initialize everything the layer learns or tracks (as torch's norms do):
        running statistics, ``weight`` 1, ``bias`` 0; subclasses add their own."""
        self.reset_running_stats()
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        """The normalization ``x_hat = s * x + t`` from the (N, C) moments: returns (s, t).

        ``count`` is M, the number of elements behind each (n, c) pair. ``s`` and ``t``
        broadcast against (N, C).
        """
        raise NotImplementedError

    def gates(
        self, mean: torch.Tensor, params: Params
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-(n, c) multipliers of gamma and beta (IEBN); ``(None, None)`` for none."""
        return None, None

    def coefficient_params(self) -> Params:
        """The tensors the coefficients depend on, by name (gradients flow to these)."""
        return self.affine_params()

    def affine_params(self) -> Params:
        """``weight`` and ``bias`` by name (a fresh dict: overrides of
        :meth:`coefficient_params` add their own tensors to it)."""
        return {"weight": self.weight, "bias": self.bias}

    def needs_variance(self) -> bool:
        """Whether the coefficients use the per-(n, c) variance in the current mode."""
        return True

    def needs_mean(self) -> bool:
        """Whether the coefficients read the per-(n, c) mean in the current mode; when
        neither moment is read (BN in eval), no pass over the input computes them."""
        return True

    def coefficients(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        """``(A, B)`` of shape (N, C) with ``y = A * x + B`` (see the module docstring)."""
        return self.affine_coefficients(mean, var, params, count)

    def affine_coefficients(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        """:meth:`coefficients` from :meth:`normalizer`, the noise and the (gated) affine
        parameters; a subclass overriding :meth:`coefficients` falls back on this."""
        scale, shift = self.normalizer(mean, var, params, count)
        if self.noise is not None:
            noise_scale, noise_shift = self.noise
            scale = scale * noise_scale
            shift = shift * noise_scale + noise_shift
        gamma, beta = params.get("weight"), params.get("bias")
        gamma_gate, beta_gate = self.gates(mean, params)
        if gamma_gate is not None:
            gamma = gamma_gate if gamma is None else gamma * gamma_gate
        if beta_gate is not None and beta is not None:
            beta = beta * beta_gate
        if gamma is not None:
            scale = gamma * scale
            shift = gamma * shift if beta is None else torch.addcmul(beta, gamma, shift)
        elif beta is not None:
            shift = shift + beta
        return scale.expand(mean.shape), shift.expand(mean.shape)

    def input_ndims(self) -> list[int] | None:
        """The numbers of input dimensions the layer takes (``None``: any from 2 on)."""
        return [2, 3] if self.dim == 1 else [self.dim + 2]

    def input_layout(self) -> str:
        """The input layout for messages, e.g. ``(N, C, H, W)``."""
        if self.input_ndims() is None:
            return "(N, C, *)"
        if self.dim == 1:
            return "(N, C) or (N, C, L)"
        return "(N, C, H, W)" if self.dim == 2 else "(N, C, D, H, W)"

    def state_tensors(self) -> list[torch.Tensor | None]:
        """The layer's own parameters, then its buffers (``None`` for unset ones)."""
        if torch.jit.is_scripting():  # a compiled module has no _parameters/_buffers dicts
            return list(self.coefficient_params().values()) + self.running_buffers()
        else:
            return list(self._parameters.values()) + list(self._buffers.values())

    def running_buffers(self) -> list[torch.Tensor | None]:
        """The layer's buffers (none here; see :class:`~normlab.norms.BatchStatistics`)."""
        return []

    def holds_channel_state(self) -> bool:
        """Whether a parameter or buffer has one entry per channel; only then must an
        input have exactly C channels (torch's affine-free, untracked norms take any)."""
        for t in self.state_tensors():
            if t is not None and t.dim() > 0 and t.shape[0] == self.num_features:
                return True
        return False

    def state_dtype(self) -> torch.dtype | None:
        """The floating dtype of the layer's parameters and buffers (``None`` if it has none)."""
        for t in self.state_tensors():
            if t is not None and t.is_floating_point():
                return t.dtype
        return None

    def check_input(self, x: torch.Tensor, channel_dim: int = 1) -> None:
        """Raise :class:`NormInputError` for a shape, channel count or dtype it cannot take
        (where torch's norms raise too, with an exception of the same type)."""
        self.check_layout(x, channel_dim)

    def check_layout(self, x: torch.Tensor, channel_dim: int = 1) -> None:
        """:meth:`check_input`'s checks, for overrides that add to them."""
        name = self.layer_name
        ndims = self.input_ndims()
        if (x.dim() < 2) if ndims is None else (x.dim() not in ndims):
            shapes = "2D or larger" if ndims is None else " or ".join([f"{d}D" for d in ndims])
            raise NormInputError(
                f"{name} expected a {shapes} input {self.input_layout()}, got a {x.dim()}D "
                f"input of shape {shape_text(x)}"
            )
        if x.shape[channel_dim] != self.num_features:
            self.check_channels(x, channel_dim)
        if not x.is_floating_point():
            raise NormDtypeError(
                f"{name} expected a floating-point input, got {x.dtype}; convert it first, "
                "e.g. x.float()"
            )
        dtype = self.state_dtype()
        half = x.dtype == torch.float16 or x.dtype == torch.bfloat16
        if dtype is not None and dtype != x.dtype and not (dtype == torch.float32 and half):
            raise NormInputError(
                f"{name} has {dtype} parameters and got a {x.dtype} input; convert one of "
                f"them (e.g. layer.to({x.dtype})), as torch's norms need"
            )

    def check_channels(self, x: torch.Tensor, channel_dim: int) -> None:
        """Called when ``x`` does not have C channels: an error when the layer holds
        per-channel tensors, else nothing (subclasses may warn)."""
        self.check_channel_state(x, channel_dim)

    def check_channel_state(self, x: torch.Tensor, channel_dim: int) -> None:
        """:meth:`check_channels`' error, for overrides that add to it."""
        if self.holds_channel_state():
            raise NormInputError(
                f"{self.layer_name} expected {self.num_features} channels "
                f"(dim {channel_dim}), got {x.shape[channel_dim]} in an input of shape "
                f"{shape_text(x)}"
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``forward`` is an FX leaf too (see :func:`fx_leaf`), and the
        class-level facts in ``_SCRIPT_CONSTANTS`` it has are TorchScript constants (those
        that are properties are read once, when the layer is scripted)."""
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = fx_leaf(cls.__dict__["forward"])  # type: ignore[method-assign]
        cls.__constants__ = [name for name in _SCRIPT_CONSTANTS if hasattr(cls, name)]
        cls.__jit_unused_properties__ = [
            name for name in cls.__constants__ if isinstance(getattr(cls, name), property)
        ]

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``: a clear error for the settings it cannot compile."""
        if getattr(self, "statistics_sync", None) is not None:
            raise RuntimeError(
                f"torch.jit.script cannot compile {self.layer_name} with statistics_sync set "
                "(the cross-process all-gather is Python code); script the model before "
                "normlab.distributed.to_sync, or use torch.compile"
            )
        return self

    @fx_leaf
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # only calls on self here: TorchScript resolves names of an fx_leaf forward in
        # normlab.functional.tracing (see fx_leaf)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward` computes; subclasses override this rather than ``forward``
        (so that norm+act layers and TorchScript reach it without ``super()``)."""
        return self.affine_forward(x)

    def affine_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x``, then ``A * x + B`` with the coefficients of its moments: through the
        shared op and the layer's backend in eager mode, with the reference backend's plain
        ops under ``torch.jit.script``."""
        self.check_input(x)
        if x.numel() == 0:  # an empty batch, as torch's norms allow
            return self.empty_forward(x)
        params = self.coefficient_params()
        count = spatial_size(x)
        if torch.jit.is_scripting():
            return self.plain_affine(x, params, count)
        else:
            return self.shared_affine(x, params, count)

    def shared_affine(self, x: torch.Tensor, params: Params, count: int) -> torch.Tensor:
        """:func:`~normlab.functional.affine_norm` with the coefficient methods as its
        coefficient function (a Python closure: not for TorchScript)."""
        names = tuple(params)

        def coef(
            mean: torch.Tensor, var: torch.Tensor | None, *values: torch.Tensor | None
        ) -> Coefficients:
            return self.coefficients(mean, var, dict(zip(names, values)), count)

        return affine_norm(
            x,
            coef,
            tuple(params.values()),
            with_var=self.needs_variance(),
            with_mean=self.needs_mean(),
            backend=self.backend,
        )

    def plain_affine(self, x: torch.Tensor, params: Params, count: int) -> torch.Tensor:
        """The reference backend's path with the coefficient methods called directly:
        :func:`~normlab.functional.plain_moments` -> :meth:`coefficients` -> ``A * x + B``
        (what a TorchScript module runs)."""
        flat = x.unsqueeze(-1) if x.dim() == 2 else x  # (N, C): one element per (n, c)
        mean, var = plain_moments(flat, self.needs_mean(), self.needs_variance())
        scale, shift = self.coefficients(mean, var, params, count)
        return apply_affine(flat, scale, shift).reshape(x.shape)

    def empty_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output for an input without elements: empty, no statistics touched."""
        return self.empty_output(x)

    def empty_output(self, x: torch.Tensor) -> torch.Tensor:
        """An empty output that depends on every trainable parameter (with zero gradient),
        so that data-parallel training sees the same parameters used on every process."""
        total: torch.Tensor | None = None
        for p in self.coefficient_params().values():
            if p is not None and p.requires_grad:
                total = p.sum() if total is None else total + p.sum()
        return x.clone() if total is None else x + 0.0 * total

    def post_step(self) -> None:
        """Project parameters back onto their constraint set after an optimizer step."""

    def extra_repr(self) -> str:
        """torch's format (``C, eps=..., momentum=..., affine=..., bias=...,
        track_running_stats=...``, each field the layer has) plus normlab's own settings."""
        fields = {
            "eps": self.eps,
            "momentum": self.__dict__.get("momentum", _ABSENT),
            "affine": self.affine,
            "bias": self.bias is not None,
            "track_running_stats": self.__dict__.get("track_running_stats", _ABSENT),
        }
        text = ", ".join(
            [str(self.num_features)] + [f"{k}={v}" for k, v in fields.items() if v is not _ABSENT]
        )
        if self.noise is not None:
            text += f", noise={self.noise}"
        return text
