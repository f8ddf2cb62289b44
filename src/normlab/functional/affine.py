"""The shared op: ``y[n, c, ...] = A[n, c] * x[n, c, ...] + B[n, c]``.

``A`` and ``B`` come from a *coefficient function* ``coef(mean, var, *params) -> (A, B)``
evaluated on the per-(n, c) moments of ``x`` (DESIGN.md). Two backends:

- ``reference``: plain differentiable torch ops straight from the equations; autograd
  differentiates through the moments. Also the path taken under ``torch.compile``.
- ``fused``: :class:`AffineNormFunction`, a custom autograd Function that saves only ``x``
  and (N, C) tensors. Backward computes ``S1 = sum(g)`` and ``S2 = sum(g * x)`` per (n, c),
  back-propagates ``(S2, S1)`` through the small (N, C) coefficient graph with
  :func:`torch.autograd.grad` (the graph is retained, so an outer ``retain_graph=True``
  backward may run again), and writes ``dx = A*g + P*x + Q`` with
  ``P = 2*dvar/M`` and ``Q = dmean/M - P*mean`` (M = elements per (n, c)).

Higher-order gradients: when the fused backward itself is to be differentiated
(``torch.autograd.grad(..., create_graph=True)``, ``backward(create_graph=True)``), it
recomputes the forward from the saved ``x`` and parameters with the plain ops of the
reference backend, inside :func:`~normlab.functional.replaying` (so that running
statistics do not move a second time), and differentiates that graph instead; the
first-order backward is unchanged. Under a ``torch.func`` transform (``grad``, ``vmap``,
``jacrev``, ...) the plain-ops path runs, as under ``torch.compile``.

On CUDA, for contiguous float16/bfloat16/float32 inputs and when ``triton`` is importable,
the fused backend's big-tensor passes (moments, ``A*x + B``, the backward sums and ``dx``)
run as the Triton kernels of :mod:`normlab.functional.triton_kernels`
(:func:`triton_available`); ``triton`` is imported lazily, on the first CUDA call. Every
other case, and the reference backend, uses torch ops.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

from normlab.functional.backends import resolve_backend
from normlab.functional.moments import (
    instance_moments,
    instance_moments_nograd,
    spatial_size,
    spatial_sums,
    statistics_dtype,
    unit_rows,
)
from normlab.functional.replay import replaying
from normlab.functional.tracing import plain_ops_required

__all__ = [
    "AffineNormFunction",
    "CoefficientFn",
    "affine_norm",
    "apply_affine",
    "plain_moments",
    "triton_available",
]

CoefficientFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View an (N, C) tensor so that it broadcasts against an ``ndim``-dimensional input."""
    return t.reshape(list(t.shape) + [1] * (ndim - 2))


