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


def instance_moments_nograd(
    x: torch.Tensor, *, with_var: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`instance_moments` without autograd, through torch's batch-norm statistics kernel.

    A contiguous (N, C, *) tensor viewed as (1, N*C, M) has one "channel" per (n, c) pair,
    so ``torch.batch_norm_update_stats`` computes every per-(n, c) mean and biased variance
    in one vectorized two-pass reduction with no temporaries (``torch.var_mean`` over the
    trailing axes is several times slower on CPU). Other layouts fall back to
    :func:`instance_moments`.
    """
    if not (with_var and x.is_contiguous() and x.dim() > 2):
        with torch.no_grad():
            return instance_moments(x, with_var=with_var)
    n, c = x.shape[:2]
    mean, var = torch.batch_norm_update_stats(x.reshape(1, n * c, -1), None, None, 0.0)
    dtype = statistics_dtype(x)
    return mean.reshape(n, c).to(dtype), var.reshape(n, c).to(dtype)
