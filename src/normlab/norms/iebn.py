"""Instance-Enhancement Batch Normalization (IEBN; Liang et al., IEBN paper Alg. 1).

BN whose scale is recalibrated per sample by a gate read from the raw input's channel
average (global squeezing, feature processing, instance embedding):

    m[n, c]     = AVG(x[n, c])                                  (Alg. 1 step 8)
    delta[n, c] = sigmoid(gamma_hat[c] * m[n, c] + beta_hat[c])  (Alg. 1 step 8, Eqn. 8)
    y[n, c]     = x_hat_BN[n, c] * (gamma[c] * delta[n, c]) + beta[c]   (Eqn. 9)

The gate reads the mean of the raw input (before normalization), in training and in eval,
as the authors' ``BAN2d`` does. The paper's ablations (Table 4, Table 5) are switches:
``operator``, ``position``, ``activation`` and ``gate_init``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from normlab.functional import instance_moments, statistics_dtype
from normlab.norms.base import NormBase, Params
from normlab.norms.registry import FigureSpec, Record, TorchTwin, register_norm
from normlab.norms.standard import BatchNorm
from normlab.norms.summary import value_stats

__all__ = ["IEBN", "IEBN1d", "IEBN2d", "IEBN3d"]

OPERATORS = ("linear", "identity", "fc")
POSITIONS = ("gamma", "beta", "both")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "softmax")


def _choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown IEBN {what} {value!r}; valid: {', '.join(valid)}")
    return value


# beta_hat where each activation gives (close to) a power of two
_POWER_OF_TWO_POINT = {"sigmoid": 0.0, "relu": 1.0, "tanh": math.atanh(0.5), "softmax": 0.0}


def fold_factor(
    target: torch.Tensor, factor: torch.Tensor, ulps: int = 4
) -> tuple[torch.Tensor, int]:
    """``v`` such that ``v * factor`` rounds to ``target``: ``target / factor``, moved by up
    to ``ulps`` ulps each way where that makes the product exact.

    Returns:
        ``(v, entries whose product stays off by a rounding)``.
    """
    value = target / factor
    found = value * factor == target
    up = down = value
    for _ in range(ulps):
        up = torch.nextafter(up, torch.full_like(up, math.inf))
        down = torch.nextafter(down, torch.full_like(down, -math.inf))
        for candidate in (up, down):
            hit = ~found & (candidate * factor == target)
            value = torch.where(hit, candidate, value)
            found = found | hit
    return value, int((~found).sum())


def _summary(layer: IEBN) -> Record:
    """``norm_summary``'s IEBN fields: the gate's settings and statistics of its parameters."""
    entry: Record = {"operator": layer.operator, "position": layer.position}
    for name in layer.gate_param_names():
        entry[name] = value_stats(getattr(layer, name))
    return entry


def _probe(layer: IEBN, x: torch.Tensor) -> Record:
    """``norm_summary``'s measurement on an input: statistics of delta[n, c] over ``x``."""
    return {"gate_values": value_stats(layer.gate_values(x))}


