"""The baselines on the shared core: BatchNorm, InstanceNorm, LayerNorm and GroupNorm.

Each is one statistics choice over the per-(n, c) moments, with
``x_hat = (x - mu) / sqrt(sigma^2 + eps)``, i.e. ``s = rsqrt(sigma^2 + eps)``, ``t = -mu * s``.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any

import torch

from normlab.functional import group_moments, is_replaying, layer_moments, spatial_size
from normlab.norms.base import (
    Coefficients,
    NormBase,
    NormConfigError,
    NormInputError,
    Params,
    shape_text,
)
from normlab.norms.batch_stats import BatchStatistics
from normlab.norms.registry import TorchTwin, register_norm

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
    "NumGroupsError",
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


def check_instance_statistics(name: str, count: int, uses_input: bool) -> None:
    """Instance statistics of the input need more than one element per (n, c) (torch's
    "Expected more than 1 spatial element when training", also in eval without running
    statistics); ``name`` is the layer's, for the message."""
    if uses_input and count <= 1:
        raise ValueError(
            f"{name}: expected more than 1 spatial element when training "
            "(instance statistics of the input), got 1; feed an (N, C, L) or larger input, "
            "or use bn/ln/gn"
        )


class NumGroupsError(NormConfigError, ZeroDivisionError):
    """``num_groups`` that is not a positive divisor of C. Also a ``ZeroDivisionError`` and
    a ``RuntimeError``: torch's GroupNorm raises those for 0 groups (at construction) and
    negative ones (at the first forward); ValueError for a non-divisor."""


