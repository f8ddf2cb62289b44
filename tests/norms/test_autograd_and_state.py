"""gradcheck on tiny shapes, state-dict round trips, the public parameter contract, and
torch.compile(fullgraph=True) parity."""

import io

import pytest
import torch

import normlab
from tests.norms.tables import norm_variants

C = 4
VARIANTS = norm_variants()


def layer_for(variant, dim=2, **extra):
    name, kwargs = VARIANTS[variant]
    layer = normlab.create_norm(name, C, dim=dim, **{**kwargs, **extra}).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name == "gate":
                p.uniform_(0.2, 0.8)
            else:
                p.add_(0.2 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_fused_backend(variant, training):
    name = VARIANTS[variant][0]
    exact = normlab.norms.norm_info(name).gradcheck_kwargs if training else {}
    layer = layer_for(variant, backend="fused", **exact).train(training)
    x = torch.randn(3, C, 2, 3, dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.parameters()]
    names = list(dict(layer.named_parameters()))

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    if training and getattr(layer, "momentum", None) is not None:
        layer.momentum = 0.0
    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_round_trip(variant):
    layer = layer_for(variant)
    layer(torch.randn(4, C, 3, 3, dtype=torch.float64))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    name, kwargs = VARIANTS[variant]
    fresh = normlab.create_norm(name, C, **kwargs).double()
    fresh.load_state_dict(torch.load(buffer))
    for key, value in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    layer.eval()
    fresh.eval()
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), layer(x))


def test_hardened_switchnorm_round_trips_its_hard_flag():
    sn = normlab.SwitchNorm2d(C)
    sn.harden()
    fresh = normlab.SwitchNorm2d(C)
    fresh.load_state_dict(sn.state_dict())
    assert fresh.hard and not fresh.mean_weight.requires_grad
    assert "hard" not in normlab.SwitchNorm2d(C).state_dict()


def test_public_parameter_contract():
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    bn_keys = {"weight": (C,), "bias": (C,), "running_mean": (C,), "running_var": (C,),
               "num_batches_tracked": ()}
    assert shapes(normlab.BatchNorm2d(C)) == bn_keys
    assert shapes(normlab.IEBN2d(C)) == {**bn_keys, "gate_weight": (C,), "gate_bias": (C,)}
    assert shapes(normlab.SwitchNorm2d(C)) == {**bn_keys, "mean_weight": (3,), "var_weight": (3,)}
    assert shapes(normlab.BatchInstanceNorm2d(C)) == {**bn_keys, "gate": (C,)}
    iebn = normlab.IEBN2d(C)
    assert torch.all(iebn.gate_weight == 0) and torch.all(iebn.gate_bias == -1)
    sn = normlab.SwitchNorm2d(C)
    assert sn.normalizers == ("in", "ln", "bn") and torch.all(sn.mean_weight == 1)
    assert normlab.SwitchNorm1d(C).normalizers == ("ln", "bn")
    assert normlab.SwitchNorm2d(C, using_bn=False).normalizers == ("in", "ln")
    assert "running_mean" not in normlab.SwitchNorm2d(C, using_bn=False).state_dict()
    assert torch.all(normlab.SwitchNorm2d(C, last_gamma=True).weight == 0)
    assert torch.all(normlab.BatchInstanceNorm2d(C).gate == 1)
    for cls in (normlab.IEBN2d, normlab.SwitchNorm2d, normlab.BatchInstanceNorm2d):
        assert not isinstance(cls(C), torch.nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compile_fullgraph_matches_eager(variant, training):
    torch._dynamo.reset()
    eager = layer_for(variant).train(training)
    compiled_layer = layer_for(variant).train(training)
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, backend="eager", fullgraph=True)
    for _ in range(2):
        x = torch.randn(4, C, 3, 3, dtype=torch.float64, requires_grad=True)
        y_eager, y_compiled = eager(x), compiled(x)
        torch.testing.assert_close(y_compiled, y_eager)
        g = torch.randn_like(y_eager)
        torch.testing.assert_close(
            torch.autograd.grad(y_compiled, x, g)[0], torch.autograd.grad(y_eager, x, g)[0]
        )
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled_layer.state_dict()[key], value)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outputs_can_be_modified_in_place(variant):
    """Networks apply ReLU(inplace=True) right after the norm."""
    grads = {}
    for backend in ("reference", "fused"):
        torch.manual_seed(3)
        layer = layer_for(variant, backend=backend)
        x = torch.randn(4, C, 3, 3, dtype=torch.float64, requires_grad=True)
        y = torch.relu_(layer(x))
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads[backend] = x.grad
    torch.testing.assert_close(grads["fused"], grads["reference"])
