"""Triton kernels for the fused backend's big-tensor passes on CUDA.

Every normalizer does the same big-tensor work (DESIGN.md, "moments -> coefficients ->
affine"); this module implements it for a contiguous (N, C, *) tensor viewed as ``R = N*C``
rows of ``M`` elements:

- :func:`row_moments`: per-row mean and biased variance (forward);
- :func:`row_affine`: ``y = A[row] * x + B[row]`` (forward);
- :func:`row_grad_sums`: per-row ``S1 = sum(g)`` and ``S2 = sum(g * x)`` in one pass (backward);
- :func:`row_grad_input`: ``dx = A[row] * g + P[row] * x + Q[row]`` in one pass (backward).

Arithmetic is float32 for float16, bfloat16 and float32 inputs: statistics and sums come back
as float32 (N, C) tensors, the elementwise passes compute in float32 and store in ``x``'s dtype.

Tiling. A program owns a tile of ``ROWS`` rows by ``BLOCK`` columns; ``BLOCK`` is the row
length rounded up to a power of two, clamped to [16, 2048], and ``ROWS * BLOCK`` is about
2048 elements, so short rows (8x8 feature maps, or one element per (n, c)) are batched several
to a program and long rows (56x56 and more) are walked in ``BLOCK`` chunks. The elementwise
passes launch one program per (row tile, column chunk) on a flat 1-D grid. The reductions
loop over their columns; when there are too few row tiles to fill the device, each row is
split into ``segments`` whose partial results are combined exactly on the host (a few (R, S)
tensor ops): sums add, and variances use Chan's parallel rule.

Variance. Each chunk's mean and centred sum of squares are computed exactly in registers and
merged into the running (count, mean, M2) with Chan's update
``M2 += M2_b + delta**2 * n * n_b / (n + n_b)``, so large offsets (mean 1e4, std 1) lose no
precision, unlike ``E[x**2] - E[x]**2``.

These kernels are launched by :mod:`normlab.functional.affine` for CUDA tensors
(see ``triton_available`` there). With ``TRITON_INTERPRET=1`` set before ``triton`` is first
imported, they also run on CPU tensors (slowly), which is how the test suite checks them on
machines without a GPU. Block sizes and warp counts are first guesses, not tuned on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = [
    "SUPPORTED_DTYPES",
    "row_affine",
    "row_grad_input",
    "row_grad_sums",
    "row_moments",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_TILE = 2048  # elements per program per step (ROWS * BLOCK)
_MIN_BLOCK = 16
_MAX_BLOCK = 2048
# 256 threads, 8 elements each per tile; fused multiply-adds (one rounding for a * x + b)
_LAUNCH = {"num_warps": 8, "enable_fp_fusion": True}
_PROGRAMS_PER_SM = 4  # reductions split rows until about this many programs per SM


# --------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _segment(R, M, SEG, ROWS: tl.constexpr):
    """This program's rows, their validity, their offsets and its column range [start, end)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    start = tl.program_id(1) * SEG
    return rows, rows < R, rows.to(tl.int64) * M, start, tl.minimum(start + SEG, M)


