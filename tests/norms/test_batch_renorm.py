"""Batch Renormalization (Ioffe 2017, Algorithm 1): parity with the plain formula in
float64, BN at r_max = 1 and d_max = 0, no gradient through r and d. Everything else
(torch's contract, export, fusing, dtypes, ...) comes from the generated tables."""

import pytest
import torch

import normlab
from normlab.functional import BACKENDS
from normlab.norms import NormConfigError, norm_options, resolve_norm
from normlab.norms.batch_renorm import BatchRenorm2d

C = 4
F64 = torch.float64


def plain_brn(x, weight, bias, running_mean, running_var, *, eps, r_max, d_max, detach=True):
    """Algorithm 1 written out: ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with
    ``r``, ``d`` from the running statistics before the batch."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims)
    var = x.var(dims, correction=0)
    batch_std = torch.sqrt(var + eps)
    running_std = torch.sqrt(running_var + eps)
    r = torch.clamp(batch_std / running_std, 1 / r_max, r_max)
    d = torch.clamp((mean - running_mean) / running_std, -d_max, d_max)
    if detach:
        r, d = r.detach(), d.detach()
    x_hat = (x - mean.view(shape)) / batch_std.view(shape) * r.view(shape) + d.view(shape)
    return weight.view(shape) * x_hat + bias.view(shape), mean, var


def layer_with_state(dim=2, backend="reference", **kwargs):
    """A float64 BRN whose running statistics are far enough from a batch's that some
    channels' r and d are clipped and others are not."""
    torch.manual_seed(0)
    layer = resolve_norm("brn", dim)(C, backend=backend, **kwargs).double()
    with torch.no_grad():
        layer.weight.copy_(1 + 0.3 * torch.randn(C, dtype=F64))
        layer.bias.copy_(0.3 * torch.randn(C, dtype=F64))
        layer.running_mean.copy_(torch.tensor([0.0, 0.8, -2.0, 0.3], dtype=F64))
        layer.running_var.copy_(torch.tensor([1.0, 0.2, 9.0, 1.5], dtype=F64))
    return layer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim, shape", [(1, (6, C)), (2, (6, C, 3, 2)), (3, (5, C, 2, 2, 2))])
def test_training_steps_match_algorithm_1(dim, shape, backend):
    """Outputs, input and parameter gradients and running statistics over three steps."""
    layer = layer_with_state(dim, backend)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    running_mean, running_var = layer.running_mean.clone(), layer.running_var.clone()
    clipped = False
    for step in range(3):
        x = (torch.randn(shape, dtype=F64) * 1.5 + 0.5).requires_grad_()
        want, mean, var = plain_brn(
            x, weight, bias, running_mean, running_var, eps=layer.eps, r_max=1.5, d_max=0.5
        )
        r = torch.sqrt(var + layer.eps) / torch.sqrt(running_var + layer.eps)
        clipped |= bool(((r < 1 / 1.5) | (r > 1.5)).any())
        got = layer(x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(got)
        got_grads = torch.autograd.grad(got, (x, layer.weight, layer.bias), g)
        want_grads = torch.autograd.grad(want, (x, weight, bias), g)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        values = x.numel() // C
        running_mean = 0.9 * running_mean + 0.1 * mean.detach()
        running_var = 0.9 * running_var + 0.1 * var.detach() * values / (values - 1)
        torch.testing.assert_close(layer.running_mean, running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, running_var, rtol=1e-12, atol=1e-12)
        assert int(layer.num_batches_tracked) == step + 1
    assert clipped, "the table should exercise the clipping"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_normalizes_with_the_running_statistics(backend):
    layer = layer_with_state(backend=backend).eval()
    x = torch.randn(3, C, 2, 3, dtype=F64)
    shape = (1, C, 1, 1)
    want = (x - layer.running_mean.view(shape)) / torch.sqrt(
        layer.running_var.view(shape) + layer.eps
    ) * layer.weight.view(shape) + layer.bias.view(shape)
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_r_max_one_and_d_max_zero_is_batchnorm_exactly(backend):
    brn = layer_with_state(backend=backend, r_max=1.0, d_max=0.0)
    bn = normlab.BatchNorm2d(C, backend=backend).double()
    bn.load_state_dict(brn.state_dict())
    for _ in range(2):
        x = torch.randn(5, C, 3, 3, dtype=F64, requires_grad=True)
        y_brn, y_bn = brn(x), bn(x)
        assert torch.equal(y_brn, y_bn)
        g = torch.randn_like(y_bn)
        for a, b in zip(torch.autograd.grad(y_brn, (x, brn.weight, brn.bias), g),
                        torch.autograd.grad(y_bn, (x, bn.weight, bn.bias), g)):
            assert torch.equal(a, b)
    for key, value in bn.state_dict().items():
        assert torch.equal(brn.state_dict()[key], value), key
    x = torch.randn(5, C, 3, 3, dtype=F64)
    torch.testing.assert_close(brn.eval()(x), bn.eval()(x), rtol=1e-14, atol=1e-14)


def test_no_gradient_flows_through_r_and_d():
    """The gradient is Algorithm 1's (r and d constants), not the derivative through them."""
    layer = layer_with_state()
    layer.momentum = 0.0  # the same running statistics for both formulas below
    x = (torch.randn(6, C, 3, 2, dtype=F64) * 1.5 + 0.5).requires_grad_()
    g = torch.randn(6, C, 3, 2, dtype=F64)
    options = {"eps": layer.eps, "r_max": 1.5, "d_max": 0.5}
    stats = (layer.running_mean.clone(), layer.running_var.clone())
    constant, _, _ = plain_brn(x, layer.weight, layer.bias, *stats, **options)
    through, _, _ = plain_brn(x, layer.weight, layer.bias, *stats, **options, detach=False)
    (got,) = torch.autograd.grad(layer(x), x, g)
    (want,) = torch.autograd.grad(constant, x, g)
    (other,) = torch.autograd.grad(through, x, g)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (got - other).abs().max() > 1e-3


def test_options_defaults_and_validation():
    options = norm_options("brn")
    assert options["r_max"].default == 1.5 and options["d_max"].default == 0.5
    assert type(normlab.create_norm("batch_renorm", C)) is BatchRenorm2d
    assert type(normlab.create_norm("BatchRenorm", C, dim=1)) is resolve_norm("brn", 1)
    assert "r_max=1.5, d_max=0.5" in repr(normlab.create_norm("brn", C))
    for bad in ({"r_max": 0.5}, {"d_max": -1.0}):
        with pytest.raises(NormConfigError, match="r_max >= 1 and d_max >= 0"):
            normlab.create_norm("brn", C, **bad)
