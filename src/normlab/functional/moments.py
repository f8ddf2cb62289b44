"""Per-(sample, channel) moments: the one big-tensor reduction every normalizer shares.

Every normalizer in normlab starts from ``mean[n, c]`` and the biased ``var[n, c]`` of an
``(N, C, *)`` tensor over its spatial axes (DESIGN.md, "moments -> coefficients -> affine").
Statistics are computed in float32 for float16/bfloat16 inputs and in the input's own dtype
otherwise.
"""

from __future__ import annotations

import torch

__all__ = [
    "instance_moments",
    "instance_moments_nograd",
    "spatial_dims",
    "spatial_size",
    "statistics_dtype",
]


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics of ``x`` are computed in: float32 for half types, else x's."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


def spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The axes after (N, C) that the per-(n, c) moments reduce over."""
    return tuple(range(2, x.dim()))


def spatial_size(x: torch.Tensor) -> int:
    """M, the number of elements behind each (n, c) pair."""
    size = 1
    for d in x.shape[2:]:
        size *= d
    return size


def instance_moments(
    x: torch.Tensor, *, with_var: bool = True
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


def instance_moments_nograd(
    x: torch.Tensor, *, with_var: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`instance_moments` without autograd, fast on CPU.

    For contiguous float32/float64 inputs the rows of the (N*C, M) view are reduced to
    ``sum(x)`` and a batched dot product ``sum(x*x)`` (no temporaries), and
    ``var = E[x^2] - mean^2``. That formula cancels badly when ``|mean| >> std``, so if any
    row has ``mean^2 > 100 * var`` all moments are recomputed with torch's two-pass
    batch-norm statistics kernel on the (1, N*C, M) view (one "channel" per (n, c)
    pair), which is also the path for half inputs. Other layouts fall back to
    :func:`instance_moments`.
    """
    if not (with_var and x.is_contiguous() and x.dim() > 2):
        with torch.no_grad():
            return instance_moments(x, with_var=with_var)
    n, c = x.shape[:2]
    if x.dtype in (torch.float32, torch.float64):
        rows = x.reshape(n * c, -1)
        mean = rows.sum(1).div_(rows.shape[1])
        var = torch.einsum("ns,ns->n", rows, rows).div_(rows.shape[1]).sub_(mean.square())
        if not bool((mean.square() > _CANCELLATION_LIMIT * var).any()):
            return mean.view(n, c), var.clamp_min_(0.0).view(n, c)
    mean, var = torch.batch_norm_update_stats(x.reshape(1, n * c, -1), None, None, 0.0)
    dtype = statistics_dtype(x)
    return mean.reshape(n, c).to(dtype), var.reshape(n, c).to(dtype)
