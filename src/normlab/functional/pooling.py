"""Exact pooling of equal-count (N, C) moments into BN, LN, GN and virtual-batch statistics.

Pooled moments use the parallel-variance rule
``var_pool = mean(var + (mean - mean_pool)^2)``, exact for groups of equal size and
numerically stable (DESIGN.md). Every function returns statistics broadcastable against
the (N, C) inputs, so coefficient functions can combine them elementwise.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "batch_moments",
    "group_moments",
    "layer_moments",
    "pool_moments",
    "virtual_batch_moments",
]


def _pool(mean: torch.Tensor, var: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The parallel-variance rule in plain differentiable ops (see :func:`pool_moments`)."""
    pooled_mean = mean.mean(dim, keepdim=True)
    return pooled_mean, (var + (mean - pooled_mean).square()).mean(dim, keepdim=True)


class _PoolMoments(torch.autograd.Function):
    """:func:`pool_moments` with a hand-written backward that saves only ``mean`` and the
    pooled mean (the input ``var`` is not needed): with ``k`` groups pooled,

        d mean_i = d mean_pool / k + d var_pool * 2 * (mean_i - mean_pool) / k
        d var_i  = d var_pool / k

    The backward is written in differentiable torch ops, so higher-order gradients work.
    """

    @staticmethod
    def forward(
        ctx: Any, mean: torch.Tensor, var: torch.Tensor, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled_mean, pooled_var = _pool(mean, var, dim)
        ctx.groups = mean.numel() // pooled_mean.numel()
        ctx.save_for_backward(mean, pooled_mean)
        return pooled_mean, pooled_var

    @staticmethod
    def backward(
        ctx: Any, grad_mean: torch.Tensor, grad_var: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        mean, pooled_mean = ctx.saved_tensors
        k = ctx.groups
        d_mean = d_var = None
        if ctx.needs_input_grad[0]:
            d_mean = (mean - pooled_mean).mul_(grad_var * (2.0 / k)).add_(grad_mean / k)
        if ctx.needs_input_grad[1]:
            d_var = (grad_var / k).expand_as(mean)
        return d_mean, d_var, None


def pool_moments(
    mean: torch.Tensor, var: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool equal-count moments over ``dim`` (kept as size-1 axes).

    Args:
        mean: per-group means.
        var: per-group biased variances, same shape as ``mean``.
        dim: the axis whose groups are merged (in eager mode also a tuple of axes).

    Returns:
        ``(mean_pool, var_pool)`` with ``dim`` reduced to size 1.

    Under ``torch.jit.trace`` (and so the TorchScript-based ONNX exporter), which would
    record the custom autograd Function as an opaque Python op, the plain ops are traced;
    under ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``), which take custom
    Functions only with ``setup_context`` and a vmap rule, the plain ops run; so they do
    under ``torch.jit.script``, which cannot compile a custom autograd Function.
    """
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing() or torch._C._are_functorch_transforms_active():
            return _pool(mean, var, dim)
        pooled: tuple[torch.Tensor, torch.Tensor] = _PoolMoments.apply(mean, var, dim)
        return pooled
    return _pool(mean, var, dim)


def batch_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BN statistics: (N, C) moments pooled over the batch. Shape: (1, C)."""
    return pool_moments(mean, var, 0)


def layer_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LN statistics: (N, C) moments pooled over channels. Shape: (N, 1)."""
    return pool_moments(mean, var, 1)


def group_moments(
    mean: torch.Tensor, var: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """GN statistics: moments pooled over ``num_groups`` consecutive channel groups.

    Returns:
        ``(mean, var)`` of shape (N, C), each channel carrying its group's statistics.
    """
    n, c = mean.shape
    shape = (n, num_groups, c // num_groups)
    group_mean, group_var = pool_moments(mean.reshape(shape), var.reshape(shape), 2)
    return group_mean.expand(shape).reshape(n, c), group_var.expand(shape).reshape(n, c)


def virtual_batch_moments(
    mean: torch.Tensor, var: torch.Tensor, virtual_batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BN statistics of consecutive sub-batches of ``virtual_batch_size`` samples.

    This is how one device reproduces the SN paper's (GPUs, samples per GPU) settings: each
    sub-batch is normalized with its own statistics. A last, smaller sub-batch is pooled on
    its own.

    Returns:
        ``(mean, var)`` of shape (N, C), each sample carrying its sub-batch's statistics.
    """
    n = mean.shape[0]
    full = (n // virtual_batch_size) * virtual_batch_size
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
    if full > 0:
        shape = (full // virtual_batch_size, virtual_batch_size, mean.shape[1])
        pm, pv = pool_moments(mean[:full].reshape(shape), var[:full].reshape(shape), 1)
        pieces.append((pm.expand(shape).reshape(full, -1), pv.expand(shape).reshape(full, -1)))
    if full < n:
        pm, pv = batch_moments(mean[full:], var[full:])
        pieces.append((pm.expand(n - full, -1), pv.expand(n - full, -1)))
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
