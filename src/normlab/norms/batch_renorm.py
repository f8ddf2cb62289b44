"""Batch Renormalization (BRN; Ioffe 2017, "Batch Renormalization: Towards Reducing
Minibatch Dependence in Batch-Normalized Models", Algorithm 1).

In training, BN's output is corrected towards what the running statistics would give:

    x_hat = (x - mu_B) / sigma_B * r + d
    r = clip(sigma_B / sigma, 1 / r_max, r_max)          (no gradient through r)
    d = clip((mu_B - mu) / sigma, -d_max, d_max)          (no gradient through d)

with the batch statistics ``mu_B``, ``sigma_B = sqrt(var_B + eps)`` and the running ones
``mu``, ``sigma = sqrt(running_var + eps)`` as they were before the batch. As a coefficient
function on the shared core: ``A = gamma * r / sigma_B`` and
``B = beta + gamma * (d - mu_B * r / sigma_B)``. In eval it normalizes with the running
statistics, as BN. ``r_max = 1, d_max = 0`` is BN exactly.
"""

from __future__ import annotations

import torch

from normlab.functional.replay import is_replaying
from normlab.norms.base import Coefficients, NormConfigError, Params
from normlab.norms.registry import TorchTwin, register_norm
from normlab.norms.standard import BatchNorm, standardize

__all__ = ["BatchRenorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "renorm_correction"]


def renorm_correction(
    batch_mean: torch.Tensor,
    batch_var: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    r_max: float,
    d_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, d)`` of Algorithm 1, detached (BRN treats them as constants in backprop).

    Args:
        batch_mean, batch_var: the batch's mean and (biased) variance, broadcastable
            against (N, C).
        running_mean, running_var: the running statistics before this batch, (C,).
        eps: added to both variances before the square root.
        r_max, d_max: the clipping bounds.
    """
    batch_std = torch.sqrt(batch_var.detach() + eps)
    running_std = torch.sqrt(running_var + eps)
    r = torch.clamp(batch_std / running_std, 1.0 / r_max, r_max)
    d = torch.clamp((batch_mean.detach() - running_mean) / running_std, -d_max, d_max)
    return r, d


@register_norm(
    "brn",
    aliases=("batchrenorm", "batch_renorm"),
    twin=TorchTwin("bn", point={"r_max": 1.0, "d_max": 0.0}),
    gradcheck_kwargs={"r_max": 1.0, "d_max": 0.0},
)
class BatchRenorm(BatchNorm):
    """Batch Renormalization: :class:`BatchNorm` whose training output is corrected by
    ``r`` and ``d`` towards the running statistics (Ioffe 2017, Algorithm 1).

    Args:
        num_features, eps, momentum, affine, track_running_stats, bias, device, dtype,
        virtual_batch_size: as for BatchNorm (the running statistics are torch's: the
            unbiased variance, moved with ``momentum``; ``sigma = sqrt(running_var + eps)``).
        r_max: bound of ``r`` (>= 1; 1 keeps BN's scale). Default 1.5 and ``d_max``
            0.5: the values the SN paper chose for BRN on ResNet-50 with 8 GPUs x 4
            images (SN paper, Sec. 5.1, Table I's comparison); Ioffe relaxes them from
            (1, 0) to (3, 5) during training.
        d_max: bound of ``|d|`` (>= 0; 0 keeps BN's shift).

    Without running statistics (``track_running_stats=False``) there is nothing to
    correct towards, and the layer is BN. ``r_max`` and ``d_max`` may be changed between
    steps (a schedule), as plain attributes.

    Shape:
        - input: (N, C, *) as for the matching BatchNorm; output: same.
    """

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
        r_max: float = 1.5,
        d_max: float = 0.5,
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        if not float(r_max) >= 1.0 or not float(d_max) >= 0.0:
            raise NormConfigError(
                f"BatchRenorm expects r_max >= 1 and d_max >= 0, got r_max={r_max}, "
                f"d_max={d_max}"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, bias=bias,
            device=device, dtype=dtype, virtual_batch_size=virtual_batch_size, backend=backend,
        )
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self._before_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        """BN's ``(s, t) = (1 / sigma_B, -mu_B / sigma_B)`` renormalized to
        ``(s * r, t * r + d)`` in training; BN's on the running statistics in eval."""
        running_mean, running_var = self.running_mean, self.running_var
        if not self.uses_batch_statistics() or running_mean is None or running_var is None:
            return self.batch_normalizer(mean, var, count)
        if torch.jit.is_scripting():
            before_mean = running_mean.to(mean.dtype).clone()
            before_var = running_var.to(mean.dtype).clone()
        else:
            before_mean, before_var = self._statistics_before_batch(mean.dtype)
        batch_mean, batch_var = self.batch_statistics(mean, var, count)
        scale, shift = standardize(batch_mean, batch_var, self.eps)
        r, d = renorm_correction(
            batch_mean, batch_var, before_mean, before_var, self.eps, self.r_max, self.d_max
        )
        return scale * r, torch.addcmul(d, shift, r)

    def _statistics_before_batch(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The running statistics as they were before this batch moves them (Algorithm 1
        updates them last): copied in a forward, and the same copies again when that
        forward is replayed for a double backward, after it has moved the buffers."""
        if is_replaying() and self._before_batch is not None:
            return self._before_batch
        running_mean, running_var = self.running_mean, self.running_var
        assert running_mean is not None and running_var is not None
        self._before_batch = (running_mean.to(dtype).clone(), running_var.to(dtype).clone())
        return self._before_batch

    def start_from_bn(self) -> str:
        """Make the layer compute what the BN whose weights it holds computes, in training
        too: ``r_max = 1`` and ``d_max = 0``, where Ioffe's schedule starts; relax them
        (e.g. towards the defaults) while fine-tuning."""
        self.r_max, self.d_max = 1.0, 0.0
        return "exact"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}"


class BatchRenorm1d(BatchRenorm):
    dim = 1


class BatchRenorm2d(BatchRenorm):
    dim = 2


class BatchRenorm3d(BatchRenorm):
    dim = 3
