"""Batch-Instance Normalization (BIN; Nam & Kim 2018).

A per-channel gate rho in [0, 1] mixes the batch- and instance-normalized responses:

    y = (rho * x_hat_BN + (1 - rho) * x_hat_IN) * gamma + beta

Both normalized tensors are affine in x, so the mix is one affine map with
``s = rho * s_BN + (1 - rho) * s_IN`` and ``t = rho * t_BN + (1 - rho) * t_IN``. The IN
branch uses the sample's own statistics in training and in eval. rho starts at 1, has the
role ``"gate"`` (10x learning rate, no weight decay in :func:`normlab.param_groups`) and is
clamped to [0, 1] by :func:`normlab.post_step` after every optimizer step.
"""

from __future__ import annotations

import torch
from torch import nn

from normlab.norms.base import Coefficients, NormBase, Params
from normlab.norms.registry import FigureSpec, Record, TorchTwin, register_norm
from normlab.norms.standard import BatchNorm, check_instance_statistics, standardize
from normlab.norms.summary import value_stats

__all__ = ["BatchInstanceNorm", "BatchInstanceNorm1d", "BatchInstanceNorm2d", "BatchInstanceNorm3d"]


def _summary(layer: BatchInstanceNorm) -> Record:
    """``norm_summary``'s BIN fields: statistics of rho, its values, and the share of
    channels leaning to BN (rho > 0.5)."""
    gate = layer.gate.detach().float()
    return {
        "gate": value_stats(gate),
        "gate_values": gate.tolist(),
        "fraction_batch": float((gate > 0.5).float().mean()),
    }


@register_norm(
    "bin",
    aliases=("batchinstancenorm", "batchinstance"),
    twin=TorchTwin("bn", init={"gate_init": 0.3}, instance_branch=True),
    summary=_summary,
    figure=FigureSpec(
        kind="boxes",
        file="bin_gates.png",
        caption="BIN's gates ρ per layer (1 = BN, 0 = IN), as in the BIN paper's gate figure",
        keys=("gate_values",),
        labels=("gate ρ (1 = BN, 0 = IN)",),
        xlabel="BIN layer (input → output)",
        ylim=(-0.05, 1.05),
    ),
)
class BatchInstanceNorm(BatchNorm):
    """Batch-Instance Normalization: :class:`BatchNorm` mixed with instance normalization.

    Args:
        num_features, eps, momentum, affine, track_running_stats, bias, device, dtype,
        virtual_batch_size: as for BatchNorm (its BN part follows torch's BatchNorm).
        gate_init: initial rho (the paper uses 1, i.e. start as BN).

    Parameters:
        ``weight``, ``bias``, ``gate`` (rho), all (C,).

    Shape:
        - input: (N, C, *) with more than one element per (n, c); output: same.
    """

    param_roles = {**NormBase.param_roles, "gate": "gate"}

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
        gate_init: float = 1.0,
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, bias=bias,
            device=device, dtype=dtype, virtual_batch_size=virtual_batch_size, backend=backend,
        )
        self.gate_init = float(gate_init)
        self.gate = nn.Parameter(self.new_channel_tensor(self.gate_init, device, dtype))

    def reset_parameters(self) -> None:
        """BatchNorm's reset, and rho back to ``gate_init``."""
        super().reset_parameters()
        with torch.no_grad():
            self.gate.fill_(self.gate_init)

    def coefficient_params(self) -> Params:
        params = self.affine_params()
        params["gate"] = self.gate
        return params

    def needs_variance(self) -> bool:
        """The IN branch uses the sample's variance in training and in eval."""
        return True

    def needs_mean(self) -> bool:
        """The IN branch uses the sample's mean in training and in eval."""
        return True

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        rho = params["gate"]
        assert rho is not None and var is not None  # BIN's gate and the IN branch's variance
        batch_scale, batch_shift = self.batch_normalizer(mean, var, count)
        check_instance_statistics(self.layer_name, count, self.training)
        instance_scale, instance_shift = standardize(mean, var, self.eps)
        return (
            rho * batch_scale + (1 - rho) * instance_scale,
            rho * batch_shift + (1 - rho) * instance_shift,
        )

    @torch.no_grad()
    def post_step(self) -> None:
        """Clamp rho to [0, 1] (BIN paper: gates are clipped after each update)."""
        self.gate.clamp_(0.0, 1.0)

    @torch.no_grad()
    def start_from_bn(self) -> str:
        """rho = 1: the layer computes what the BN whose weights it holds computes (exact:
        the IN branch enters with weight 0); rho keeps learning from there."""
        self.gate.fill_(1.0)
        return "exact"


class BatchInstanceNorm1d(BatchInstanceNorm):
    dim = 1


class BatchInstanceNorm2d(BatchInstanceNorm):
    dim = 2


class BatchInstanceNorm3d(BatchInstanceNorm):
    dim = 3
