"""Identities between normalizers, and equality with torch's own layers."""

import pytest
import torch
from torch import nn

import normlab
from normlab.functional import BACKENDS

C = 6


def x4(n=5, c=C):
    return torch.randn(n, c, 4, 3, dtype=torch.float64) * 3 + 2


def same_params(dst, src):
    dst.load_state_dict(src.state_dict(), strict=False)
    return dst


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("rho, other", [(1.0, "bn"), (0.0, "in")])
def test_bin_gate_extremes_equal_bn_and_in(rho, other, training):
    bin_layer = normlab.BatchInstanceNorm2d(C).double()
    with torch.no_grad():
        bin_layer.gate.fill_(rho)
        bin_layer.weight.uniform_(0.5, 1.5)
        bin_layer.running_var.uniform_(0.5, 2.0)
    ref = same_params(normlab.create_norm(other, C).double(), bin_layer)
    bin_layer.train(training)
    ref.train(training)
    x = x4()
    torch.testing.assert_close(bin_layer(x), ref(x))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("index, other", [(0, "in"), (1, "ln"), (2, "bn")])
def test_hardened_switchnorm_equals_the_selected_norm(index, other, training):
    sn = normlab.SwitchNorm2d(C).double()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill(0, torch.tensor(index), 3))
        sn.var_weight.copy_(sn.mean_weight)
        sn.running_mean.normal_()
    sn.harden()
    assert sn.selected() == (other, other)
    assert not sn.mean_weight.requires_grad
    ref = same_params(normlab.create_norm(other, C).double(), sn)
    sn.train(training)
    ref.train(training)
    x = x4()
    torch.testing.assert_close(sn(x), ref(x))


def test_soft_switchnorm_with_saturated_logits_approaches_bn():
    sn = normlab.SwitchNorm2d(C).double()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([-40.0, -40.0, 40.0]))
        sn.var_weight.copy_(sn.mean_weight)
    x = x4()
    torch.testing.assert_close(sn(x), normlab.BatchNorm2d(C).double()(x))


@pytest.mark.parametrize("groups, other", [(1, "ln"), (C, "in")])
def test_groupnorm_extremes_equal_ln_and_in(groups, other):
    gn = normlab.GroupNorm2d(C, num_groups=groups).double()
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    ref = same_params(normlab.create_norm(other, C).double(), gn)
    x = x4()
    torch.testing.assert_close(gn(x), ref(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize(
    "ours, theirs, shape",
    [
        (normlab.BatchNorm1d, nn.BatchNorm1d, (8, C)),
        (normlab.BatchNorm1d, nn.BatchNorm1d, (8, C, 5)),
        (normlab.BatchNorm2d, nn.BatchNorm2d, (8, C, 4, 4)),
        (normlab.BatchNorm3d, nn.BatchNorm3d, (8, C, 2, 3, 3)),
    ],
)
def test_batchnorm_equals_torch(ours, theirs, shape, momentum, backend):
    a = ours(C, momentum=momentum, backend=backend).double()
    b = theirs(C, momentum=momentum).double()
    with torch.no_grad():
        b.weight.normal_()
        b.bias.normal_()
    a.load_state_dict(b.state_dict())
    for step in range(3):
        x = (torch.randn(shape, dtype=torch.float64) * (step + 1) + step).requires_grad_()
        ya, yb = a(x), b(x)
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        got = torch.autograd.grad(ya, [x, a.weight, a.bias], g)
        want = torch.autograd.grad(yb, [x, b.weight, b.bias], g)
        for u, v in zip(got, want):
            torch.testing.assert_close(u, v)
    for key, value in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[key], value)
    a.eval()
    b.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))


def test_instancenorm_with_running_stats_equals_torch():
    a = normlab.InstanceNorm2d(C, track_running_stats=True).double()
    b = nn.InstanceNorm2d(C, affine=True, track_running_stats=True).double()
    with torch.no_grad():
        b.weight.normal_()
    a.load_state_dict(b.state_dict())
    for _ in range(2):
        x = x4()
        torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.running_var, b.running_var)
    a.eval()
    b.eval()
    x = x4()
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_groupnorm_and_layernorm_equal_torch_groupnorm(groups):
    b = nn.GroupNorm(groups, C).double()
    with torch.no_grad():
        b.weight.normal_()
        b.bias.normal_()
    a = normlab.GroupNorm2d(C, num_groups=groups).double()
    a.load_state_dict(b.state_dict())
    x = x4()
    torch.testing.assert_close(a(x), b(x))
    if groups == 1:
        ln = normlab.LayerNorm2d(C).double()
        ln.load_state_dict(b.state_dict())
        torch.testing.assert_close(ln(x), b(x))


def test_iebn_at_init_is_bn_scaled_by_gate_of_minus_one():
    """gamma_hat = 0, beta_hat = -1: every gate is sigmoid(-1) ~ 0.269 (authors' BAN2d)."""
    iebn, bn = normlab.IEBN2d(C).double(), normlab.BatchNorm2d(C).double()
    x = x4()
    torch.testing.assert_close(iebn(x), bn(x) * torch.sigmoid(torch.tensor(-1.0)).item())


def test_noise_attack_is_absorbed_by_gamma_and_beta():
    """IEBN paper Eqn. 12: (x_hat*Na + Nb)*gamma + beta = x_hat*(Na*gamma) + (Nb*gamma + beta)."""
    noisy, clean = normlab.BatchNorm2d(C).double(), normlab.BatchNorm2d(C).double()
    with torch.no_grad():
        noisy.weight.uniform_(0.5, 1.5)
        noisy.bias.normal_()
        clean.weight.copy_(noisy.weight * 0.8)
        clean.bias.copy_(noisy.weight * 0.3 + noisy.bias)
    normlab.set_noise(noisy, (0.8, 0.3))
    x = x4()
    torch.testing.assert_close(noisy(x), clean(x))
    normlab.set_noise(noisy, None)
    assert noisy.noise is None


def test_virtual_batches_equal_separate_batches():
    a = normlab.BatchNorm2d(C, virtual_batch_size=2).double()
    b = normlab.BatchNorm2d(C).double()
    x = x4(n=6)
    expected = torch.cat([b(chunk) for chunk in x.split(2)])
    torch.testing.assert_close(a(x), expected)
