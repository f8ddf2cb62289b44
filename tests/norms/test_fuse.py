"""normlab.fuse_for_inference: per-channel-affine eval norms fold into the preceding conv,
the rest keep their eval forward; outputs equal the unfused model (float32, 1e-5 relative)
and the fused model scripts."""

import copy

import pytest
import torch
from torch import nn

import normlab
from normlab.models.cifar_resnet import CifarResNet
from normlab.models.resnet_blocks import PreActBasicBlock
from normlab.norms import ChannelAffine, EvalNorm, NormBase
from normlab.norms.fuse import channel_affine
from tests.norms.tables import EveryNorm

NORMS = normlab.list_norms()


def perturb(model):
    """Random parameters and running statistics in every normlab layer (gates kept: BIN's
    rho = 1 and IEBN's gate_weight = 0 are the folding cases; see test_fold_rules)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, NormBase):
                continue
            for key in ("weight", "bias"):
                p = getattr(layer, key, None)
                if p is not None:
                    p.add_(0.2 * torch.randn_like(p))
            if getattr(layer, "running_mean", None) is not None:
                layer.running_mean.normal_()
                layer.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_resnet(name, block=None):
    torch.manual_seed(0)
    if block is not None:
        return CifarResNet(block, 1, widths=(4, 8, 8), stem_width=4, num_classes=3, norm=name)
    return normlab.create_model("resnet20", num_classes=3, norm=name, widths=(4, 8, 8),
                                stem_width=4)


def assert_relative(actual, expected, tol=1e-5):
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert error <= tol, f"relative error {error:.2e} > {tol}"


def expect_folded(name):
    """Whether the layers of ``name``, as perturbed above, are per-channel affine in eval
    (BN and BRN; BIN at rho = 1, IEBN with gate_weight = 0): ``y(x) = A * x + B`` with
    ``B = y(0)`` and ``A = y(1) - y(0)`` holds on a random input."""
    layer = perturb(nn.Sequential(normlab.create_norm(name, 4))).double()
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        shift = layer(torch.zeros_like(x))
        scale = layer(torch.ones_like(x)) - shift
        return bool(torch.allclose(layer(x), scale * x + shift, rtol=1e-9, atol=1e-9))


def test_fused_resnet20_with_every_norm_equals_unfused_and_scripts():
    """One resnet20 whose norms cycle through every registered norm: each layer folds into
    its conv or is wrapped as its norm's measured folding says."""
    norm = EveryNorm()
    model = perturb(tiny_resnet(norm))
    fused = normlab.fuse_for_inference(model)
    folds = {name: expect_folded(name) for name in set(norm.built)}
    folded = sum(isinstance(m, nn.Identity) for m in fused.modules())
    wrapped = sum(isinstance(m, EvalNorm) for m in fused.modules())
    assert set(norm.built) == set(NORMS)
    assert folded == sum(folds[name] for name in norm.built)
    assert wrapped == sum(not folds[name] for name in norm.built)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert_relative(fused(x), expected)
        scripted = torch.jit.script(fused)
        assert_relative(scripted(x), expected)
        other = torch.randn(3, 3, 12, 10)
        assert_relative(scripted(other), model(other))
    fused.train()  # a fused model stays an inference model
    with torch.no_grad():
        assert_relative(fused(x), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", NORMS)
def test_fused_torchvision_resnet18_equals_unfused(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = perturb(normlab.convert_norm(torchvision.models.resnet18(num_classes=3), name))
    fused = normlab.fuse_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_relative(fused(x), model(x))
    # BN, and IN converted from BN (running statistics kept) read no moments in eval
    if name in ("bn", "in") and all(m.track_running_stats for m in model.modules()
                                    if isinstance(m, NormBase) and hasattr(m, "running_mean")):
        assert not any(isinstance(m, (NormBase, EvalNorm)) for m in fused.modules())


def test_fold_rules():
    """Sample-independent eval layers are recognised from the layer's own state; the
    coefficients then equal those of the layer's forward on any input."""
    sn = normlab.SwitchNorm2d(4)
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([0.0, 0.0, 2.0]))
        sn.var_weight.copy_(torch.tensor([0.0, 0.0, 2.0]))
    bin_ = normlab.BatchInstanceNorm2d(4)
    iebn = normlab.IEBN2d(4)
    for layer in (sn, bin_, iebn):
        perturb(layer)
    assert channel_affine(sn) is None  # soft ratios read the sample
    sn.harden()
    cases = [sn, bin_, iebn, perturb(normlab.BatchNorm2d(4)),
             perturb(normlab.InstanceNorm2d(4, track_running_stats=True))]
    x = 3 * torch.randn(2, 4, 5, 5) + 1
    for layer in cases:
        scale, shift = channel_affine(layer)
        with torch.no_grad():
            torch.testing.assert_close(
                ChannelAffine(scale, shift)(x), layer(x), rtol=1e-5, atol=1e-5
            )
    with torch.no_grad():
        bin_.gate[0] = 0.5
        iebn.gate_weight[0] = 0.1
    assert channel_affine(bin_) is None and channel_affine(iebn) is None
    assert channel_affine(sn.train()) is None  # training uses batch statistics
    assert channel_affine(normlab.InstanceNorm2d(4).eval()) is None
    assert channel_affine(normlab.BatchNorm2d(4, track_running_stats=False).eval()) is None


def test_preactivation_norms_are_not_folded_into_the_next_conv():
    """In a pre-activation unit bn1 precedes conv1: it becomes a ChannelAffine, while the
    norm after conv1 folds."""
    model = perturb(tiny_resnet("bn", PreActBasicBlock))
    fused = normlab.fuse_for_inference(model)
    assert any(isinstance(m, ChannelAffine) for m in fused.modules())
    assert any(isinstance(m, nn.Identity) for m in fused.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_relative(fused(x), model(x))


class SharedConv(nn.Module):
    """A conv whose output feeds a norm and the shortcut: folding would change the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = normlab.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, Sequential pairs still fold."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(3, 4, 3), normlab.BatchNorm1d(4), nn.ReLU())

    def forward(self, x):
        return self.body(x) if x.sum() > 0 else -self.body(x)


@pytest.mark.parametrize("make, folded, affine", [(SharedConv, 0, 1), (Untraceable, 1, 0)])
def test_folds_only_where_the_conv_feeds_the_norm_alone(make, folded, affine):
    torch.manual_seed(0)
    model = perturb(make())
    fused = normlab.fuse_for_inference(model)
    assert sum(isinstance(m, nn.Identity) for m in fused.modules()) == folded
    assert sum(isinstance(m, ChannelAffine) for m in fused.modules()) == affine
    x = torch.randn(2, 3, 6) if make is Untraceable else torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert_relative(fused(x.abs()), model(x.abs()))


def test_fuse_leaves_the_model_alone_and_refuses_training_mode():
    model = perturb(tiny_resnet("bn"))
    before = copy.deepcopy(model.state_dict())
    normlab.fuse_for_inference(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="eval mode"):
        normlab.fuse_for_inference(model.train())
    model.eval().layer1[0].bn1.train()
    with pytest.raises(ValueError, match="eval mode"):
        normlab.fuse_for_inference(model)


def test_channel_affine_takes_flat_and_spatial_inputs():
    affine = ChannelAffine(torch.tensor([2.0, 3.0]), torch.tensor([1.0, -1.0]))
    x = torch.randn(5, 2)
    torch.testing.assert_close(affine(x), x * torch.tensor([2.0, 3.0]) + torch.tensor([1.0, -1.0]))
    assert torch.jit.script(affine)(torch.ones(1, 2, 3)).tolist() == [[[3.0] * 3, [2.0] * 3]]


class BNReLU(normlab.BatchNorm2d):
    """A norm+activation layer in timm's convention: act(drop(norm(x)))."""

    def __init__(self, channels):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class BNSquared(normlab.BatchNorm2d):
    """A forward that is not the norm's affine map: never folded."""

    def forward(self, x):
        return super().forward(x) ** 2


@pytest.mark.parametrize("layer, folds", [(BNReLU, True), (BNSquared, False)])
def test_norm_activation_layers_fold_with_their_activation_kept(layer, folds):
    torch.manual_seed(0)
    model = perturb(nn.Sequential(nn.Conv2d(3, 4, 3), layer(4), nn.Conv2d(4, 4, 1), layer(4)))
    fused = normlab.fuse_for_inference(model)
    assert any(isinstance(m, NormBase) for m in fused.modules()) != folds
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert_relative(fused(x), model(x))


@pytest.mark.slow
def test_fused_timm_efficientnet_keeps_its_activations():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = perturb(normlab.convert_norm(timm.create_model("efficientnet_b0", num_classes=3), "bn"))
    fused = normlab.fuse_for_inference(model)
    assert not any(isinstance(m, NormBase) for m in fused.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_relative(fused(x), model(x))
