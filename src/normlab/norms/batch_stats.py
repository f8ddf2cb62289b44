"""Batch statistics shared by every layer that pools over samples (BN, IEBN, SN, BIN).

One place decides, per forward, which statistics the BN part of a layer uses:

- training, or eval without running statistics: the (N, C) moments pooled over the batch
  (over consecutive sub-batches when ``virtual_batch_size`` is set; over the batches of all
  processes when ``statistics_sync`` is set), with the running
  statistics updated as in :class:`torch.nn.BatchNorm2d` (``momentum=None`` = cumulative
  average; ``running_var`` tracks the unbiased batch variance);
- eval with running statistics: ``running_mean`` and ``running_var``.

With virtual batches the running statistics move towards the average over sub-batches of
their means and unbiased variances, as averaging per-device buffers would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.functional import (
    batch_moments,
    is_replaying,
    spatial_size,
    statistics_dtype,
    virtual_batch_moments,
)
from normlab.norms.protocols import StatisticsSyncFn

__all__ = ["BatchStatistics", "add_sums", "pool_sums", "unbiased_variance"]


class BatchStatistics(nn.Module):
    """Mixin owning ``running_mean``, ``running_var``, ``num_batches_tracked`` and the pooling.

    Args:
        num_features: C.
        momentum: running-statistics momentum (PyTorch convention); ``None`` for a
            cumulative average.
        track_running_stats: keep running statistics and use them in eval.
        virtual_batch_size: pool statistics over consecutive sub-batches of this many
            samples in training (``None``: the whole batch).

    Attributes:
        update_running_stats: when False, training uses batch statistics without moving
            the running ones (SN's ``using_moving_average=False``);
            :func:`normlab.update_norm_stats` switches it on while it re-estimates them.
        sums_running_stats: when True, training adds each batch's weighted mean and second
            moment to the running buffers instead of moving them (the authors' SN with
            ``using_moving_average=False``; :func:`normlab.update_norm_stats`), see
            :meth:`finish_batch_average`.
        summed_weight: while a batch average is gathered, the total weight summed so far.
        pools_batch: whether the layer pools statistics over the samples of a batch (and so
            can pool them over processes too); False for instance normalization.
        statistics_sync: ``None``, or a :class:`~normlab.norms.protocols.StatisticsSyncFn`
            ``sync(mean, var, samples) -> (mean, var, samples)`` that pools the (1, C) batch
            statistics of ``samples`` samples with those of other processes (set by
            :func:`normlab.distributed.to_sync`; this module never imports
            ``torch.distributed``). A layer with this mixin is a
            :class:`~normlab.norms.protocols.SyncableNorm`.
    """

    if TYPE_CHECKING:  # for the type checker only: TorchScript reads class annotations
        running_mean: torch.Tensor | None
        running_var: torch.Tensor | None
        num_batches_tracked: torch.Tensor | None
        num_features: int
        eps: float

        @property
        def layer_name(self) -> str: ...

        def empty_output(self, x: torch.Tensor) -> torch.Tensor: ...

        @property
        def pools_batch(self) -> bool:
            """Whether the layer pools statistics over the samples of a batch."""

    else:  # a class constant at run time (SwitchNorm overrides it with a property)
        pools_batch = True

    frozen_stats = False  # set by normlab.freeze_norm: running statistics in training too
    _version = 2  # as torch's _NormBase: version 2 added num_batches_tracked

    def init_batch_statistics(
        self,
        num_features: int,
        momentum: float | None,
        track_running_stats: bool,
        virtual_batch_size: int | None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if virtual_batch_size is not None and int(virtual_batch_size) < 1:
            raise ValueError(f"virtual_batch_size must be >= 1, got {virtual_batch_size}")
        self.momentum = momentum
        self.track_running_stats = bool(track_running_stats)
        self.virtual_batch_size = None if virtual_batch_size is None else int(virtual_batch_size)
        self.update_running_stats = True
        self.sums_running_stats = False
        self.summed_weight: torch.Tensor | None = None
        self.statistics_sync: StatisticsSyncFn | None = None
        if self.track_running_stats:
            zeros = torch.zeros(num_features, device=device, dtype=dtype)
            self.register_buffer("running_mean", zeros)
            self.register_buffer("running_var", torch.ones_like(zeros))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def running_buffers(self) -> list[torch.Tensor | None]:
        """``running_mean``, ``running_var`` and ``num_batches_tracked`` (``None`` when
        untracked)."""
        return [self.running_mean, self.running_var, self.num_batches_tracked]

    def tracked_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``running_mean``, ``running_var`` and ``num_batches_tracked`` of a layer that has
        them (an ``AssertionError`` for one built without them)."""
        mean, var, counter = self.running_mean, self.running_var, self.num_batches_tracked
        assert mean is not None and var is not None and counter is not None, "untracked layer"
        return mean, var, counter

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked (when tracked, as torch)."""
        if self.track_running_stats and self.running_mean is not None:
            running_mean, running_var, counter = self.tracked_buffers()
            running_mean.zero_()
            running_var.fill_(1.0)
            counter.zero_()

    def uses_batch_statistics(self) -> bool:
        """Whether the BN part pools the current batch: in training, and in eval when the
        layer has no running-statistics buffers. As in torch, the buffers decide, not the
        flag: a layer built with them and switched to ``track_running_stats=False`` still
        normalizes with them in eval. A layer frozen by :func:`normlab.freeze_norm` uses
        them in training too."""
        return (self.training and not self.frozen_stats) or self.running_mean is None

    def moves_running_stats(self) -> bool:
        """Whether this forward moves the running statistics (training, tracked, enabled,
        and not a replay of a forward for a double backward: :func:`is_replaying`)."""
        return (
            self.training
            and self.track_running_stats
            and self.running_mean is not None
            and self.update_running_stats
            and not self.frozen_stats
            and not is_replaying()
        )

    def step_factor(self) -> float | torch.Tensor:
        """Count a training step in ``num_batches_tracked`` and return the new batch's
        weight in the running statistics: ``momentum``, or ``1 / num_batches_tracked``
        (cumulative average) when ``momentum`` is None -- torch's BatchNorm."""
        counter, running_mean = self.num_batches_tracked, self.running_mean
        assert counter is not None and running_mean is not None  # only called when tracked
        counter.add_(1)
        if self.momentum is None:
            return 1.0 / counter.to(running_mean.dtype)
        return self.momentum

    def check_eps(self) -> None:
        """torch's batch-norm rule: ``eps`` must be positive when normalizing with batch
        statistics and non-negative with running ones (``ValueError``, at forward time)."""
        if self.uses_batch_statistics():
            if self.eps <= 0:
                raise ValueError(
                    f"{self.layer_name}: batch_norm eps must be positive during "
                    f"training, but got {self.eps}"
                )
        elif self.eps < 0:
            raise ValueError(
                f"{self.layer_name}: batch_norm eps must be non-negative, but got {self.eps}"
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
        """Load version-1 checkpoints (before ``num_batches_tracked``) as torch does: a
        missing counter keeps the layer's own (or 0)."""
        key = prefix + "num_batches_tracked"
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            if key not in state_dict:
                counter = self.num_batches_tracked
                usable = counter is not None and counter.device != torch.device("meta")
                state_dict[key] = counter if usable else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )

    def batch_statistics(
        self, mean: torch.Tensor, var: torch.Tensor | None, count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The BN mean and variance to normalize with, broadcastable against (N, C).

        Args:
            mean, var: per-(n, c) moments; ``var`` may be None only in eval with running
                statistics.
            count: elements behind each (n, c) pair (M).
        """
        self.check_eps()
        running_mean, running_var = self.running_mean, self.running_var
        if not self.uses_batch_statistics():
            assert running_mean is not None and running_var is not None  # as decided above
            return (
                running_mean.to(mean.dtype).unsqueeze(0),
                running_var.to(mean.dtype).unsqueeze(0),
            )
        assert var is not None  # batch statistics read the variance
        n = mean.shape[0]
        virtual = self.virtual_batch_size
        group = n if virtual is None else min(virtual, n)
        if group * count <= 1 or (n % group != 0 and (n % group) * count <= 1):
            raise ValueError(
                f"{self.layer_name}: expected more than 1 value per channel when "
                f"training with batch statistics, got {n} sample(s) x {count} value(s)"
                + ("" if virtual is None else f" in sub-batches of {virtual}")
                + "; use a larger batch, eval mode, or a norm without batch statistics"
            )
        if self.statistics_sync is not None and virtual is not None:
            raise ValueError(
                f"{self.layer_name}: virtual batches and cross-process statistics do not "
                "combine; set virtual_batch_size=None or drop the sync"
            )
        samples: int | torch.Tensor = group  # a tensor when counted across processes
        if group == n:
            batch_mean, batch_var = batch_moments(mean, var)
            if not torch.jit.is_scripting() and self.statistics_sync is not None:
                batch_mean, batch_var, samples = self.statistics_sync(batch_mean, batch_var, n)
        else:
            batch_mean, batch_var = virtual_batch_moments(mean, var, group)
        batch_var = self.batch_variance(
            batch_var, _values_per_row(batch_var.shape[0], samples, count, batch_var), count
        )
        if self.moves_running_stats():
            self._update_running_stats(batch_mean, batch_var, samples, count)
        return batch_mean, batch_var

    def empty_forward(self, x: torch.Tensor) -> torch.Tensor:
        """An empty input still takes part in synced batch statistics, with no samples: the
        other processes' all-gather (and, in backward, its all-reduce) needs every process,
        and the running statistics move here as they do there."""
        y = self.empty_output(x)
        if self.pools_batch:
            self.check_eps()
        if not torch.jit.is_scripting():
            if self.statistics_sync is not None and self.uses_batch_statistics():
                return self.synced_empty_forward(x, y, self.statistics_sync)
        if self.pools_batch and self.moves_running_stats():
            self.step_factor()  # torch counts an empty training batch, moving nothing
        return y

    def synced_empty_forward(
        self, x: torch.Tensor, y: torch.Tensor, sync: StatisticsSyncFn
    ) -> torch.Tensor:
        """:meth:`empty_forward`'s part in cross-process statistics through ``sync``
        (Python only)."""
        count = spatial_size(x)
        nothing = x.new_zeros((1, self.num_features), dtype=statistics_dtype(x))
        nothing.requires_grad_(torch.is_grad_enabled())  # so that backward reaches the sync
        mean, var, total = sync(nothing, nothing, 0)
        if self.moves_running_stats() and total * count > 1:
            self._update_running_stats(mean, var, total, count)
        return y + 0.0 * (mean.sum() + var.sum()).to(y.dtype)

    def batch_variance(
        self, var: torch.Tensor, values: int | torch.Tensor, count: int
    ) -> torch.Tensor:
        """The BN variance to normalize with, from the biased pooled ``var`` of ``values``
        elements per row (``count`` per (n, c) pair): the biased one, as torch's BatchNorm."""
        return var

    def running_variance(self, var: torch.Tensor, values: int | torch.Tensor) -> torch.Tensor:
        """What ``running_var`` tracks for a BN variance ``var`` over ``values`` elements:
        the unbiased variance ``var * values / (values - 1)``, as torch's BatchNorm."""
        return unbiased_variance(var, values)

    def summing_weight(self, values: int | torch.Tensor) -> int | torch.Tensor:
        """Weight of a batch of ``values`` elements per channel in summed running statistics:
        its number of values, so that the sums pool every value equally."""
        return values

    def _update_running_stats(
        self,
        batch_mean: torch.Tensor,
        batch_var: torch.Tensor,
        group: int | torch.Tensor,
        count: int,
    ) -> None:
        """Move (or, when :attr:`sums_running_stats`, add to) the running statistics;
        ``group`` samples stand behind each pooled row (a tensor when they were counted
        across processes)."""
        running_mean, running_var = self.running_mean, self.running_var
        assert running_mean is not None and running_var is not None  # moves_running_stats
        with torch.no_grad():
            factor = self.step_factor()
            values = _values_per_row(batch_mean.shape[0], group, count, batch_var)
            if batch_mean.shape[0] > 1 and isinstance(group, int):  # sub-batches: one row each
                batch_mean, batch_var = batch_mean[::group], batch_var[::group]
                if not isinstance(values, int):
                    values = values[::group]
            batch_mean, batch_var = batch_mean.detach(), batch_var.detach()
            if self.sums_running_stats:
                weight = _as_tensor(self.summing_weight(values), batch_var)
                weight = weight.expand(batch_mean.shape[0], 1)
                add_sums(running_mean, running_var, batch_mean, batch_var, weight)
                if self.summed_weight is not None:
                    self.summed_weight = self.summed_weight + weight.sum()
            else:
                new_var = self.running_variance(batch_var, values).mean(0)
                _lerp(running_mean, batch_mean.mean(0).to(running_mean.dtype), factor)
                _lerp(running_var, new_var.to(running_var.dtype), factor)

    def start_batch_average(self) -> None:
        """Zero the running statistics and start summing them (see :func:`finish_batch_average`)."""
        running_mean, running_var, counter = self.tracked_buffers()
        running_mean.zero_()
        running_var.zero_()
        counter.zero_()
        self.summed_weight = torch.zeros((), dtype=torch.float64, device=running_var.device)

    @torch.no_grad()
    def finish_batch_average(self) -> None:
        """Turn the sums gathered since :func:`start_batch_average` into the pooled statistics.

        With sums ``S1 = sum_b w_b mean_b``, ``S2 = sum_b w_b (var_b + mean_b^2)`` and
        ``W = sum_b w_b``: ``running_mean = S1 / W`` and
        ``running_var = running_variance(S2 / W - running_mean^2, W)`` -- the variance of all
        the batches' values pooled (law of total variance), unbiased by default.
        """
        running_mean, running_var, _ = self.tracked_buffers()
        assert self.summed_weight is not None, "finish_batch_average before start_batch_average"
        weight = self.summed_weight.to(running_var.dtype)
        self.summed_weight = None
        if float(weight) == 0:  # no batch reached this layer
            self.reset_running_stats()
            return
        pool_sums(running_mean, running_var, weight, self.running_variance)


def add_sums(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor,
) -> None:
    """In place: ``running_mean += sum_r w_r mean_r`` and
    ``running_var += sum_r w_r (var_r + mean_r^2)`` over the rows ``r`` of the (R, C)
    ``mean``/``var`` with (R, 1) weights (the sums :func:`pool_sums` turns into moments)."""
    with torch.no_grad():
        running_mean.add_((weight * mean).sum(0).to(running_mean.dtype))
        running_var.add_((weight * (var + mean**2)).sum(0).to(running_var.dtype))


def unbiased_variance(var: torch.Tensor, values: int | torch.Tensor) -> torch.Tensor:
    """Bessel's correction: ``var * values / (values - 1)`` for a biased ``var``."""
    if isinstance(values, int):  # the number (a TorchScript type refinement)
        return var * (values / (values - 1))
    return var * (values / (values - 1))


@torch.no_grad()
def pool_sums(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor,
    running_variance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = unbiased_variance,
) -> None:
    """In place: ``running_mean = S1 / W`` and
    ``running_var = running_variance(S2 / W - running_mean^2, W)`` for buffers holding the
    sums ``S1``, ``S2`` of total weight ``W`` > 0."""
    running_mean.div_(weight)
    running_var.copy_(running_variance(running_var / weight - running_mean**2, weight))


def _values_per_row(
    rows: int, group: int | torch.Tensor, count: int, like: torch.Tensor
) -> int | torch.Tensor:
    """Elements behind each row's statistics: a number for one pooled row (a tensor when
    counted across processes), else a (rows, 1) tensor, each row of a sub-batch of
    ``group`` samples (the last one possibly smaller)."""
    if not isinstance(group, int):  # one row, counted across processes
        return group * count
    if rows == 1:
        return group * count
    sizes = [min(group, rows - (i - i % group)) * count for i in range(rows)]
    return torch.tensor(sizes, dtype=like.dtype, device=like.device).unsqueeze(1)


def _as_tensor(value: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``torch.as_tensor(value)`` with ``like``'s dtype and device."""
    if isinstance(value, int):  # the number (a TorchScript type refinement)
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _lerp(buffer: torch.Tensor, end: torch.Tensor, weight: float | torch.Tensor) -> None:
    """``buffer.lerp_(end, weight)`` for a number or tensor weight."""
    if isinstance(weight, float):  # the number (a TorchScript type refinement)
        buffer.lerp_(end, weight)
    else:
        buffer.lerp_(end, weight)