def apply_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``scale[n, c] * x + shift[n, c]`` in one pass, returned in ``x``'s dtype."""
    y = torch.addcmul(_per_channel(shift, x.dim()), _per_channel(scale, x.dim()), x)
    return y.to(x.dtype)


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _triton_kernels() -> ModuleType | None:
    """The Triton kernels module, or ``None`` (with one warning) if it cannot be imported."""
    try:
        from normlab.functional import triton_kernels  # optional dependency: triton
    except Exception as error:  # missing triton: silent; a broken install: say so once
        if getattr(error, "name", None) != "triton":
            warnings.warn(
                f"normlab: Triton kernels unavailable, using torch ops on CUDA ({error})",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    return triton_kernels


def _kernels() -> ModuleType:
    """The Triton kernels module, once :func:`triton_available` has said it imports."""
    kernels = _triton_kernels()
    assert kernels is not None, "Triton kernels called without triton_available()"
    return kernels


def triton_available(x: torch.Tensor) -> bool:
    """Whether the fused backend runs ``x``'s big-tensor passes as Triton kernels.

    True for a contiguous CUDA tensor of shape (N, C, *) with at least one element and
    dtype float16, bfloat16 or float32, when ``triton`` can be imported.
    """
    return (
        x.is_cuda
        and x.dim() > 2
        and x.numel() > 0
        and x.dtype in _TRITON_DTYPES
        and x.is_contiguous()
        and _triton_kernels() is not None
    )


def _skipped_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zeros standing in for the mean, and no variance, when the coefficients read neither
    (e.g. BN in eval): no pass over ``x`` at all."""
    return torch.zeros(x.shape[:2], dtype=statistics_dtype(x), device=x.device), None


def _moments(
    x: torch.Tensor, with_mean: bool, with_var: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-(n, c) moments without autograd: Triton kernel where available, else torch."""
    if not with_mean:
        return _skipped_moments(x)
    if triton_available(x):
        mean, var = _kernels().row_moments(x)
        return mean, var if with_var else None
    return instance_moments_nograd(x, with_var=with_var)


def _affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:func:`apply_affine` without autograd, through the fastest kernel at hand.

    CUDA: the Triton kernel where available. CPU, contiguous input of the coefficients'
    dtype: torch's batch-norm inference kernel on the (1, N*C, M) view with running mean 0,
    running variance 1 and eps 0, so that it computes ``weight * x + bias`` with
    ``weight = A`` and ``bias = B`` per row, written into a fresh tensor shaped like ``x``
    (not a view, so callers may modify it in place); on small maps it is about twice as
    fast as a broadcast ``addcmul``. Otherwise :func:`apply_affine`.
    """
    if triton_available(x):
        affine: torch.Tensor = _kernels().row_affine(x, scale, shift)
        return affine
    if x.is_contiguous() and x.dim() > 2 and x.dtype == scale.dtype == shift.dtype:
        rows = scale.numel()
        y = torch.empty_like(x)
        zeros, ones, unused_mean, unused_invstd = unit_rows(rows, x.dtype, x.device)
        torch.ops.aten.native_batch_norm.out(
            x.view(1, rows, -1), scale.reshape(rows), shift.reshape(rows), zeros, ones,
            False, 0.0, 0.0, out=y.view(1, rows, -1), save_mean=unused_mean,
            save_invstd=unused_invstd,
        )
        return y
    return apply_affine(x, scale, shift)


def _spatial_sums(
    grad_y: torch.Tensor, x: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~normlab.functional.moments.spatial_sums`, as a Triton kernel where available."""
    if triton_available(x):
        s1, s2 = _kernels().row_grad_sums(grad_y.contiguous(), x)
        return s1.to(dtype), s2.to(dtype)
    return spatial_sums(grad_y, x, dtype)


class AffineNormFunction(torch.autograd.Function):
    """Fused forward/backward of ``A(mean, var, params) * x + B(mean, var, params)``.

    Memory saved for backward: ``x`` plus (N, C) tensors, as for batch normalization (the
    parameters are saved too, by reference, for a double backward).

    Differentiable any number of times: a backward that runs with ``create_graph=True``
    replays the forward (:func:`_replayed_backward`); a plain backward takes the fused
    path below.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        coef: CoefficientFn,
        with_mean: bool,
        with_var: bool,
        *params: torch.Tensor | None,
    ) -> torch.Tensor:
        mean, var = _moments(x, with_mean, with_var)
        grad_x = ctx.needs_input_grad[0]
        mean = mean.requires_grad_(grad_x)
        if var is not None:
            var = var.requires_grad_(grad_x)
        leaves = [
            None if p is None else p.detach().requires_grad_(needs)
            for p, needs in zip(params, ctx.needs_input_grad[4:])
        ]
        with torch.enable_grad():
            scale, shift = coef(mean, var, *leaves)
        ctx.save_for_backward(x, *params)
        ctx.graph = (mean, var, leaves, scale, shift)
        ctx.coef, ctx.with_mean = coef, with_mean
        ctx.autocast = _autocast_state(x.device.type)
        return _affine(x, scale.detach(), shift.detach())

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():
            return _replayed_backward(ctx, grad_y)
        x = ctx.saved_tensors[0]
        mean, var, leaves, scale, shift = ctx.graph
        dtype = scale.dtype
        s1, s2 = _spatial_sums(grad_y, x, dtype)
        outputs = [(o, g) for o, g in ((scale, s2), (shift, s1)) if o.requires_grad]
        inputs = [t for t in (mean, var, *leaves) if t is not None and t.requires_grad]
        grads = iter(
            torch.autograd.grad(
                [o for o, _ in outputs],
                inputs,
                [g for _, g in outputs],
                allow_unused=True,
                retain_graph=True,
            )
            if outputs and inputs
            else [None] * len(inputs)
        )
        by_input = {id(t): next(grads) for t in inputs}
        grad_x = None
        if ctx.needs_input_grad[0]:
            m = spatial_size(x)
            dmean = by_input.get(id(mean))
            dvar = by_input.get(id(var)) if var is not None else None
            p = torch.zeros_like(scale) if dvar is None else dvar * (2.0 / m)
            q = torch.zeros_like(scale) if dmean is None else dmean * (1.0 / m)
            q = torch.addcmul(q, p, mean, value=-1.0)
            if triton_available(x):
                kernels = _kernels()
                grad_x = kernels.row_grad_input(grad_y.contiguous(), x, scale.detach(), p, q)
            else:
                grad_x = _affine(x, p, q)
                grad_x.addcmul_(_per_channel(scale.detach().to(x.dtype), x.dim()), grad_y)
        grad_params = [None if t is None else by_input.get(id(t)) for t in leaves]
        return (grad_x, None, None, None, *grad_params)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype | None]:
    """The autocast state of ``device_type`` (a replay runs under the forward's state)."""
    if not torch.amp.is_autocast_available(device_type):
        return device_type, False, None
    return (
        device_type,
        torch.is_autocast_enabled(device_type),
        torch.get_autocast_dtype(device_type),
    )


def _pinned(value: torch.Tensor, recomputed: torch.Tensor) -> torch.Tensor:
    """``value`` exactly, with the gradient (of any order) of ``recomputed``."""
    return value.detach() + (recomputed - recomputed.detach())


def _replayed_backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """The backward of :class:`AffineNormFunction` as a differentiable graph.

    Recomputes the forward from the saved ``x`` and parameters with plain ops (the
    reference backend's), under the forward's autocast state and inside
    :func:`~normlab.functional.replaying`, so that the coefficient function leaves running
    statistics and other buffers alone, then returns ``torch.autograd.grad`` of that graph
    with ``create_graph=True``. The moments keep the forward's exact values (their
    gradients come from the recomputation), so the replayed coefficients must equal the
    forward's bit for bit; if they do not, the layer changed between forward and backward
    (train/eval mode, running statistics, another attribute) and a RuntimeError says so,
    as torch does for a saved tensor modified in place.

    Cross-process statistics (``statistics_sync``) are gathered again in the replay: every
    process must run this backward, as every process runs the forward (data-parallel
    training does); the gather is differentiable to every order, so the result equals one
    process with the whole batch.
    """
    x, *params = ctx.saved_tensors
    mean, var, _, scale, shift = ctx.graph
    device_type, autocast_enabled, autocast_dtype = ctx.autocast
    autocast = (
        torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_enabled)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast, replaying():
        if ctx.with_mean:
            moment_mean, moment_var = instance_moments(x, with_var=var is not None)
            mean = _pinned(mean, moment_mean)
            var = None if var is None or moment_var is None else _pinned(var, moment_var)
        else:
            mean = mean.detach()
        replayed_scale, replayed_shift = ctx.coef(mean, var, *params)
        if not all(
            torch.allclose(a.detach(), b.detach(), rtol=0.0, atol=0.0, equal_nan=True)
            for a, b in ((replayed_scale, scale), (replayed_shift, shift))
        ):
            raise RuntimeError(
                "normlab: cannot differentiate a normalization twice after the layer "
                "changed since its forward (train/eval mode, running statistics or another "
                "attribute); run the backward with create_graph=True before changing it"
            )
        y = apply_affine(x, replayed_scale, replayed_shift)
    needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[4:])
    inputs = [t for t, need in zip((x, *params), needs) if need]
    grads = iter(
        torch.autograd.grad(y, inputs, grad_y, create_graph=True, allow_unused=True)
    )
    grad_x, *grad_params = [next(grads) if need else None for need in needs]
    return (grad_x, None, None, None, *grad_params)


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) is active.

    There a custom autograd Function needs ``setup_context`` and a vmap rule, and the fused
    kernels' data-dependent branches and ``out=`` calls cannot be batched, so the plain
    ops run instead. torch's own check, as ``torch.autograd.Function.apply`` makes it.
    """
    return torch._C._are_functorch_transforms_active()


def plain_moments(
    x: torch.Tensor, with_mean: bool, with_var: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-(n, c) moments of the reference backend, in differentiable plain ops:
    zeros and no variance when the coefficients read neither moment. TorchScript-compatible
    (a scripted normlab layer runs this path).

    Shape:
        - x: (N, C, *); mean, var: (N, C)
    """
    if with_mean:
        return instance_moments(x, with_var=with_var)
    return _skipped_moments(x)


