"""Triton kernels of the fused backend (normlab.functional.triton_kernels) and their dispatch.

Without CUDA the kernels run in Triton's interpreter on CPU tensors: ``TRITON_INTERPRET=1``
is set while this module imports the kernels (the jit decorator reads it then) and while its
tests run (the interpreter reads it at launch), and is restored afterwards, so no other test
sees it. Shapes stay tiny: the interpreter executes every program in Python.
"""

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import normlab
from normlab.functional import affine

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
_MODULE = "normlab.functional.triton_kernels"


def _set_interpret(value):
    previous = os.environ.get("TRITON_INTERPRET")
    if value is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = value
    return previous


def _import_kernels():
    if CUDA:
        pytest.importorskip("triton")
        return importlib.import_module(_MODULE)
    previous = _set_interpret("1")
    try:
        pytest.importorskip("triton")
        if _MODULE in sys.modules:  # imported without the interpreter: decorate again
            return importlib.reload(sys.modules[_MODULE])
        return importlib.import_module(_MODULE)
    finally:
        _set_interpret(previous)


tk = _import_kernels()


@pytest.fixture(autouse=True)
def _interpreter():
    """The Triton interpreter's flag, set around each test (function scope: the module's
    tests need no shared state, so pytest-xdist spreads them over every worker)."""
    if CUDA:
        yield
        return
    previous = _set_interpret("1")
    try:
        yield
    finally:
        _set_interpret(previous)