@register_norm(
    "iebn",
    aliases=("instanceenhancement", "ban"),
    # at gate_init (0, 40) the gate is exactly 1: sigmoid(40) == 1.0 in float64
    twin=TorchTwin("bn", point={"gate_init": (0.0, 40.0)}, init={"gate_init": (0.5, 2.0)}),
    summary=_summary,
    probe=_probe,
    figure=FigureSpec(
        kind="quantiles",
        file="iebn_gates.png",
        caption="IEBN's gate values δ per layer on a test batch",
        keys=("gate_values",),
        labels=("gate δ",),
        xlabel="IEBN layer (input → output)",
        reference=(0.2689, "init σ(−1)"),
        needs_inputs=True,
    ),
    test_variants={"": {}, "fc": {"operator": "fc", "reduction": 2, "position": "both"}},
)
class IEBN(BatchNorm):
    """Instance-Enhancement Batch Normalization: :class:`BatchNorm` with a gated scale.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, bias, device, dtype, virtual_batch_size:
            as for BatchNorm (its BN part follows torch's BatchNorm).
        operator: how the squeezed mean becomes the gate's logit (IEBN Table 4 left):
            ``"linear"`` (default, ``gamma_hat * m + beta_hat`` per channel), ``"identity"``
            (``m``, no parameters) or ``"fc"`` (FC-ReLU-FC across channels, SE-like).
        reduction: hidden width C // reduction of the ``"fc"`` operator.
        position: what the gate scales (IEBN Table 4 right): ``"gamma"`` (default),
            ``"beta"`` or ``"both"``.
        activation: ``"sigmoid"`` (default), ``"tanh"``, ``"relu"`` or ``"softmax"``
            (over channels).
        gate_init: initial ``(gamma_hat, beta_hat)`` of the linear operator; the paper's
            best is ``(0, -1)`` (Table 5).

    Parameters:
        ``weight``, ``bias`` (gamma, beta), and for ``operator="linear"`` ``gate_weight``
        (gamma_hat) and ``gate_bias`` (beta_hat), all (C,); for ``"fc"``
        ``gate_fc1_weight`` (C//r, C), ``gate_fc1_bias``, ``gate_fc2_weight`` (C, C//r),
        ``gate_fc2_bias``.

    Shape:
        - input: (N, C, *) as for the matching BatchNorm; output: same.
    """

    param_roles = {
        **NormBase.param_roles,
        "gate_weight": "iebn_gate",
        "gate_bias": "iebn_gate",
        "gate_fc1_weight": "iebn_gate",
        "gate_fc1_bias": "iebn_gate",
        "gate_fc2_weight": "iebn_gate",
        "gate_fc2_bias": "iebn_gate",
    }

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        operator: str = "linear",
        reduction: int = 16,
        position: str = "gamma",
        activation: str = "sigmoid",
        gate_init: tuple[float, float] = (0.0, -1.0),
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, bias=bias,
            device=device, dtype=dtype, virtual_batch_size=virtual_batch_size, backend=backend,
        )
        self.operator = _choice(operator, OPERATORS, "operator")
        self.position = _choice(position, POSITIONS, "position")
        self.activation = _choice(activation, ACTIVATIONS, "activation")
        self.gate_init = (float(gate_init[0]), float(gate_init[1]))

        def empty(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, device=device, dtype=dtype))

        if self.operator == "linear":
            self.gate_weight = empty(num_features)
            self.gate_bias = empty(num_features)
        elif self.operator == "fc":
            hidden = max(num_features // int(reduction), 1)
            self.gate_fc1_weight = empty(hidden, num_features)
            self.gate_fc1_bias = empty(hidden)
            self.gate_fc2_weight = empty(num_features, hidden)
            self.gate_fc2_bias = empty(num_features)
        self.reset_gate()

    def reset_parameters(self) -> None:
        """BatchNorm's reset, and the gate's parameters back to their initial values."""
        super().reset_parameters()
        self.reset_gate()

    @torch.no_grad()
    def reset_gate(self) -> None:
        """``(gamma_hat, beta_hat) = gate_init`` (linear operator) or nn.Linear's default
        initialization (fc operator)."""
        if self.operator == "linear":
            self.gate_weight.fill_(self.gate_init[0])
            self.gate_bias.fill_(self.gate_init[1])
        elif self.operator == "fc":
            self._init_fc()

    def _init_fc(self) -> None:
        """nn.Linear's default initialization for both FC layers."""
        for weight, bias in (
            (self.gate_fc1_weight, self.gate_fc1_bias),
            (self.gate_fc2_weight, self.gate_fc2_bias),
        ):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(bias, -bound, bound)

    def gate_param_names(self) -> tuple[str, ...]:
        """Names of the gate's own parameters (empty for the identity operator)."""
        if self.operator == "linear":
            return ("gate_weight", "gate_bias")
        if self.operator == "fc":
            return ("gate_fc1_weight", "gate_fc1_bias", "gate_fc2_weight", "gate_fc2_bias")
        return ()

    def coefficient_params(self) -> Params:
        """The affine parameters and those of :meth:`gate_param_names`, in that order
        (``hasattr``: which ones exist is a static fact for TorchScript)."""
        params = self.affine_params()
        if hasattr(self, "gate_weight"):
            params["gate_weight"] = self.gate_weight
            params["gate_bias"] = self.gate_bias
        if hasattr(self, "gate_fc1_weight"):
            params["gate_fc1_weight"] = self.gate_fc1_weight
            params["gate_fc1_bias"] = self.gate_fc1_bias
            params["gate_fc2_weight"] = self.gate_fc2_weight
            params["gate_fc2_bias"] = self.gate_fc2_bias
        return params

    def gate(self, mean: torch.Tensor, params: Params) -> torch.Tensor:
        """delta[n, c] from the raw per-(n, c) means (IEBN Alg. 1 step 8, Eqn. 8)."""
        if self.operator == "linear":
            weight, bias = params["gate_weight"], params["gate_bias"]
            assert weight is not None and bias is not None
            logit = weight * mean + bias
        elif self.operator == "fc":
            weight1, bias1 = params["gate_fc1_weight"], params["gate_fc1_bias"]
            weight2, bias2 = params["gate_fc2_weight"], params["gate_fc2_bias"]
            assert weight1 is not None and weight2 is not None
            hidden = F.relu(F.linear(mean, weight1, bias1))
            logit = F.linear(hidden, weight2, bias2)
        else:
            logit = mean
        if self.activation == "sigmoid":
            return torch.sigmoid(logit)
        if self.activation == "tanh":
            return torch.tanh(logit)
        if self.activation == "relu":
            return F.relu(logit)
        return torch.softmax(logit, dim=1)

    def needs_mean(self) -> bool:
        """The gate reads the raw input's mean in training and in eval (Alg. 1 step 8)."""
        return True

    def gates(
        self, mean: torch.Tensor, params: Params
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        delta = self.gate(mean, params)
        return (
            delta if self.position in ("gamma", "both") else None,
            delta if self.position in ("beta", "both") else None,
        )

    @torch.no_grad()
    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """delta[n, c] this layer applies to input ``x`` (for inspection), computed in the
        statistics dtype of ``x`` as the forward computes it. Shape: (N, C)."""
        self.check_input(x)
        if x.dim() > 2:
            mean = instance_moments(x, with_var=False)[0]
        else:
            mean = x.to(statistics_dtype(x))
        return self.gate(mean, self.coefficient_params())

    @torch.no_grad()
    def start_from_bn(self) -> str:
        """Make the layer compute what the BN whose weights it holds computes.

        The gate is made constant — ``gate_weight`` (gamma_hat) 0 for the linear operator,
        the last FC's weight 0 for ``"fc"`` — with its bias (beta_hat) where the activation
        gives a power of two: sigmoid(0) = 1/2, relu(1) = 1 (tanh(atanh(1/2)) and softmax
        (1/C) are close to one). So delta[n, c] is that constant for every sample, and it
        is folded into what it scales: ``weight <- weight / delta`` (and ``bias`` for
        ``position="beta"``/``"both"``), exact for a power of two, else nudged by a few
        ulps so that ``weight * delta`` rounds to the old value. Unlike a saturated
        sigmoid, the gate keeps its gradient, so fine-tuning learns it from there (beta_hat
        starts at 0 rather than the paper's -1).

        Returns:
            ``"exact"``, or how many entries' products stay one rounding off.

        Raises:
            ValueError: for ``operator="identity"`` (the gate reads the input, it cannot
                be made constant) or without the affine parameter the gate scales.
        """
        folded = {"gamma": ("weight",), "beta": ("bias",), "both": ("weight", "bias")}
        names = folded[self.position]
        if self.operator == "identity" or any(getattr(self, n) is None for n in names):
            raise ValueError(
                f"{type(self).__name__} cannot start as BN with operator={self.operator!r} "
                f"and affine={self.affine}; use operator='linear' or 'fc' with affine weights"
            )
        linear = self.operator == "linear"
        getattr(self, "gate_weight" if linear else "gate_fc2_weight").zero_()
        gate_bias = getattr(self, "gate_bias" if linear else "gate_fc2_bias")
        gate_bias.fill_(_POWER_OF_TWO_POINT[self.activation])
        zeros = torch.zeros(1, self.num_features, dtype=gate_bias.dtype, device=gate_bias.device)
        delta = self.gate(zeros, self.coefficient_params())[0]
        off = 0
        for name in names:
            target = getattr(self, name)
            value, missed = fold_factor(target, delta)
            target.copy_(value)
            off += missed
        return "exact" if off == 0 else f"{off} entries one rounding off"

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, operator={self.operator}, position={self.position}, "
            f"activation={self.activation}"
        )


class IEBN1d(IEBN):
    dim = 1


class IEBN2d(IEBN):
    dim = 2


class IEBN3d(IEBN):
    dim = 3