@triton.jit
def _moments_kernel(x_ptr, mean_ptr, m2_ptr, R, M, SEG, S, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Partial (mean, M2) of columns [seg*SEG, (seg+1)*SEG) of ROWS rows (Chan's update)."""
    rows, row_ok, base, start, end = _segment(R, M, SEG, ROWS)
    mean = tl.zeros([ROWS], dtype=tl.float32)
    m2 = tl.zeros([ROWS], dtype=tl.float32)
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (cols < end)[None, :]
        v = tl.load(x_ptr + base[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        n_b = tl.minimum(end - off, BLOCK).to(tl.float32)
        mean_b = tl.sum(v, axis=1) / n_b
        d = tl.where(mask, v - mean_b[:, None], 0.0)
        m2_b = tl.sum(d * d, axis=1)
        count = (off - start).to(tl.float32)  # elements merged so far
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (count * n_b / total)
    out = rows.to(tl.int64) * S + tl.program_id(1)
    tl.store(mean_ptr + out, mean, mask=row_ok)
    tl.store(m2_ptr + out, m2, mask=row_ok)


@triton.jit
def _grad_sums_kernel(
    g_ptr, x_ptr, s1_ptr, s2_ptr, R, M, SEG, S, ROWS: tl.constexpr, BLOCK: tl.constexpr
):
    """Partial sum(g) and sum(g * x) of columns [seg*SEG, (seg+1)*SEG) of ROWS rows."""
    rows, row_ok, base, start, end = _segment(R, M, SEG, ROWS)
    acc1 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (cols < end)[None, :]
        offsets = base[:, None] + cols[None, :]
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        acc1 += g
        acc2 += g * v
    out = rows.to(tl.int64) * S + tl.program_id(1)
    tl.store(s1_ptr + out, tl.sum(acc1, axis=1), mask=row_ok)
    tl.store(s2_ptr + out, tl.sum(acc2, axis=1), mask=row_ok)


@triton.jit
def _affine_kernel(
    x_ptr,
    p_ptr,
    q_ptr,
    g_ptr,
    a_ptr,
    out_ptr,
    R,
    M,
    COL_TILES,
    HAS_G: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = p[row] * x + q[row] (+ a[row] * g when HAS_G) on one ROWS x BLOCK tile."""
    pid = tl.program_id(0)
    rows = (pid // COL_TILES) * ROWS + tl.arange(0, ROWS)
    cols = (pid % COL_TILES) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < R
    mask = row_ok[:, None] & (cols < M)[None, :]
    offsets = rows.to(tl.int64)[:, None] * M + cols[None, :]
    p = tl.load(p_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    q = tl.load(q_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = p[:, None] * v + q[:, None]
    if HAS_G:
        a = tl.load(a_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y += a[:, None] * g
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launch configuration


def _tile(m: int, block: int | None) -> tuple[int, int]:
    """``(ROWS, BLOCK)`` for rows of ``m`` elements."""
    if block is None:
        block = min(max(triton.next_power_of_2(m), _MIN_BLOCK), _MAX_BLOCK)
    elif block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    return max(1, _TILE // block), block


def _segments(
    row_tiles: int, m: int, block: int, device: torch.device, segments: int | None
) -> tuple[int, int]:
    """``(S, SEG)``: split each row into S segments of SEG columns (a multiple of block)."""
    chunks = triton.cdiv(m, block)
    if segments is None:
        segments = 1
        if device.type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            target = _PROGRAMS_PER_SM * sms
            if row_tiles < target:
                segments = triton.cdiv(target, row_tiles)
    segments = max(1, min(segments, chunks))
    seg = triton.cdiv(chunks, segments) * block
    return triton.cdiv(m, seg), seg


def _rows_view(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, int, int]:
    """The contiguous (N, C, *) tensor ``x`` as ``(x, R, M)``; checks what the kernels need."""
    if x.dim() < 3:
        raise ValueError(
            f"{name} must have shape (N, C, *) with a spatial axis, got {tuple(x.shape)}"
        )
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous; call .contiguous() first")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {x.dtype}")
    r = x.shape[0] * x.shape[1]
    return x, r, x.numel() // max(r, 1)


def _per_row(t: torch.Tensor, r: int, name: str) -> torch.Tensor:
    """An (N, C) coefficient tensor as R contiguous values."""
    if t.numel() != r:
        raise ValueError(f"{name} must have N*C = {r} elements, got shape {tuple(t.shape)}")
    return t.reshape(r).contiguous()


def _on(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Launch on ``device`` (Triton launches on the current CUDA device, not the tensor's)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _grad_view(grad_y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Check ``grad_y`` like :func:`_rows_view` and against ``x``'s shape."""
    grad_y, _, _ = _rows_view(grad_y, "grad_y")
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y shape {tuple(grad_y.shape)} != x shape {tuple(x.shape)}")
    return grad_y


def _launch_reduction(
    kernel: Any,
    inputs: Sequence[torch.Tensor],
    r: int,
    m: int,
    block: int | None,
    segments: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run a per-row reduction kernel with two outputs; returns them as (R, S) and SEG."""
    device = inputs[0].device
    rows, block = _tile(m, block)
    row_tiles = triton.cdiv(r, rows)
    s, seg = _segments(row_tiles, m, block, device, segments)
    out1 = torch.empty(r, s, device=device, dtype=torch.float32)
    out2 = torch.empty_like(out1)
    with _on(device):
        kernel[(row_tiles, s)](*inputs, out1, out2, r, m, seg, s, ROWS=rows, BLOCK=block, **_LAUNCH)
    return out1, out2, seg


# --------------------------------------------------------------------------------------------
# host functions


def row_moments(
    x: torch.Tensor, *, block: int | None = None, segments: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance of ``x`` over its spatial axes.

    Args:
        x: contiguous float16, bfloat16 or float32 input.
        block: columns per chunk (a power of two); ``None`` picks from the row length.
        segments: split each row into this many parallel pieces (combined exactly with
            Chan's rule); ``None`` picks from the device's SM count (1 off CUDA).

    Returns:
        ``(mean, var)`` in float32.

    Shape:
        - x: (N, C, *)
        - mean, var: (N, C)
    """
    x, r, m = _rows_view(x)
    n, c = x.shape[:2]
    mean, m2, seg = _launch_reduction(_moments_kernel, (x,), r, m, block, segments)
    s = mean.shape[1]
    if s == 1:
        return mean.view(n, c), (m2 / m).view(n, c)
    counts = torch.full((s,), float(seg), device=x.device, dtype=torch.float32)
    counts[-1] = m - (s - 1) * seg
    total = (mean * counts).sum(1, keepdim=True) / m
    m2 = m2.sum(1) + ((mean - total).square() * counts).sum(1)
    return total.view(n, c), (m2 / m).view(n, c)


def row_grad_sums(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    *,
    block: int | None = None,
    segments: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) ``S1 = sum(g)`` and ``S2 = sum(g * x)`` in one pass, float32 accumulation.

    Args:
        grad_y: gradient of the output, contiguous, same shape as ``x``.
        x: the forward input, contiguous.
        block, segments: as for :func:`row_moments`.

    Returns:
        ``(S1, S2)`` in float32.

    Shape:
        - grad_y, x: (N, C, *)
        - S1, S2: (N, C)
    """
    x, r, m = _rows_view(x)
    grad_y = _grad_view(grad_y, x)
    n, c = x.shape[:2]
    s1, s2, _ = _launch_reduction(_grad_sums_kernel, (grad_y, x), r, m, block, segments)
    return s1.sum(1).view(n, c), s2.sum(1).view(n, c)


def _launch_affine(
    x: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    g: torch.Tensor | None = None,
    a: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """``p * x + q`` (``+ a * g`` when ``g`` is given) per row, in ``x``'s dtype."""
    x, r, m = _rows_view(x)
    p, q = (
        _per_row(p, r, "scale" if g is None else "p"),
        _per_row(q, r, "shift" if g is None else "q"),
    )
    if g is not None:
        assert a is not None, "a scale for g"
        g = _grad_view(g, x)
        a = _per_row(a, r, "scale")
    out = torch.empty_like(x)
    rows, block = _tile(m, block)
    col_tiles = triton.cdiv(m, block)
    grid = (triton.cdiv(r, rows) * col_tiles,)
    has_g = g is not None
    g, a = (g, a) if has_g else (x, p)  # unread placeholders when HAS_G is False
    with _on(x.device):
        _affine_kernel[grid](
            x, p, q, g, a, out, r, m, col_tiles, HAS_G=has_g, ROWS=rows, BLOCK=block, **_LAUNCH
        )
    return out


def row_affine(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, block: int | None = None
) -> torch.Tensor:
    """``scale[n, c] * x + shift[n, c]`` computed in float32, returned in ``x``'s dtype.

    Shape:
        - x: (N, C, *), contiguous
        - scale, shift: (N, C), any floating dtype (read as float32)
        - output: same as x
    """
    return _launch_affine(x, scale, shift, block=block)


def row_grad_input(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """``dx = scale[n, c] * g + p[n, c] * x + q[n, c]`` in one pass, in ``x``'s dtype.

    Shape:
        - grad_y, x: (N, C, *), contiguous
        - scale, p, q: (N, C), any floating dtype (read as float32)
        - output: same as x
    """
    return _launch_affine(x, p, q, g=grad_y, a=scale, block=block)
