"""Every layer, in training and eval, in 1d/2d/3d, on both backends, equals the plain
formulas of plain.py in float64: outputs, input and parameter gradients, running stats."""

import pytest
import torch

import normlab
from normlab.functional import BACKENDS
from tests.norms import plain

C = 4
SHAPES = {
    "1d-flat": (1, (6, C)),
    "1d": (1, (6, C, 5)),
    "2d": (2, (6, C, 3, 4)),
    "3d": (3, (6, C, 2, 3, 2)),
}
CASES = {
    "bn": ("bn", {}),
    "bn-virtual": ("bn", {"virtual_batch_size": 2}),
    "bn-virtual-ragged": ("bn", {"virtual_batch_size": 4}),
    "bn-cumulative": ("bn", {"momentum": None}),
    "bn-noise": ("bn", {}),
    "in": ("in", {}),
    "ln": ("ln", {}),
    "gn": ("gn", {"num_groups": 2}),
    "sn": ("sn", {}),
    "sn-gn": ("sn", {"normalizers": ("in", "ln", "bn", "gn"), "num_groups": 2}),
    "sn-virtual-noise": ("sn", {"virtual_batch_size": 3}),
    "iebn": ("iebn", {}),
    "iebn-fc-both": ("iebn", {"operator": "fc", "reduction": 2, "position": "both"}),
    "iebn-identity-beta-tanh": (
        "iebn",
        {"operator": "identity", "position": "beta", "activation": "tanh"},
    ),
    "iebn-relu": ("iebn", {"activation": "relu", "gate_init": (0.5, 0.5)}),
    "iebn-softmax-noise": ("iebn", {"activation": "softmax"}),
    "bin": ("bin", {}),
    "bin-virtual-noise": ("bin", {"virtual_batch_size": 3}),
}
NEEDS_SPATIAL = {"in", "bin", "sn-gn"}
VALID = [
    (case, shape)
    for case in CASES
    for shape in SHAPES
    if not (shape == "1d-flat" and (case in NEEDS_SPATIAL or CASES[case][0] in NEEDS_SPATIAL))
]


def randomized(layer):
    """Move every parameter and buffer away from its initial value."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name == "gate":
                p.uniform_(0.0, 1.0)
            elif name == "weight":
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.5 * torch.randn_like(p))
        if getattr(layer, "running_mean", None) is not None:
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
    if "noise" in case_name(layer):
        layer.noise = (0.8, 0.3)
    return layer


def case_name(layer):
    return getattr(layer, "_case", "")


def plain_forward(kind, layer, x, p, batch, training):
    eps, noise = layer.eps, layer.noise
    if kind == "bn":
        x_hat = plain.normalize(x, *batch(x, training), eps)
        return plain.affine(x_hat, p["weight"], p["bias"], x, noise=noise)
    if kind == "in":
        return plain.affine(plain.normalize(x, *plain.instance_stats(x), eps), p["weight"],
                            p["bias"], x, noise=noise)
    if kind == "ln":
        return plain.affine(plain.normalize(x, *plain.layer_stats(x), eps), p["weight"],
                            p["bias"], x, noise=noise)
    if kind == "gn":
        stats = plain.group_stats(x, layer.num_groups)
        return plain.affine(plain.normalize(x, *stats, eps), p["weight"], p["bias"], x,
                            noise=noise)
    if kind == "sn":
        params = {**p, "num_groups": layer.num_groups}
        stats = plain.switch_stats(x, params, layer.normalizers, batch, training)
        return plain.affine(plain.normalize(x, *stats, eps), p["weight"], p["bias"], x,
                            noise=noise)
    if kind == "iebn":
        x_hat = plain.normalize(x, *batch(x, training), eps)
        delta = plain.iebn_gate(x, p, layer.operator, layer.activation)
        gamma_gate = delta if layer.position in ("gamma", "both") else None
        beta_gate = delta if layer.position in ("beta", "both") else None
        return plain.affine(x_hat, p["weight"], p["bias"], x, gamma_gate, beta_gate, noise)
    if kind == "bin":
        rho = plain.per_channel(p["gate"], x)
        x_hat = rho * plain.normalize(x, *batch(x, training), eps) + (1 - rho) * plain.normalize(
            x, *plain.instance_stats(x), eps
        )
        return plain.affine(x_hat, p["weight"], p["bias"], x, noise=noise)
    raise AssertionError(kind)


def build(case, dim):
    kind, kwargs = CASES[case]
    layer = normlab.create_norm(kind, C, dim=dim, **kwargs).double()
    layer._case = case
    return kind, randomized(layer)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case, shape", VALID)
def test_layer_equals_plain_formulas(case, shape, training, backend):
    dim, size = SHAPES[shape]
    kind, layer = build(case, dim)
    layer.backend = backend
    layer.train(training)
    x = (torch.randn(size, dtype=torch.float64) * 2 + 1).requires_grad_()
    params = dict(layer.named_parameters())
    reference = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    running = getattr(layer, "running_mean", None)
    batch = None
    if running is not None:
        batch = plain.BatchStats(layer.running_mean, layer.running_var, layer.momentum,
                                 layer.virtual_batch_size)
    elif kind in ("bn", "iebn", "bin") or "bn" in getattr(layer, "normalizers", ()):
        pytest.fail("layer without running statistics in parity cases")

    y = layer(x)
    y_ref = plain_forward(kind, layer, x, reference, batch, training)
    torch.testing.assert_close(y, y_ref)

    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *params.values()], grad, allow_unused=True)
    want = torch.autograd.grad(y_ref, [x, *reference.values()], grad, allow_unused=True)
    for name, g, w in zip(["input", *params], got, want):
        g = torch.zeros_like(x if name == "input" else params[name]) if g is None else g
        w = torch.zeros_like(g) if w is None else w
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"grad of {name}: {m}")
    if running is not None:
        torch.testing.assert_close(layer.running_mean, batch.running_mean)
        torch.testing.assert_close(layer.running_var, batch.running_var)


@pytest.mark.parametrize("case", ["bn", "sn", "iebn-fc-both", "bin"])
def test_backends_agree_over_several_steps(case):
    layers = {b: build(case, 2)[1] for b in BACKENDS}
    layers["fused"].load_state_dict(layers["reference"].state_dict())
    for b, layer in layers.items():
        layer.backend = b
    for _ in range(3):
        x = torch.randn(5, C, 3, 3, dtype=torch.float64, requires_grad=True)
        outs = {b: layer(x) for b, layer in layers.items()}
        torch.testing.assert_close(outs["reference"], outs["fused"])
        grads = {b: torch.autograd.grad(outs[b].square().sum(), x)[0] for b in BACKENDS}
        torch.testing.assert_close(grads["reference"], grads["fused"])
    for key, value in layers["reference"].state_dict().items():
        torch.testing.assert_close(layers["fused"].state_dict()[key], value)
