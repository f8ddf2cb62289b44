"""``torch.func`` transforms (grad, vmap over parameters or inputs, jacrev) on every norm and
backend: supported exactly where torch's ``nn.BatchNorm2d`` supports them, with the values
of plain autograd on the reference backend.

torch refuses a transform that would update running statistics from a tracked or batched
value (``grad``/``jacrev`` in training with running statistics, ``vmap`` over inputs in
training with running statistics); a normlab layer refuses the same ones, with a
RuntimeError as torch's.
"""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import normlab
from normlab.functional import BACKENDS

from .layers import C, keeps_running_stats, make_layer, track_options

SHAPE = (3, C, 2, 3)
COPIES = 3
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def params_of(layer):
    return {name: p.detach().clone() for name, p in layer.named_parameters()}


def batched(params):
    return {name: p + 0.1 * torch.randn(COPIES, *p.shape, dtype=p.dtype) for name, p in
            params.items()}


def loss(layer, params, x):
    return functional_call(layer, params, (x,)).square().sum()


def run_grad(layer, x):
    return grad(lambda p: loss(layer, p, x))(params_of(layer))


def want_grad(layer, x):
    params = {name: p.requires_grad_(True) for name, p in params_of(layer).items()}
    values = torch.autograd.grad(loss(layer, params, x), list(params.values()))
    return dict(zip(params, values))


def run_vmap_params(layer, x):
    torch.manual_seed(2)
    return vmap(lambda p: functional_call(layer, p, (x,)))(batched(params_of(layer)))


def want_vmap_params(layer, x):
    torch.manual_seed(2)
    stacked = batched(params_of(layer))
    return torch.stack([
        functional_call(layer, {k: v[i] for k, v in stacked.items()}, (x,))
        for i in range(COPIES)
    ])


def inputs(x):
    """``COPIES`` different inputs: x, 2x, 3x, ..."""
    return [x * (i + 1.0) for i in range(COPIES)]


def run_vmap_inputs(layer, x):
    return vmap(layer)(torch.stack(inputs(x)))


def want_vmap_inputs(layer, x):
    return torch.stack([layer(xi) for xi in inputs(x)])


def run_jacrev(layer, x):
    return jacrev(layer)(x)


def want_jacrev(layer, x):
    return torch.autograd.functional.jacobian(layer, x)


TRANSFORMS = {
    "grad": (run_grad, want_grad),
    "vmap_params": (run_vmap_params, want_vmap_params),
    "vmap_inputs": (run_vmap_inputs, want_vmap_inputs),
    "jacrev": (run_jacrev, want_jacrev),
}


def torch_supports(transform, training, track):
    """Whether torch's BatchNorm2d, with the same mode and running statistics, takes it."""
    layer = nn.BatchNorm2d(C, track_running_stats=bool(track)).double().train(training)
    try:
        TRANSFORMS[transform][0](layer, torch.randn(SHAPE, dtype=torch.float64))
    except RuntimeError:
        return False
    return True


def test_torch_batchnorm_support_table():
    """What the table below is matched against (torch 2.14)."""
    refused = {
        (transform, training, track)
        for transform in TRANSFORMS
        for training in (True, False)
        for track in (True, False)
        if not torch_supports(transform, training, track)
    }
    assert refused == {
        ("grad", True, True), ("jacrev", True, True), ("vmap_inputs", True, True)
    }


CASES = [
    (name, track, backend, training, transform)
    for name in normlab.list_norms()
    for track in track_options(name)
    for backend in BACKENDS
    for training in (True, False)
    for transform in TRANSFORMS
]


@pytest.mark.parametrize("name, track, backend, training, transform", CASES)
def test_transform_matches_torch_support_and_reference_values(
    name, track, backend, training, transform
):
    layer = make_layer(name, 2, backend, training, track)
    x = torch.randn(SHAPE, dtype=torch.float64)
    run, want = TRANSFORMS[transform]
    keeps_stats = keeps_running_stats(layer)
    if not torch_supports(transform, training, keeps_stats):
        with pytest.raises(RuntimeError):
            run(layer, x)
        return
    eager, once = copy.deepcopy(layer), copy.deepcopy(layer)
    eager.backend = "reference"
    got, expected = run(layer, x), want(eager, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    if keeps_stats and transform == "vmap_params":  # one forward, one update
        once(x)
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(layer, buffer), getattr(once, buffer))
