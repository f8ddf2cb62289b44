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

import math
import operator
from collections.abc import Mapping

import torch
from torch import nn

from normlab.functional import affine_norm
from normlab.functional.tracing import fx_leaf, unscriptable

__all__ = ["NormBase", "NormConfigError", "NormDtypeError", "NormInputError"]

_INPUT_LAYOUT = {1: "(N, C) or (N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_INPUT_NDIMS = {1: (2, 3), 2: (4,), 3: (5,)}
_HALF = (torch.float16, torch.bfloat16)
_ABSENT = object()


class NormInputError(ValueError, RuntimeError):
    """An input a normalization layer cannot normalize (shape, channels or dtype).

    It is both a ``ValueError`` and a ``RuntimeError``, so that code catching what torch's
    norms raise for the same misuse catches it (torch raises ValueError for a wrong number
    of dimensions, RuntimeError for a wrong channel count or mixed dtypes).
    """


class NormDtypeError(NormInputError, NotImplementedError):
    """A non-floating-point input; also the ``NotImplementedError`` torch's norms raise."""


class NormConfigError(ValueError, RuntimeError):
    """A constructor argument torch's norms reject too (e.g. a negative channel count);
    also the ``RuntimeError`` torch raises for it."""


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
    """

    dim: int = 2
    param_roles: Mapping[str, str] = {"weight": "affine", "bias": "affine"}

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
        self,
        mean: torch.Tensor,
        var: torch.Tensor | None,
        params: dict[str, torch.Tensor],
        count: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalization ``x_hat = s * x + t`` from the (N, C) moments: returns (s, t).

        ``count`` is M, the number of elements behind each (n, c) pair. ``s`` and ``t``
        broadcast against (N, C).
        """
        raise NotImplementedError

    def gates(
        self, mean: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-(n, c) multipliers of gamma and beta (IEBN); ``(None, None)`` for none."""
        return None, None

    def coefficient_params(self) -> dict[str, torch.Tensor | None]:
        """The tensors the coefficients depend on, by name (gradients flow to these)."""
        return {"weight": self.weight, "bias": self.bias}

    def needs_variance(self) -> bool:
        """Whether the coefficients use the per-(n, c) variance in the current mode."""
        return True

    def needs_mean(self) -> bool:
        """Whether the coefficients read the per-(n, c) mean in the current mode; when
        neither moment is read (BN in eval), no pass over the input computes them."""
        return True

    def coefficients(
        self,
        mean: torch.Tensor,
        var: torch.Tensor | None,
        params: dict[str, torch.Tensor],
        count: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of shape (N, C) with ``y = A * x + B`` (see the module docstring)."""
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

    def input_ndims(self) -> tuple[int, ...] | None:
        """The numbers of input dimensions the layer takes (``None``: any from 2 on)."""
        return _INPUT_NDIMS[self.dim]

    def holds_channel_state(self) -> bool:
        """Whether a parameter or buffer has one entry per channel; only then must an
        input have exactly C channels (torch's affine-free, untracked norms take any)."""
        tensors = (*self._parameters.values(), *self._buffers.values())
        return any(t is not None and t.shape[:1] == (self.num_features,) for t in tensors)

    def state_dtype(self) -> torch.dtype | None:
        """The floating dtype of the layer's parameters and buffers (``None`` if it has none)."""
        for t in (*self._parameters.values(), *self._buffers.values()):
            if t is not None and t.is_floating_point():
                return t.dtype
        return None

    def check_input(self, x: torch.Tensor, channel_dim: int = 1) -> None:
        """Raise :class:`NormInputError` for a shape, channel count or dtype it cannot take
        (where torch's norms raise too, with an exception of the same type)."""
        name = type(self).__name__
        ndims = self.input_ndims()
        if (x.dim() < 2) if ndims is None else (x.dim() not in ndims):
            shapes = "2D or larger" if ndims is None else " or ".join(f"{d}D" for d in ndims)
            layout = "(N, C, *)" if ndims is None else _INPUT_LAYOUT.get(self.dim, "")
            raise NormInputError(
                f"{name} expected a {shapes} input {layout}, got a {x.dim()}D input of shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[channel_dim] != self.num_features:
            self.check_channels(x, channel_dim)
        if not x.is_floating_point():
            raise NormDtypeError(
                f"{name} expected a floating-point input, got {x.dtype}; convert it first, "
                "e.g. x.float()"
            )
        dtype = self.state_dtype()
        if dtype not in (None, x.dtype) and not (dtype == torch.float32 and x.dtype in _HALF):
            raise NormInputError(
                f"{name} has {dtype} parameters and got a {x.dtype} input; convert one of "
                f"them (e.g. layer.to({x.dtype})), as torch's norms need"
            )

    def check_channels(self, x: torch.Tensor, channel_dim: int) -> None:
        """Called when ``x`` does not have C channels: an error when the layer holds
        per-channel tensors, else nothing (subclasses may warn)."""
        if self.holds_channel_state():
            raise NormInputError(
                f"{type(self).__name__} expected {self.num_features} channels "
                f"(dim {channel_dim}), got {x.shape[channel_dim]} in an input of shape "
                f"{tuple(x.shape)}"
            )

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass's own ``forward`` is an FX leaf too (see :func:`fx_leaf`)."""
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = fx_leaf(cls.__dict__["forward"])

    __prepare_scriptable__ = unscriptable  # a clear error from torch.jit.script

    @fx_leaf
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.numel() == 0:  # an empty batch, as torch's norms allow
            return self.empty_forward(x)
        params = self.coefficient_params()
        names = tuple(params)
        count = math.prod(x.shape[2:])

        def coef(mean, var, *values):
            return self.coefficients(mean, var, dict(zip(names, values)), count)

        return affine_norm(
            x,
            coef,
            tuple(params.values()),
            with_var=self.needs_variance(),
            with_mean=self.needs_mean(),
            backend=self.backend,
        )

    def empty_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output for an input without elements: empty, no statistics touched. It
        depends on every trainable parameter (with zero gradient), so that data-parallel
        training sees the same parameters used on every process."""
        trainable = [p.sum() for p in self.parameters() if p.requires_grad]
        return x.clone() if not trainable else x + 0.0 * sum(trainable)

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
