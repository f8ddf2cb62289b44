"""Per-(sample, channel) moments: the one big-tensor reduction every normalizer shares.

Every normalizer in normlab starts from ``mean[n, c]`` and the biased ``var[n, c]`` of an
``(N, C, *)`` tensor over its spatial axes (DESIGN.md, "moments -> coefficients -> affine").
Statistics are computed in float32 for float16/bfloat16 inputs and in the input's own dtype
otherwise.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "instance_moments",
    "instance_moments_nograd",
    "spatial_dims",
    "spatial_sums",
    "spatial_size",
    "statistics_dtype",
]


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics of ``x`` are computed in: float32 for half types, else x's."""
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return torch.float32
    return x.dtype


def spatial_dims(x: torch.Tensor) -> list[int]:
    """The axes after (N, C) that the per-(n, c) moments reduce over."""
    return list(range(2, x.dim()))


def spatial_size(x: torch.Tensor) -> int:
    """M, the number of elements behind each (n, c) pair."""
    size = 1
    for d in x.shape[2:]:
        size *= d
    return size


def instance_moments(
    x: torch.Tensor, with_var: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean and biased variance of ``x`` over its spatial axes.

    Args:
        x: input of shape (N, C, *) with at least one spatial axis.
        with_var: when False only the mean is computed and ``None`` is returned for var.

    Returns:
        ``(mean, var)``, each of shape (N, C) in :func:`statistics_dtype` of ``x``.

    Shape:
        - x: (N, C, *)
        - mean, var: (N, C)
    """
    dims = spatial_dims(x)
    dtype = statistics_dtype(x)
    if not with_var:
        return x.mean(dims, dtype=dtype), None
    var, mean = torch.var_mean(x.to(dtype), dim=dims, correction=0)
    return mean, var


_CANCELLATION_LIMIT = 100.0
"""Rows with mean^2 > this * var fall back to the two-pass kernel: there the one-pass
variance ``E[x^2] - mean^2`` would lose more than about 1e-5 of its relative precision in
float32."""


@functools.lru_cache(maxsize=32)
def unit_rows(rows: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(zeros, ones, empty, empty)`` for driving torch's batch-norm kernels row by row.

    The zeros and ones (length ``rows``) are the per-row mean 0 and scale 1 that turn those
    kernels into plain sums and affine maps; the two empty tensors receive the unused saved
    statistics. They are read-only inputs, made once per (rows, dtype, device) instead of
    on every call (on small maps the allocations cost as much as the kernels).
    """
    with torch.inference_mode(False), torch.no_grad():
        return (
            torch.zeros(rows, dtype=dtype, device=device),
            torch.ones(rows, dtype=dtype, device=device),
            torch.empty(0, dtype=dtype, device=device),
            torch.empty(0, dtype=dtype, device=device),
        )


def spatial_sums(
    grad: torch.Tensor, x: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S1 = sum(grad)`` and ``S2 = sum(grad * x)`` over the spatial axes per (n, c).

    For contiguous ``grad`` and ``x`` of dtype ``dtype`` both come from one pass of torch's
    batch-norm backward reduction over the (1, N*C, M) view with mean 0 and inverse std 1,
    whose "grad_weight" is then ``sum(grad * x)`` and whose "grad_bias" is ``sum(grad)``;
    no ``grad * x`` temporary is made. Other layouts and dtypes reduce ``grad * x``
    directly. Results are (N, C) tensors of dtype ``dtype``.
    """
    if not (
        grad.is_contiguous() and x.is_contiguous() and x.dtype == grad.dtype == dtype
    ):
        dims = spatial_dims(x)
        return grad.sum(dims, dtype=dtype), (grad * x).sum(dims, dtype=dtype)
    n, c = x.shape[:2]
    zeros, ones, _, _ = unit_rows(n * c, x.dtype, x.device)
    _, s2, s1 = torch.ops.aten.native_batch_norm_backward(
        grad.reshape(1, n * c, -1), x.reshape(1, n * c, -1), ones, None, None, zeros, ones,
        True, 0.0, [False, True, True],
    )
    return s1.view(n, c), s2.view(n, c)


def instance_moments_nograd(
    x: torch.Tensor, *, with_var: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`instance_moments` without autograd, fast on CPU.

    For contiguous float32/float64 inputs ``sum(x)`` and ``sum(x * x)`` come from one pass
    (:func:`spatial_sums` of ``x`` with itself) and ``var = E[x^2] - mean^2``. That formula
    cancels badly when ``|mean| >> std``, so if any row has ``mean^2 > 100 * var`` all
    moments are recomputed with torch's two-pass batch-norm statistics kernel on the
    (1, N*C, M) view (one "channel" per (n, c) pair), which is also the path for half
    inputs. Other layouts fall back to :func:`instance_moments`.
    """
    if not (with_var and x.is_contiguous() and x.dim() > 2):
        with torch.no_grad():
            return instance_moments(x, with_var=with_var)
    n, c = x.shape[:2]
    if x.dtype in (torch.float32, torch.float64):
        total, squares = spatial_sums(x, x, x.dtype)
        count = spatial_size(x)
        mean = total.div_(count)
        var = squares.div_(count).sub_(mean.square())
        if not bool((mean.square() > _CANCELLATION_LIMIT * var).any()):
            return mean, var.clamp_min_(0.0)
    mean, var = torch.batch_norm_update_stats(x.reshape(1, n * c, -1), None, None, 0.0)
    dtype = statistics_dtype(x)
    return mean.reshape(n, c).to(dtype), var.reshape(n, c).to(dtype)
