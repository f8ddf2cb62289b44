"""The functional core: moments, exact pooling, backend selection, the affine op."""

import pytest
import torch

import normlab
from normlab import functional as F


def x4():
    return torch.randn(6, 4, 3, 5, dtype=torch.float64) * 3 + 10


def test_instance_moments_are_biased_spatial_moments():
    x = x4()
    mean, var = F.instance_moments(x)
    torch.testing.assert_close(mean, x.mean((2, 3)))
    torch.testing.assert_close(var, x.var((2, 3), correction=0))
    assert F.instance_moments(x, with_var=False)[1] is None
    half_mean, half_var = F.instance_moments(x.half())
    assert half_mean.dtype == torch.float32 and half_var.dtype == torch.float32


@pytest.mark.parametrize(
    "pool, axes",
    [
        (F.batch_moments, (0, 2, 3)),
        (F.layer_moments, (1, 2, 3)),
    ],
)
def test_pooling_equals_direct_statistics(pool, axes):
    x = x4()
    mean, var = pool(*F.instance_moments(x))
    torch.testing.assert_close(mean.squeeze(), x.mean(axes))
    torch.testing.assert_close(var.squeeze(), x.var(axes, correction=0))


def test_group_and_virtual_batch_pooling_equal_direct_statistics():
    x = x4()
    mean, var = F.group_moments(*F.instance_moments(x), num_groups=2)
    grouped = x.reshape(6, 2, -1)
    torch.testing.assert_close(mean[:, ::2], grouped.mean(2))
    torch.testing.assert_close(var[:, 1::2], grouped.var(2, correction=0))
    mean, var = F.virtual_batch_moments(*F.instance_moments(x), virtual_batch_size=4)
    for rows in (slice(0, 4), slice(4, 6)):
        torch.testing.assert_close(mean[rows][0], x[rows].mean((0, 2, 3)))
        torch.testing.assert_close(var[rows][-1], x[rows].var((0, 2, 3), correction=0))


@pytest.mark.parametrize("dim", [0, 1, (0, 1), 2])
def test_pooling_gradients_match_autograd_of_the_formula(dim):
    mean = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    var = torch.rand(4, 3, 2, dtype=torch.float64, requires_grad=True)
    pooled = F.pool_moments(mean, var, dim)
    formula_mean = mean.mean(dim, keepdim=True)
    formula_var = (var + (mean - formula_mean) ** 2).mean(dim, keepdim=True)
    weights = [torch.randn_like(t) for t in pooled]
    got = torch.autograd.grad(pooled, (mean, var), weights)
    want = torch.autograd.grad((formula_mean, formula_var), (mean, var), weights)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert torch.autograd.gradgradcheck(lambda m, v: F.pool_moments(m, v, dim), (mean, var))


def test_pooling_is_stable_for_large_offsets():
    x = torch.randn(8, 3, 16, 16) + 1e4
    _, var = F.batch_moments(*F.instance_moments(x))
    torch.testing.assert_close(var.squeeze(), x.double().var((0, 2, 3), correction=0).float(),
                               rtol=1e-3, atol=1e-3)


def test_backend_context_manager_restores_the_default():
    assert F.get_backend() == "fused"
    with F.use_backend("reference"):
        assert F.get_backend() == "reference"
        assert F.resolve_backend(None) == "reference"
        assert F.resolve_backend("fused") == "fused"
    assert F.get_backend() == "fused"
    with pytest.raises(ValueError, match="valid backends: reference, fused"):
        F.set_backend("triton-cpu")


def instance_coef(mean, var, weight):
    scale = weight * torch.rsqrt(var + 1e-5)
    return scale, -mean * scale


@pytest.mark.parametrize("backend", F.BACKENDS)
def test_affine_norm_matches_formula_and_saves_only_x_and_small_tensors(backend):
    x = x4().requires_grad_()
    weight = torch.rand(4, dtype=torch.float64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.affine_norm(x, instance_coef, (weight,), backend=backend)
    expected = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(
        x.var((2, 3), correction=0, keepdim=True) + 1e-5
    ) * weight.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, weight), g)
    want = torch.autograd.grad(expected, (x, weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    if backend == "fused":
        assert sum(n == x.numel() for n in saved) == 1


def test_affine_norm_without_grad_skips_the_function():
    x = x4()
    weight = torch.ones(4, dtype=torch.float64)
    with torch.no_grad():
        y = F.affine_norm(x, instance_coef, (weight,))
    assert y.grad_fn is None
    torch.testing.assert_close(y.mean((2, 3)), torch.zeros(6, 4, dtype=torch.float64))


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e4])
def test_fast_moments_are_accurate_for_any_offset(offset):
    x = torch.randn(16, 8, 10, 10) + offset
    mean, var = F.instance_moments_nograd(x)
    exact = x.double().var((2, 3), correction=0)
    assert ((var.double() - exact) / exact).abs().max() < 2e-5
    torch.testing.assert_close(mean.double(), x.double().mean((2, 3)), rtol=1e-6, atol=1e-4)


def test_fast_moments_of_constant_rows_are_zero():
    x = torch.full((2, 3, 1, 1), 5.0)
    mean, var = F.instance_moments_nograd(x)
    assert torch.all(var == 0) and torch.all(mean == 5.0)


def test_cached_kernel_constants_stay_zeros_and_ones():
    from normlab.functional.moments import unit_rows

    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    for train in (True, False):
        layer = normlab.create_norm("sn", 3).train(train)
        layer(x).sum().backward()
    zeros, ones, empty_mean, empty_invstd = unit_rows(12, x.dtype, x.device)
    assert torch.equal(zeros, torch.zeros(12)) and torch.equal(ones, torch.ones(12))
    assert empty_mean.numel() == 0 and empty_invstd.numel() == 0
    assert unit_rows(12, x.dtype, x.device)[0] is zeros


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("name", ["bn", "in"])
def test_norms_with_running_stats_skip_the_moments_pass_in_eval(monkeypatch, backend, name):
    import normlab.functional.affine as affine

    def no_moments(*args, **kwargs):
        raise AssertionError("moments computed although the coefficients do not read them")

    layer = normlab.create_norm(name, 3, backend=backend, track_running_stats=True)
    layer.running_mean.fill_(0.5)
    layer.running_var.fill_(4.0)
    layer.eval()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for fn in ("instance_moments", "instance_moments_nograd"):
        monkeypatch.setattr(affine, fn, no_moments)
    y = layer(x)
    torch.testing.assert_close(y, (x - 0.5) / torch.sqrt(torch.tensor(4.0 + layer.eps)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, (4.0 + layer.eps) ** -0.5))


def test_variance_without_mean_is_refused():
    with pytest.raises(ValueError, match="with_var=True needs with_mean=True"):
        F.affine_norm(torch.randn(2, 3, 4), lambda m, v: (m, m), with_var=True, with_mean=False)
