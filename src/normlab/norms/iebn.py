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
from normlab.norms.base import NormBase
from normlab.norms.standard import BatchNorm

__all__ = ["IEBN", "IEBN1d", "IEBN2d", "IEBN3d"]

OPERATORS = ("linear", "identity", "fc")
POSITIONS = ("gamma", "beta", "both")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "softmax")


def _choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown IEBN {what} {value!r}; valid: {', '.join(valid)}")
    return value


class IEBN(BatchNorm):
    """Instance-Enhancement Batch Normalization: :class:`BatchNorm` with a gated scale.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, virtual_batch_size: as for BatchNorm.
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
        operator: str = "linear",
        reduction: int = 16,
        position: str = "gamma",
        activation: str = "sigmoid",
        gate_init: tuple[float, float] = (0.0, -1.0),
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats,
            virtual_batch_size=virtual_batch_size, backend=backend,
        )
        self.operator = _choice(operator, OPERATORS, "operator")
        self.position = _choice(position, POSITIONS, "position")
        self.activation = _choice(activation, ACTIVATIONS, "activation")
        self.gate_init = (float(gate_init[0]), float(gate_init[1]))
        if self.operator == "linear":
            self.gate_weight = nn.Parameter(torch.full((num_features,), self.gate_init[0]))
            self.gate_bias = nn.Parameter(torch.full((num_features,), self.gate_init[1]))
        elif self.operator == "fc":
            hidden = max(num_features // int(reduction), 1)
            self.gate_fc1_weight = nn.Parameter(torch.empty(hidden, num_features))
            self.gate_fc1_bias = nn.Parameter(torch.empty(hidden))
            self.gate_fc2_weight = nn.Parameter(torch.empty(num_features, hidden))
            self.gate_fc2_bias = nn.Parameter(torch.empty(num_features))
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

    def coefficient_params(self):
        params = super().coefficient_params()
        params.update({name: getattr(self, name) for name in self.gate_param_names()})
        return params

    def gate(self, mean: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """delta[n, c] from the raw per-(n, c) means (IEBN Alg. 1 step 8, Eqn. 8)."""
        if self.operator == "linear":
            logit = params["gate_weight"] * mean + params["gate_bias"]
        elif self.operator == "fc":
            hidden = F.relu(F.linear(mean, params["gate_fc1_weight"], params["gate_fc1_bias"]))
            logit = F.linear(hidden, params["gate_fc2_weight"], params["gate_fc2_bias"])
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

    def gates(self, mean, params):
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