# (shape, launch overrides): one element per row; a row length that is not a multiple of
# the block; rows longer than one block; several rows per program with a ragged last tile;
# rows split into segments combined on the host.
CASES = {
    "M=1": ((2, 3, 1), {}),
    "M=37": ((2, 3, 37), {}),
    "M=2500": ((1, 2, 50, 50), {}),
    "8x8": ((3, 5, 8, 8), {}),
    "segments": ((2, 2, 100), {"block": 16, "segments": 3}),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _input(shape, dtype, scale=3.0, offset=1.0):
    return (torch.randn(shape) * scale + offset).to(device=DEVICE, dtype=dtype)


def _rows64(t):
    return t.double().flatten(2)


def _col(t, ndim):
    return t.reshape(t.shape + (1,) * (ndim - 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_moments_match_float64(case, dtype):
    shape, launch = CASES[case]
    x = _input(shape, dtype)
    mean, var = tk.row_moments(x, **launch)
    assert mean.dtype == var.dtype == torch.float32
    assert mean.shape == var.shape == shape[:2]
    ref = _rows64(x)
    torch.testing.assert_close(mean.double(), ref.mean(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), ref.var(2, correction=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("launch", [{}, {"block": 16, "segments": 4}])
def test_variance_is_stable_for_large_offsets(launch):
    x = _input((2, 2, 300), torch.float32, scale=1.0, offset=1e4)
    _, var = tk.row_moments(x, **launch)
    want = _rows64(x).var(2, correction=0)
    torch.testing.assert_close(var.double(), want, rtol=1e-3, atol=1e-3)
    naive = x.flatten(2).square().mean(2) - x.flatten(2).mean(2).square()
    assert (naive.double() - want).abs().max() > 0.1  # what E[x^2] - E[x]^2 would give


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_grad_sums_match_float64(case, dtype):
    shape, launch = CASES[case]
    x, g = _input(shape, dtype), _input(shape, dtype, scale=1.0, offset=0.0)
    s1, s2 = tk.row_grad_sums(g, x, **launch)
    assert s1.dtype == s2.dtype == torch.float32
    gd, xd = _rows64(g), _rows64(x)
    scale = (gd.abs() * xd.abs()).sum(2) + gd.abs().sum(2)  # error grows with sum of |terms|
    assert ((s1.double() - gd.sum(2)).abs() <= 1e-6 * scale + 1e-6).all()
    assert ((s2.double() - (gd * xd).sum(2)).abs() <= 1e-6 * scale + 1e-6).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_affine_and_grad_input_match_float32_formulas(case, dtype):
    shape, launch = CASES[case]
    block = {"block": launch["block"]} if "block" in launch else {}
    x, g = _input(shape, dtype), _input(shape, dtype, scale=1.0, offset=0.0)
    a, b, p, q = (torch.randn(shape[:2], device=DEVICE) for _ in range(4))
    nd = x.dim()
    y = tk.row_affine(x, a, b, **block)
    assert y.dtype == dtype and y.shape == x.shape
    want = (_col(a, nd) * x.float() + _col(b, nd)).to(dtype)
    torch.testing.assert_close(y, want)
    dx = tk.row_grad_input(g, x, a, p, q, **block)
    assert dx.dtype == dtype and dx.shape == x.shape
    want = (_col(a, nd) * g.float() + _col(p, nd) * x.float() + _col(q, nd)).to(dtype)
    torch.testing.assert_close(dx, want)


def test_kernels_reject_what_they_cannot_run():
    x = _input((2, 3, 4, 5), torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        tk.row_moments(x.transpose(2, 3))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        tk.row_moments(x.double())
    with pytest.raises(ValueError, match="N, C"):
        tk.row_moments(x[:, :, 0, 0])
    with pytest.raises(ValueError, match="N\\*C = 6"):
        tk.row_affine(x, torch.ones(6, 2, device=DEVICE), torch.ones(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="power of two"):
        tk.row_moments(x, block=24)


_COMPILE_FOR_SM90 = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from normlab.functional import triton_kernels as tk

    if "nvidia" not in triton.backends.backends:
        print("SKIP: triton has no nvidia backend")
        raise SystemExit(0)
    rows = {"R": "i32", "M": "i32"}
    reduction = {**rows, "SEG": "i32", "S": "i32", "ROWS": "constexpr", "BLOCK": "constexpr"}
    elementwise = {**rows, "COL_TILES": "i32", "HAS_G": "constexpr"}
    elementwise.update(ROWS="constexpr", BLOCK="constexpr")
    for dt in ("bf16",):  # the conversions float32 <-> bfloat16 included
        for tile in ({"ROWS": 1, "BLOCK": 2048}, {"ROWS": 128, "BLOCK": 16}):
            kernels = [
                (tk._moments_kernel, {"x_ptr": f"*{dt}", "mean_ptr": "*fp32", "m2_ptr": "*fp32"},
                 reduction, {}),
                (tk._grad_sums_kernel, {"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", "s1_ptr": "*fp32",
                                        "s2_ptr": "*fp32"}, reduction, {}),
            ] + [
                (tk._affine_kernel, {"x_ptr": f"*{dt}", "p_ptr": "*fp32", "q_ptr": "*fp32",
                                     "g_ptr": f"*{dt}", "a_ptr": "*fp32", "out_ptr": f"*{dt}"},
                 elementwise, {"HAS_G": has_g})
                for has_g in (False, True)
            ]
            for fn, pointers, scalars, consts in kernels:
                source = ASTSource(fn, {**pointers, **scalars}, {**tile, **consts})
                compiled = triton.compile(
                    source, target=GPUTarget("cuda", 90, 32), options=tk._LAUNCH
                )
                assert compiled.asm["cubin"], fn
    print("compiled")
    """
)


def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The interpreter does not type-check like the compiler: build real sm_90 (H100/H200)
    cubins of every kernel for bfloat16 inputs, for long and short rows, in a
    subprocess without ``TRITON_INTERPRET`` (ptxas ships with triton; no device needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    src = os.path.dirname(os.path.dirname(os.path.dirname(tk.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    assert "compiled" in result.stdout


def test_triton_available_is_false_off_cuda():
    assert not affine.triton_available(torch.randn(2, 3, 4, 4))


# --------------------------------------------------------------------------------------------
# whole layers through the dispatch

LAYERS = {
    "sn": lambda c: normlab.SwitchNorm2d(c),
    "iebn": lambda c: normlab.IEBN2d(c),
    "bin": lambda c: normlab.BatchInstanceNorm2d(c),
    "gn": lambda c: normlab.create_norm("gn", c, num_groups=2),
}


def _spy_kernels(monkeypatch):
    """Count calls of each kernel wrapper; returns the counter."""
    calls = {}
    for name in ("row_moments", "row_affine", "row_grad_sums", "row_grad_input"):
        original = getattr(tk, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(tk, name, wrapper)
    return calls


def _compare_layers(name, shape, dtype, tol):
    """Fused (dispatching to the kernels) against reference: output, grads, running stats."""
    c = shape[1]
    layers = {b: LAYERS[name](c).to(DEVICE) for b in ("reference", "fused")}
    if dtype == torch.float64:
        layers = {b: layer.double() for b, layer in layers.items()}
    with torch.no_grad():
        for p in layers["reference"].parameters():
            p.add_(0.3 * torch.randn_like(p))
    layers["fused"].load_state_dict(layers["reference"].state_dict())
    x = _input(shape, dtype)
    results = {}
    for backend, layer in layers.items():
        layer.backend = backend
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y.float() * torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)).sum().backward()
        grads = [xi.grad] + [p.grad for p in layer.parameters()]
        results[backend] = (y, grads)
    torch.testing.assert_close(results["fused"][0], results["reference"][0], **tol)
    for got, want in zip(results["fused"][1], results["reference"][1]):
        torch.testing.assert_close(got, want, **tol)
    for key, value in layers["reference"].state_dict().items():
        torch.testing.assert_close(layers["fused"].state_dict()[key], value, **tol)
    layers["fused"].eval()
    layers["reference"].eval()
    with torch.no_grad():
        torch.testing.assert_close(layers["fused"](x), layers["reference"](x), **tol)


@pytest.mark.skipif(CUDA, reason="the CUDA variant below runs the real dispatch")
@pytest.mark.parametrize("name", LAYERS)
def test_layers_through_dispatch_in_interpreter(name, monkeypatch):
    """The fused Function with the kernels swapped in on CPU equals the reference backend."""
    supported = tk.SUPPORTED_DTYPES
    monkeypatch.setattr(
        affine,
        "triton_available",
        lambda x: x.dim() > 2 and x.numel() > 0 and x.dtype in supported and x.is_contiguous(),
    )
    monkeypatch.setattr(affine, "_triton_kernels", lambda: tk)
    calls = _spy_kernels(monkeypatch)
    _compare_layers(name, (4, 4, 5, 5), torch.float32, {"rtol": 1e-4, "atol": 1e-4})
    assert calls == {"row_moments": 2, "row_affine": 2, "row_grad_sums": 1, "row_grad_input": 1}


GPU_TOL = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-4},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 16, 13, 17), (4, 32, 56, 56), (64, 64, 8, 8)])
@pytest.mark.parametrize("name", LAYERS)
def test_layers_on_cuda_equal_reference(name, shape, dtype, monkeypatch):
    assert affine.triton_available(torch.empty(shape, device="cuda", dtype=dtype))
    calls = _spy_kernels(monkeypatch)
    _compare_layers(name, shape, dtype, GPU_TOL[dtype])
    assert calls == {"row_moments": 2, "row_affine": 2, "row_grad_sums": 1, "row_grad_input": 1}


@pytest.mark.gpu
def test_cuda_fallbacks_keep_torch_ops(monkeypatch):
    """Non-contiguous and float64 CUDA inputs stay on torch ops and still equal the reference."""
    calls = _spy_kernels(monkeypatch)
    x = torch.randn(4, 8, 6, 6, device="cuda", dtype=torch.float64)
    assert not affine.triton_available(x)
    assert not affine.triton_available(x.float().to(memory_format=torch.channels_last))
    _compare_layers("sn", (4, 8, 6, 6), torch.float64, {})
    assert calls == {}


@pytest.mark.gpu
def test_segmented_reductions_on_cuda():
    """Few long rows: the reductions split rows into segments and still match float64."""
    x = _input((1, 2, 512, 512), torch.float32, scale=1.0, offset=1e4)
    g = _input((1, 2, 512, 512), torch.float32, scale=1.0, offset=0.0)
    mean, var = tk.row_moments(x)
    ref = _rows64(x)
    torch.testing.assert_close(mean.double(), ref.mean(2), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(var.double(), ref.var(2, correction=0), rtol=1e-3, atol=1e-3)
    s1, s2 = tk.row_grad_sums(g, x)
    torch.testing.assert_close(s1.double(), _rows64(g).sum(2), rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(s2.double(), (_rows64(g) * ref).sum(2), rtol=1e-4, atol=10.0)
