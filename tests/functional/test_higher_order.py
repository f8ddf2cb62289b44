"""Higher-order gradients: double backward of every norm on every backend.

Tables come from the registries (``normlab.list_norms()`` x dims x ``BACKENDS``), so a newly
registered norm is covered without editing this file.
"""

import copy

import pytest
import torch
from torch import nn

import normlab
from normlab.functional import BACKENDS, use_backend
from normlab.norms import resolve_norm

from .layers import C, keeps_running_stats, make_layer

SHAPES = {1: (3, C, 3), 2: (2, C, 2, 3), 3: (2, C, 2, 1, 2)}


def available_dims(name):
    dims = []
    for dim in SHAPES:
        try:
            resolve_norm(name, dim)
        except ValueError:
            continue
        dims.append(dim)
    return dims


CASES = [(name, dim) for name in normlab.list_norms() for dim in available_dims(name)]


def functional(layer):
    """``f(x, *params)`` calling ``layer`` with the given parameter values."""
    names = [name for name, _ in layer.named_parameters()]

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    return run, [p.detach().clone().requires_grad_(True) for p in layer.parameters()]


def double_backward(layer, x, weight):
    """``sum(grad_x(sum(weight * layer(x)))^2)`` differentiated once more."""
    (grad_x,) = torch.autograd.grad((weight * layer(x)).sum(), x, create_graph=True)
    grad_x.square().sum().backward()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, dim", CASES)
def test_gradgradcheck(name, dim, backend, training):
    """gradgradcheck's fast mode (second derivatives along random directions; the entry by
    entry mode takes ten times longer and is run for one layer below)."""
    layer = make_layer(name, dim, backend, training)
    run, params = functional(layer)
    x = torch.randn(SHAPES[dim], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(run, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradgradcheck_every_entry():
    layer = make_layer("sn", 2, "fused")
    run, params = functional(layer)
    x = torch.randn(SHAPES[2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, dim", CASES)
def test_double_backward_moves_running_stats_once(name, dim, backend):
    layer = make_layer(name, dim, backend)
    if not keeps_running_stats(layer):
        pytest.skip(f"{name} keeps no running statistics")
    once, before = copy.deepcopy(layer), copy.deepcopy(layer)
    x = torch.randn(SHAPES[dim], dtype=torch.float64, requires_grad=True)
    double_backward(layer, x, torch.randn_like(x))
    once(x.detach())
    assert not torch.equal(once.running_mean, before.running_mean)
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, buffer), getattr(once, buffer), rtol=0, atol=0)


@pytest.mark.parametrize("name, dim", CASES)
def test_double_backward_matches_reference(name, dim):
    """Input and parameter gradients of a gradient penalty agree across backends."""
    grads = {}
    for backend in BACKENDS:
        torch.manual_seed(1)
        layer = make_layer(name, dim, backend)
        x = torch.randn(SHAPES[dim], dtype=torch.float64, requires_grad=True)
        double_backward(layer, x, torch.randn_like(x))
        grads[backend] = [x.grad, *(p.grad for p in layer.parameters())]
    for fused, reference in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-10)


def test_layer_changed_between_forward_and_double_backward_raises():
    layer = make_layer("bn", 2, "fused", training=False)
    x = torch.randn(SHAPES[2], dtype=torch.float64, requires_grad=True)
    y = layer(x)
    with torch.no_grad():
        layer.running_mean.add_(1.0)
    with pytest.raises(RuntimeError, match="changed since its forward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    y = layer.train()(x)
    layer.eval()
    with pytest.raises(RuntimeError, match="changed since its forward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.autograd.grad(y.sum(), x)  # a first-order backward uses the saved graph


@pytest.mark.parametrize("name", normlab.list_norms())
def test_double_backward_replays_the_forwards_autocast(name):
    layer = make_layer(name, 2, "fused").float()
    x = torch.randn(SHAPES[2], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    (grad_x,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    grad_x.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def wgan_gp_step(model, real, fake, alpha):
    """One critic step of WGAN-GP (Gulrajani et al. 2017): Wasserstein loss plus 10 x the
    squared deviation of the input-gradient norm from 1 at interpolated samples."""
    interpolated = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(interpolated).sum(), interpolated, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).square().mean()
    loss = model(fake).mean() - model(real).mean() + 10 * penalty
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", normlab.list_norms())
def test_wgan_gp_step_through_converted_resnet_matches_across_backends(name):
    torch_model = normlab.create_model(
        "resnet20", num_classes=1, norm=nn.BatchNorm2d, widths=(4, 8, 8), stem_width=4
    )
    model = normlab.convert_norm(torch_model, name).double().train()
    real, fake = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    grads, states = {}, {}
    for backend in BACKENDS:
        critic = copy.deepcopy(model)
        with use_backend(backend):
            grads[backend] = wgan_gp_step(critic, real, fake, alpha)
        states[backend] = critic.state_dict()
    scale = max(1.0, max(g.abs().max().item() for g in grads["reference"].values()))
    for key, reference in grads["reference"].items():
        torch.testing.assert_close(grads["fused"][key], reference, rtol=0, atol=1e-10 * scale)
    for key, reference in states["reference"].items():  # three forwards, three updates each
        torch.testing.assert_close(states["fused"][key], reference, rtol=1e-12, atol=1e-12)
