"""The baselines on the shared core: BatchNorm, InstanceNorm, LayerNorm and GroupNorm.

Each is one statistics choice over the per-(n, c) moments, with
``x_hat = (x - mu) / sqrt(sigma^2 + eps)``, i.e. ``s = rsqrt(sigma^2 + eps)``, ``t = -mu * s``.
"""

from __future__ import annotations

import math

import torch

from normlab.functional import group_moments, layer_moments
from normlab.norms.base import NormBase
from normlab.norms.batch_stats import BatchStatistics

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm1d",
    "GroupNorm2d",
    "GroupNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm1d",
    "LayerNorm2d",
    "LayerNorm3d",
    "standardize",
]


def standardize(
    mean: torch.Tensor, var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` of ``x_hat = (x - mean) / sqrt(var + eps) = s * x + t``.

    ``t = -(mean * s)`` rather than ``(-mean) * s``, so that autograd saves ``mean`` itself
    (often saved already, e.g. by the pooling) instead of a negated copy.
    """
    scale = torch.rsqrt(var + eps)
    return scale, -(mean * scale)


def check_instance_statistics(layer: NormBase, count: int) -> None:
    """In training, instance statistics need more than one element per (n, c) (as torch)."""
    if layer.training and count <= 1:
        raise ValueError(
            f"{type(layer).__name__}: instance statistics need more than 1 spatial element "
            "per channel, got 1; feed an (N, C, L) or larger input, or use bn/ln/gn"
        )


class BatchNorm(BatchStatistics, NormBase):
    """Batch normalization (Ioffe & Szegedy 2015) on the shared core.

    Equals :class:`torch.nn.BatchNorm2d` (same parameters, buffers and momentum semantics)
    and adds ``virtual_batch_size`` and the constant-noise attack.

    Shape:
        - input: (N, C, *) as for the matching torch layer; output: same.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, affine, backend=backend)
        self.init_batch_statistics(
            num_features, momentum, track_running_stats, virtual_batch_size
        )

    def needs_variance(self) -> bool:
        return self.uses_batch_statistics()

    def needs_mean(self) -> bool:
        return self.uses_batch_statistics()

    def normalizer(self, mean, var, params, count):
        return standardize(*self.batch_statistics(mean, var, count), self.eps)

    def is_plain(self) -> bool:
        """Whether this layer computes plain BN: no noise attack, no gate and BN's own
        normalizer (False for the BN-derived IEBN and BIN, whatever their parameters)."""
        cls = type(self)
        return (
            self.noise is None
            and cls.normalizer is BatchNorm.normalizer
            and cls.gates is NormBase.gates
        )

    def running_affine(
        self, params: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scale, shift)`` of shape (C,) with ``y = scale * x + shift``, when plain BN
        normalizes with its running statistics (eval, or frozen); None otherwise.

        Computed in the order of torch's CPU kernel (ATen's
        ``batch_norm_cpu_collect_linear_and_constant_terms``, vectorized):
        ``scale = rsqrt(running_var + eps) * weight`` and ``shift = bias - running_mean *
        scale`` in one rounding (a fused multiply-add), so that a BatchNorm converted by
        :func:`normlab.convert_norm` gives bit-identical eval outputs. A layer frozen by
        :func:`normlab.freeze_norm` uses torchvision's ``FrozenBatchNorm2d`` order instead
        (``shift = bias - running_mean * scale`` in two roundings), as it is applied there.
        """
        if self.uses_batch_statistics() or not self.is_plain():
            return None
        params = self.coefficient_params() if params is None else params
        weight, bias = params.get("weight"), params.get("bias")
        scale = torch.rsqrt(self.running_var + self.eps)
        if weight is not None:
            scale = scale * weight
        mean = self.running_mean
        if bias is None:
            return scale, -(mean * scale)
        if self.frozen_stats:
            return scale, bias - mean * scale
        return scale, torch.addcmul(bias, mean, scale, value=-1)

    def coefficients(self, mean, var, params, count):
        affine = self.running_affine(params)
        if affine is None:
            return super().coefficients(mean, var, params, count)
        scale, shift = (t.to(mean.dtype).expand(mean.shape) for t in affine)
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`NormBase.forward`; a frozen plain BN computes ``x * scale + shift`` in
        two roundings, exactly as torchvision's ``FrozenBatchNorm2d``."""
        affine = self.running_affine() if self.frozen_stats else None
        if affine is None:
            return super().forward(x)
        self.check_input(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = (t.to(x.dtype).reshape(shape) for t in affine)
        return x * scale + shift

    def start_from_bn(self) -> str:
        """Nothing to do: BN computes what the BN it replaces computes (exact)."""
        return "exact"


class InstanceNorm(BatchStatistics, NormBase):
    """Instance normalization (Ulyanov et al. 2016): each (n, c) uses its own statistics.

    Unlike torch's InstanceNorm, ``affine`` defaults to True so that it drops into a
    network in place of BN. With ``track_running_stats=True`` it keeps running averages
    of the instance statistics (batch average of the means and of the unbiased variances,
    as torch does) and uses them in eval.
    """

    pools_batch = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, affine, backend=backend)
        self.init_batch_statistics(num_features, momentum, track_running_stats, None)

    def needs_variance(self) -> bool:
        return self.uses_batch_statistics()

    def needs_mean(self) -> bool:
        return self.uses_batch_statistics()

    def normalizer(self, mean, var, params, count):
        if not self.uses_batch_statistics():
            return standardize(
                self.running_mean.to(mean.dtype), self.running_var.to(mean.dtype), self.eps
            )
        check_instance_statistics(self, count)
        if self.moves_running_stats():
            self._update_running_stats(mean, var, 1, count)
        return standardize(mean, var, self.eps)


class LayerNorm(NormBase):
    """Layer normalization (Ba et al. 2016) over (C, *) with a per-channel affine.

    Each sample is normalized with the statistics of all its channels and positions; the
    scale and shift are per channel (so ``GroupNorm(num_groups=1)`` equals it).
    """

    def normalizer(self, mean, var, params, count):
        return standardize(*layer_moments(mean, var), self.eps)


class GroupNorm(NormBase):
    """Group normalization (Wu & He 2018): statistics over groups of consecutive channels.

    Args:
        num_groups: number of groups; must divide C. ``None`` (default) takes 32 groups
            when C is divisible by 32, else ``gcd(32, C)`` groups (e.g. 16 for C = 16), so
            the narrow layers of CIFAR networks work without a per-layer setting.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, affine, backend=backend)
        self.num_groups = default_num_groups(self.num_features, num_groups)

    def normalizer(self, mean, var, params, count):
        return standardize(*group_moments(mean, var, self.num_groups), self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_groups={self.num_groups}"


def default_num_groups(num_features: int, num_groups: int | None) -> int:
    """``num_groups``, checked to divide C; ``None`` gives ``gcd(32, C)``."""
    if num_groups is None:
        return math.gcd(32, num_features)
    if num_groups < 1 or num_features % num_groups:
        raise ValueError(
            f"num_groups must be a positive divisor of the {num_features} channels, "
            f"got {num_groups}"
        )
    return int(num_groups)


class BatchNorm1d(BatchNorm):
    dim = 1


class BatchNorm2d(BatchNorm):
    dim = 2


class BatchNorm3d(BatchNorm):
    dim = 3


class InstanceNorm1d(InstanceNorm):
    dim = 1


class InstanceNorm2d(InstanceNorm):
    dim = 2


class InstanceNorm3d(InstanceNorm):
    dim = 3


class LayerNorm1d(LayerNorm):
    dim = 1


class LayerNorm2d(LayerNorm):
    dim = 2


class LayerNorm3d(LayerNorm):
    dim = 3


class GroupNorm1d(GroupNorm):
    dim = 1


class GroupNorm2d(GroupNorm):
    dim = 2


class GroupNorm3d(GroupNorm):
    dim = 3
