"""Cross-process batch statistics: BN, IEBN, SN and BIN pooled over every process's batch.

Each process pools its own (N, C) moments into (1, C) batch statistics as usual; with sync
on, those statistics and their sample counts are all-gathered and merged by the
count-weighted parallel-variance rule (DESIGN.md: sync acts on (N, C)-sized tensors only,
never on x):

    mean = sum_r w_r * mean_r,   var = sum_r w_r * (var_r + (mean_r - mean)^2),
    w_r = samples_r / sum_r samples_r

The gather is differentiable: its backward sums the gradient of the gathered statistics
over processes and hands each process the slice of its own, so every process's input and
parameters get the gradient of the summed loss, exactly as in one process with the whole
batch (data-parallel training then averages parameter gradients as usual).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from normlab.norms.protocols import StatisticsSyncFn, SyncableNorm

__all__ = ["StatisticsSync", "all_gather_with_grad", "average_running_stats", "to_sync"]


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, tensor.contiguous(), group=group)
        return torch.stack(pieces)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _SumOwnSlice.apply(grad, ctx.group), None


class _SumOwnSlice(torch.autograd.Function):
    """The gather's backward: the sum over processes of their gradients for this process's
    slice. Its own backward is the gather again, so gradients of every order (a gradient
    penalty, a double backward) cross processes exactly."""

    @staticmethod
    def forward(ctx: Any, grad: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total[dist.get_rank(group)]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllGather.apply(grad, ctx.group), None


def all_gather_with_grad(tensor: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """Stack ``tensor`` from every process of ``group`` (rank order) along a new first axis.

    Differentiable: the gradient reaching a process's own tensor is the sum over all
    processes of the gradients of its slice.

    Shape:
        - tensor: any; output: (world_size, *tensor.shape).
    """
    gathered: torch.Tensor = _AllGather.apply(tensor, group)
    return gathered


class StatisticsSync(StatisticsSyncFn):
    """The ``statistics_sync`` hook of a layer (a
    :class:`~normlab.norms.protocols.StatisticsSyncFn`): pools (1, C) batch statistics over
    the processes of ``process_group`` (``None``: the default group).

    A layer whose process group has one member, or that runs while ``torch.distributed``
    is not initialized, keeps its local statistics.
    """

    def __init__(self, process_group: ProcessGroup | None = None) -> None:
        self.process_group = process_group

    def __call__(
        self, mean: torch.Tensor, var: torch.Tensor, samples: int
    ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """Merge this process's ``(mean, var)`` of ``samples`` samples with the others'.

        Returns the pooled mean and variance, shape (1, C), and the total sample count.
        """
        group = self.process_group
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return mean, var, samples
        counts = mean.new_full(mean.shape, float(samples))
        gathered = all_gather_with_grad(torch.cat([mean, var, counts]), group)
        means, variances, counts = gathered[:, 0], gathered[:, 1], gathered[:, 2].detach()
        total = counts.sum(0)
        weights = counts / total
        pooled_mean = (weights * means).sum(0, keepdim=True)
        pooled_var = (weights * (variances + (means - pooled_mean).square())).sum(0, keepdim=True)
        return pooled_mean, pooled_var, total[0]

    def __getstate__(self) -> dict[str, None]:
        """Process groups do not pickle; a pickled sync falls back to the default group."""
        return {"process_group": None}

    def __repr__(self) -> str:
        return f"StatisticsSync(process_group={self.process_group!r})"


def _pooling_layers(model: nn.Module) -> list[SyncableNorm]:
    """The layers whose statistics pool over the samples of a batch (BN, IEBN, BIN, SN
    with BN among its normalizers)."""
    return [m for m in model.modules() if isinstance(m, SyncableNorm) and m.pools_batch]


def to_sync(
    model: nn.Module, process_group: ProcessGroup | None = None, *, enabled: bool = True
) -> nn.Module:
    """Make every batch-statistics layer of ``model`` (BN, IEBN, SN, BIN) pool its batch
    statistics over the processes of ``process_group``; ``enabled=False`` undoes it.

    normlab's counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: layers stay
    where they are (no module is replaced, the state dict does not change), and it runs
    with any backend that has ``all_gather`` and ``all_reduce`` (gloo on CPU included).
    Layers with ``virtual_batch_size`` set refuse to sync (a ValueError names them).

    Returns:
        ``model`` itself.
    """
    layers = _pooling_layers(model)
    if enabled:
        virtual = [type(m).__name__ for m in layers if m.virtual_batch_size is not None]
        if virtual:
            raise ValueError(
                f"to_sync: {len(virtual)} layer(s) use virtual batches ({', '.join(virtual)}); "
                "virtual batches and cross-process statistics do not combine — call "
                "normlab.set_virtual_batch_size(model, None) first"
            )
    for layer in layers:
        layer.statistics_sync = StatisticsSync(process_group) if enabled else None
    return model


@torch.no_grad()
def average_running_stats(
    model: nn.Module, process_group: ProcessGroup | None = None
) -> nn.Module:
    """Average ``running_mean`` and ``running_var`` of every layer that has them (torch's
    norms included) over the processes of ``process_group``, e.g. before evaluating a
    model trained without sync.

    Returns:
        ``model`` itself.
    """
    if not dist.is_available() or not dist.is_initialized():
        return model
    world = dist.get_world_size(process_group)
    for layer in model.modules():
        for name in ("running_mean", "running_var"):
            buffer = getattr(layer, name, None)
            if isinstance(buffer, torch.Tensor):
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=process_group)
                buffer.div_(world)
    return model