def _reference(
    x: torch.Tensor,
    coef: CoefficientFn,
    with_mean: bool,
    with_var: bool,
    params: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    mean, var = plain_moments(x, with_mean, with_var)
    scale, shift = coef(mean, var, *params)
    return apply_affine(x, scale, shift)


def _without_grad(
    x: torch.Tensor,
    coef: CoefficientFn,
    with_mean: bool,
    with_var: bool,
    params: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    mean, var = _moments(x, with_mean, with_var)
    scale, shift = coef(mean, var, *params)
    return _affine(x, scale, shift)


def affine_norm(
    x: torch.Tensor,
    coef: CoefficientFn,
    params: Sequence[torch.Tensor | None] = (),
    *,
    with_var: bool = True,
    with_mean: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Normalize ``x`` with coefficients computed from its per-(n, c) moments.

    Args:
        x: input of shape (N, C) or (N, C, *).
        coef: ``coef(mean, var, *params) -> (A, B)``, both of shape (N, C); ``var`` is
            ``None`` when ``with_var`` is False. It may update buffers (running statistics)
            as a side effect: it is called once per forward, and once more, inside
            :func:`~normlab.functional.replaying`, by a double backward of the fused
            backend; it must not update buffers while
            :func:`~normlab.functional.is_replaying`.
        params: tensors (or ``None``) the coefficients depend on; gradients flow to them.
        with_var: whether ``coef`` needs the variance (e.g. not in BN eval).
        with_mean: whether ``coef`` reads the mean; when False (which needs ``with_var``
            False too) no pass over ``x`` computes moments and ``coef`` gets zeros for the
            mean.
        backend: ``"reference"``, ``"fused"`` or ``None`` for the global default. Under
            ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` the plain-ops path
            is traced whatever the choice (:func:`~normlab.functional.tracing.
            plain_ops_required`), and under ``torch.func`` transforms it runs whatever the
            choice.

    Returns:
        ``A * x + B`` with ``x``'s shape and dtype.

    Shape:
        - x: (N, C) or (N, C, *); an (N, C) input has one element per (n, c) pair.
        - output: same as x.
    """
    if with_var and not with_mean:
        raise ValueError("affine_norm: with_var=True needs with_mean=True")
    if x.dim() == 2:
        return affine_norm(
            x.unsqueeze(-1), coef, params, with_var=with_var, with_mean=with_mean,
            backend=backend,
        ).squeeze(-1)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p is not None and p.requires_grad for p in params)
    )
    if (
        resolve_backend(backend) == "reference"
        or plain_ops_required()
        or _functorch_active()
    ):
        return _reference(x, coef, with_mean, with_var, params)
    if not needs_grad:
        return _without_grad(x, coef, with_mean, with_var, params)
    y: torch.Tensor = AffineNormFunction.apply(x, coef, with_mean, with_var, *params)
    return y