@register_norm("bn", aliases=("batchnorm", "batch"), twin=TorchTwin("bn"))
class BatchNorm(BatchStatistics, NormBase):
    """Batch normalization (Ioffe & Szegedy 2015) on the shared core.

    Equals :class:`torch.nn.BatchNorm1d/2d/3d`: the same arguments (``bias=False`` keeps
    ``weight`` only; ``device``/``dtype`` factory arguments), parameters, buffers and
    state-dict version, the same momentum semantics (``None``: cumulative average over
    ``num_batches_tracked``, which counts every training forward, empty ones included),
    the same checks (``eps`` > 0 with batch statistics, more than one value per channel)
    and exception types; the running buffers, not the ``track_running_stats`` flag, decide
    what eval normalizes with. Adds ``virtual_batch_size`` and the constant-noise attack.

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
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, affine, bias=bias, device=device, dtype=dtype, backend=backend
        )
        self.init_batch_statistics(
            num_features, momentum, track_running_stats, virtual_batch_size,
            device=device, dtype=dtype,
        )

    def needs_variance(self) -> bool:
        return self.uses_batch_statistics()

    def needs_mean(self) -> bool:
        return self.uses_batch_statistics()

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        return self.batch_normalizer(mean, var, count)

    def batch_normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BN's ``(s, t)`` (:meth:`normalizer`, also the BN branch of derived layers)."""
        batch_mean, batch_var = self.batch_statistics(mean, var, count)
        return standardize(batch_mean, batch_var, self.eps)

    @property
    def bn_coefficients(self) -> bool:
        """Whether the class keeps BN's own normalizer and no gate (False for the
        BN-derived IEBN and BIN); a TorchScript constant."""
        cls = type(self)
        return cls.normalizer is BatchNorm.normalizer and cls.gates is NormBase.gates

    def is_plain(self) -> bool:
        """Whether this layer computes plain BN: no noise attack, no gate and BN's own
        normalizer (False for the BN-derived IEBN and BIN, whatever their parameters)."""
        return self.noise is None and self.bn_coefficients

    def running_affine(
        self, params: Params | None = None
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
        running_mean, running_var = self.running_mean, self.running_var
        if self.uses_batch_statistics() or not self.is_plain():
            return None
        assert running_mean is not None and running_var is not None  # not batch statistics
        self.check_eps()
        params = self.coefficient_params() if params is None else params
        weight, bias = params.get("weight"), params.get("bias")
        scale = torch.rsqrt(running_var + self.eps)
        if weight is not None:
            scale = scale * weight
        mean = running_mean
        if bias is None:
            return scale, -(mean * scale)
        if self.frozen_stats:
            return scale, bias - mean * scale
        return scale, torch.addcmul(bias, mean, scale, value=-1)

    def coefficients(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        affine = self.running_affine(params)
        if affine is None:
            return self.affine_coefficients(mean, var, params, count)
        scale, shift = affine
        return scale.to(mean.dtype).expand(mean.shape), shift.to(mean.dtype).expand(mean.shape)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`NormBase.normalize`; a frozen plain BN computes ``x * scale + shift``
        in two roundings, exactly as torchvision's ``FrozenBatchNorm2d``."""
        affine = self.running_affine() if self.frozen_stats else None
        if affine is None:
            return self.affine_forward(x)
        self.check_input(x)
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale, shift = affine
        return x * scale.to(x.dtype).reshape(shape) + shift.to(x.dtype).reshape(shape)

    def start_from_bn(self) -> str:
        """Nothing to do: BN computes what the BN it replaces computes (exact)."""
        return "exact"


@register_norm("in", aliases=("instancenorm", "instance"), twin=TorchTwin("in"))
class InstanceNorm(BatchStatistics, NormBase):
    """Instance normalization (Ulyanov et al. 2016): each (n, c) uses its own statistics.

    Follows :class:`torch.nn.InstanceNorm1d/2d/3d` in everything but one deliberate
    default: ``affine`` is True, so that it drops into a network in place of BN (pass
    ``affine=False`` for torch's default). As torch's: unbatched inputs ``(C, L)``,
    ``(C, H, W)``, ``(C, D, H, W)`` are taken; it normalizes with the input's statistics
    in training and whenever ``track_running_stats`` is False, and then moves existing
    running buffers towards the batch average of the means and of the unbiased variances
    with weight ``momentum`` (``None`` counts as 0 and ``num_batches_tracked`` is never
    advanced, as torch's ``instance_norm`` does); in eval with ``track_running_stats`` it
    uses the running buffers. Without per-channel tensors it takes any channel count, with
    torch's warning.
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
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, affine, bias=bias, device=device, dtype=dtype, backend=backend
        )
        self.init_batch_statistics(
            num_features, momentum, track_running_stats, None, device=device, dtype=dtype
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """torch's rule for checkpoints without a version: running statistics given to a
        layer that does not track them are an error (and are dropped)."""
        keys = [prefix + k for k in ("running_mean", "running_var") if prefix + k in state_dict]
        if local_metadata.get("version", None) is None and not self.track_running_stats and keys:
            error_msgs.append(
                f"Unexpected running stats buffer(s) {' and '.join(map(repr, keys))} for "
                f"{type(self).__name__} with track_running_stats=False; remove these keys "
                "from state_dict, or build the layer with track_running_stats=True"
            )
            for key in keys:
                state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )

    def input_ndims(self) -> list[int]:
        """Unbatched (C, *) or batched (N, C, *) inputs, as torch's InstanceNorm."""
        return [self.dim + 1, self.dim + 2]

    def uses_batch_statistics(self) -> bool:
        """Whether it normalizes with the input's own statistics (torch's
        ``use_input_stats = training or not track_running_stats``); not when frozen by
        :func:`normlab.freeze_norm`."""
        return (self.training and not self.frozen_stats) or not self.track_running_stats

    def moves_running_stats(self) -> bool:
        """torch's ``instance_norm`` moves the buffers, when there are any, whenever it
        uses the input's statistics (also in eval with ``track_running_stats`` switched
        off after construction)."""
        return (
            self.uses_batch_statistics()
            and self.running_mean is not None
            and self.update_running_stats
            and not is_replaying()
        )

    def step_factor(self) -> float:
        """``momentum`` (``None``: 0); ``num_batches_tracked`` is not advanced (torch)."""
        return 0.0 if self.momentum is None else self.momentum

    def check_channels(self, x: torch.Tensor, channel_dim: int) -> None:
        self.check_channel_state(x, channel_dim)
        warnings.warn(
            f"input's size at dim={channel_dim} does not match num_features. You can "
            "silence this warning by not passing in num_features, which is not used "
            "because affine=False",
            stacklevel=4,
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.dim + 1:  # unbatched (C, *), as torch's InstanceNorm
            return self.affine_forward(x.unsqueeze(0)).squeeze(0)
        return self.affine_forward(x)

    def needs_variance(self) -> bool:
        return self.uses_batch_statistics()

    def needs_mean(self) -> bool:
        return self.uses_batch_statistics()

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        if not self.uses_batch_statistics():
            running_mean, running_var = self.running_mean, self.running_var
            if running_mean is None or running_var is None:
                raise RuntimeError(
                    f"{self.layer_name}: expected running_mean and running_var to be "
                    "defined when use_input_stats is false (track_running_stats=True was "
                    "set after construction without buffers)"
                )
            return standardize(running_mean.to(mean.dtype), running_var.to(mean.dtype), self.eps)
        assert var is not None  # instance statistics read the variance
        check_instance_statistics(self.layer_name, count, True)
        if self.moves_running_stats():
            self._update_running_stats(mean, var, 1, count)
        return standardize(mean, var, self.eps)


class ChannelGroupNorm(NormBase):
    """What LN and GN share with their torch twin :class:`torch.nn.GroupNorm`: any input
    of shape (N, C, *) whatever the layer's ``dim`` (which only names its registry form),
    channels divisible by ``num_groups``, torch's ValueError when a group's statistics
    would come from one value in a batch of one (N * C / G * M = 1, in training and eval),
    and torch's attribute name ``num_channels``."""

    num_groups: int = 1

    @property
    def num_channels(self) -> int:
        """C, under torch's GroupNorm name."""
        return self.num_features

    def input_ndims(self) -> None:
        return None

    def check_input(self, x: torch.Tensor, channel_dim: int = 1) -> None:
        self.check_layout(x, channel_dim)
        n, c = x.shape[0], x.shape[1]
        if n * c // self.num_groups * spatial_size(x) == 1:
            raise ValueError(
                f"{self.layer_name}: expected more than 1 value per channel when "
                f"training, got input size {shape_text(x)} (one value per group in a "
                "batch of one, as torch's GroupNorm refuses)"
            )

    def check_channels(self, x: torch.Tensor, channel_dim: int) -> None:
        self.check_channel_state(x, channel_dim)
        if x.shape[channel_dim] % self.num_groups != 0:
            raise NormInputError(
                f"{self.layer_name} expected a number of channels divisible by "
                f"num_groups={self.num_groups}, got an input of shape {shape_text(x)}"
            )


@register_norm("ln", aliases=("layernorm", "layer"), twin=TorchTwin("gn", groups=1))
class LayerNorm(ChannelGroupNorm):
    """Layer normalization (Ba et al. 2016) over (C, *) with a per-channel affine.

    Each sample is normalized with the statistics of all its channels and positions; the
    scale and shift are per channel, so it equals ``torch.nn.GroupNorm(1, C)`` (its torch
    twin, with the same arguments after C), not ``torch.nn.LayerNorm`` over the last axes.
    """

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        assert var is not None  # LN statistics read the variance
        layer_mean, layer_var = layer_moments(mean, var)
        return standardize(layer_mean, layer_var, self.eps)


@register_norm(
    "gn",
    aliases=("groupnorm", "group"),
    twin=TorchTwin("gn", groups=2, kwargs={"num_groups": 2}),
    test_variants={"": {"num_groups": 2}},
)
class GroupNorm(ChannelGroupNorm):
    """Group normalization (Wu & He 2018): statistics over groups of consecutive channels.

    As :class:`torch.nn.GroupNorm` (arguments, checks, exception types, any (N, C, *)
    input), except for the argument order: C comes first, as for every normlab norm
    (``create_norm(name, C)``), and ``num_groups`` second.

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
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, affine, bias=bias, device=device, dtype=dtype, backend=backend
        )
        self.num_groups = default_num_groups(self.num_features, num_groups)

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        assert var is not None  # GN statistics read the variance
        group_mean, group_var = group_moments(mean, var, self.num_groups)
        return standardize(group_mean, group_var, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_groups={self.num_groups}"


def default_num_groups(num_features: int, num_groups: int | None) -> int:
    """``num_groups``, checked to divide C; ``None`` gives ``gcd(32, C)``."""
    if num_groups is None:
        return math.gcd(32, num_features)
    if operator.index(num_groups) < 1 or num_features % num_groups:
        raise NumGroupsError(
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
