"""The base class of every normlab normalization layer.

A layer is an (N, C) *coefficient function* on top of the shared moments -> affine op
(:func:`normlab.functional.affine_norm`). Subclasses implement :meth:`NormBase.normalizer`,
which turns the per-(n, c) moments into the normalization ``x_hat = s * x + t``; the base
class adds the constant-noise attack and the affine parameters, so every layer computes

    x_hat = s * x + t                     (the layer's own statistics)
    x_hat <- Na * x_hat + Nb              (IEBN paper Eqn. 11, only when ``noise`` is set)
    y = gamma' * x_hat + beta'            (gamma, beta, possibly gated: IEBN Eqn. 9)

Layers never subclass ``torch.nn.modules.batchnorm._BatchNorm`` (DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from normlab.functional import affine_norm
from normlab.functional.tracing import fx_leaf, unscriptable

__all__ = ["NormBase", "NormInputError"]

_INPUT_LAYOUT = {1: "(N, C) or (N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_INPUT_NDIMS = {1: (2, 3), 2: (4,), 3: (5,)}


class NormInputError(ValueError):
    """An input a normalization layer cannot normalize (shape, channels or dtype)."""


class NormBase(nn.Module):
    """Common machinery of normlab layers: input checks, affine parameters, noise, backend.

    Args:
        num_features: C, the number of channels.
        eps: added to variances before the square root.
        affine: learn a per-channel scale ``weight`` (init 1) and shift ``bias`` (init 0).
        backend: ``"reference"``, ``"fused"`` or ``None`` for the global default.

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
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if int(num_features) <= 0:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.backend = backend
        self.noise: tuple[float, float] | None = None
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features))
            self.bias = nn.Parameter(torch.zeros(self.num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

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

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`NormInputError` for a shape, channel count or dtype it cannot take."""
        name = type(self).__name__
        if x.dim() not in _INPUT_NDIMS[self.dim]:
            raise NormInputError(
                f"{name} expected a {' or '.join(f'{d}D' for d in _INPUT_NDIMS[self.dim])} "
                f"input {_INPUT_LAYOUT[self.dim]}, got a {x.dim()}D input of shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise NormInputError(
                f"{name} expected {self.num_features} channels (dim 1), got {x.shape[1]} "
                f"in an input of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise NormInputError(
                f"{name} expected a floating-point input, got {x.dtype}; convert it first, "
                "e.g. x.float()"
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
        text = f"{self.num_features}, eps={self.eps}, affine={self.affine}"
        if self.noise is not None:
            text += f", noise={self.noise}"
        return text
