"""The statistics-sync contract between the norms and :mod:`normlab.distributed`.

A layer that pools its (N, C) moments over the samples of a batch (BN, IEBN, BIN, SN with BN
among its normalizers) can pool them over processes too: it calls its ``statistics_sync``
hook, when one is set, with its (1, C) batch statistics. ``normlab.distributed`` supplies
the hook (:class:`normlab.distributed.StatisticsSync`) and sets it on every layer that
satisfies :class:`SyncableNorm` (:func:`normlab.distributed.to_sync`). The norms never
import ``normlab.distributed`` or ``torch.distributed`` (DESIGN.md's dependency direction):
both sides name only these two protocols.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["StatisticsSyncFn", "SyncableNorm"]


class StatisticsSyncFn(Protocol):
    """The hook a layer calls to pool its batch statistics with those of other processes."""

    def __call__(
        self, mean: torch.Tensor, var: torch.Tensor, samples: int
    ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """Merge this process's ``(mean, var)`` of ``samples`` samples with the others'.

        Args:
            mean, var: this process's pooled batch mean and biased variance.
            samples: the samples behind them (0 for an empty batch, which still takes part).

        Returns:
            The pooled mean and biased variance over every process (differentiable with
            respect to ``mean`` and ``var``) and the total sample count (a tensor when it
            was counted across processes).

        Shape:
            - mean, var and the pooled statistics: (1, C).
        """
        ...


@runtime_checkable
class SyncableNorm(Protocol):
    """A layer :func:`normlab.distributed.to_sync` can hand a :class:`StatisticsSyncFn`.

    Attributes:
        pools_batch: whether its statistics pool over the samples of a batch (only then is
            there anything to pool over processes).
        virtual_batch_size: ``None``, or the sub-batch size its statistics pool over (which
            does not combine with a sync).
        statistics_sync: the hook, or ``None`` for local statistics.
    """

    virtual_batch_size: int | None
    statistics_sync: StatisticsSyncFn | None

    @property
    def pools_batch(self) -> bool:
        """Whether the layer pools statistics over the samples of a batch."""
        ...
