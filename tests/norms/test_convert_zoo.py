"""convert_norm on torchvision and timm models: bit-identical "bn", from_bn residuals, report."""

import copy
import functools

import pytest
import torch
from torch import nn

import normlab
from normlab.norms import NormAct, NormBase, resolve_norm

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.slow

MODELS = {
    "timm-resnet50": lambda: timm.create_model("resnet50"),
    "timm-efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
    "timm-convnext_tiny": lambda: timm.create_model("convnext_tiny"),
    "timm-regnety_016": lambda: timm.create_model("regnety_016"),
    "tv-resnet18": lambda: torchvision.models.resnet18(),
    "tv-mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "tv-resnet50-frozen": lambda: torchvision.models.resnet50(
        norm_layer=torchvision.ops.FrozenBatchNorm2d
    ),
}

# Largest |output difference| / max |output| with init="from_bn" (float32, one 32x32 image,
# statistics and affine randomized). Rounding only, the maths is exact: the norms other than
# BN (sn, iebn, bin, ...) compute the BN coefficients in normlab's general order (gamma * s,
# beta + gamma * t) rather than torch's (s * gamma, beta - mean * (s * gamma)). Measured:
# 3.8e-7 (mobilenet) to 1.3e-6 (resnet50s), the same for sn, iebn and bin; bn: 0
# (bit-identical).
def from_bn_tolerance(norm: str) -> float:
    return 0.0 if resolve_norm(norm, 2) is normlab.BatchNorm2d else 5e-6


def randomized(model: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters (else BN is near identity and a
    wrong conversion could go unnoticed), eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "running_var", None) is None:
                continue
            c = module.running_mean.shape[0]
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.75 + 0.5 * torch.rand(c, generator=generator))
            if getattr(module, "weight", None) is not None:
                module.weight.copy_(1 + 0.1 * torch.randn(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
    return model.eval()


@functools.cache
def reference(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = randomized(MODELS[name]())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        return model, x, model(x)


def norm_names(model: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def activations(model: nn.Module) -> list[str]:
    acts = (nn.ReLU, nn.SiLU, nn.Hardswish, nn.GELU)
    return [type(m).__name__ for m in model.modules() if isinstance(m, acts)]


def batch_norms() -> tuple[type, ...]:
    from timm.layers.norm_act import FrozenBatchNormAct2d

    return (nn.modules.batchnorm._BatchNorm, torchvision.ops.FrozenBatchNorm2d,
            FrozenBatchNormAct2d)


@pytest.mark.parametrize("name", MODELS)
def test_convert_to_bn_is_bit_identical_and_reports_every_layer(name):
    original, x, expected = reference(name)
    model = copy.deepcopy(original)
    bns = norm_names(model, batch_norms())
    layer_norms = norm_names(model, (nn.LayerNorm,))
    acts = activations(model)
    model, report = normlab.convert_norm(model, "bn", return_report=True)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out, expected)
    assert [n for n, *_ in report.converted] == bns
    assert [n for n, *_ in report.left] == layer_norms
    assert not norm_names(model, batch_norms())
    assert activations(model) == acts  # every activation kept, in place and in kind
    frozen = name.endswith("frozen")
    assert all(normlab.norms.is_frozen(m) == frozen for m in model.modules()
               if isinstance(m, NormBase))
    if frozen:
        assert not any(p.requires_grad for m in model.modules() if isinstance(m, NormBase)
                       for p in m.parameters(recurse=False))


def from_bn_cases():
    """Every model with BNs x every norm that can start as BN (the others refuse:
    test_norm_act.py::test_init_from_bn_refuses_norms_that_cannot_start_as_bn)."""
    return [(model, norm) for model in MODELS if model != "timm-convnext_tiny"
            for norm in normlab.list_norms() if hasattr(resolve_norm(norm, 2), "start_from_bn")]


@pytest.mark.parametrize("name, norm", from_bn_cases())
def test_from_bn_starts_at_the_bn_function(name, norm):
    original, x, expected = reference(name)
    model = copy.deepcopy(original)
    model, report = normlab.convert_norm(model, norm, init="from_bn", return_report=True)
    assert all("from_bn: exact" in note for *_, note in report.converted)
    with torch.no_grad():
        out = model(x)
    residual = ((out - expected).abs().max() / expected.abs().max()).item()
    assert residual <= from_bn_tolerance(norm)


def test_timm_norm_act_layers_keep_act_and_drop_path():
    from timm.layers import BatchNormAct2d, DropPath

    layer = BatchNormAct2d(4, act_layer=nn.SiLU, drop_layer=functools.partial(DropPath, 0.5))
    randomized(layer)
    new = normlab.convert_norm(layer, "sn")
    assert type(new).__name__ == "SwitchNormAct2d" and isinstance(new, NormAct)
    assert new.act is layer.act and new.drop is layer.drop
    x = torch.randn(2, 4, 5, 5)
    bn = normlab.convert_norm(copy.deepcopy(layer), "bn")
    with torch.no_grad():
        assert torch.equal(bn(x), layer(x))
        assert (bn(-1e3 * x.abs()) > -1.0).all()  # SiLU applied


def test_channels_last_layout_is_kept_and_bit_identical():
    original, x, _ = reference("tv-resnet18")
    model = copy.deepcopy(original).to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
        normlab.convert_norm(model, "bn")
        out = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)


def test_frozen_batchnorm_round_trip_keeps_frozen_behaviour():
    layer = randomized(torchvision.ops.FrozenBatchNorm2d(6))
    new = normlab.convert_norm(layer, "bn").train()
    x = torch.randn(3, 6, 4, 4)
    assert torch.equal(new(x), layer(x))  # training mode, still the running statistics
    assert int(new.num_batches_tracked) == 0
    assert not any(p.requires_grad for p in new.parameters())


def test_timm_models_build_with_normlab_layers_and_train():
    model = timm.create_model("resnet10t", num_classes=3, norm_layer=normlab.norm_layer("sn"))
    assert sum(isinstance(m, normlab.SwitchNorm2d) for m in model.modules()) > 5
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_timm_norm_act_factory_builds_normlab_norm_act_layers():
    from timm.layers import create_norm_act_layer, get_norm_act_layer

    factory = normlab.norm_act("iebn", act_layer=nn.SiLU)
    layer = create_norm_act_layer(factory, 8, apply_act=True)
    assert type(layer).__name__ == "IEBNAct2d" and isinstance(layer.act, nn.SiLU)
    assert isinstance(get_norm_act_layer(factory, act_layer=nn.ReLU)(8, apply_act=False).act,
                      nn.Identity)
    with pytest.raises(TypeError, match="no act_layer was bound"):
        create_norm_act_layer(normlab.norm_act("sn"), 8, act_layer=nn.SiLU)
    model = timm.create_model(
        "efficientnet_b0", num_classes=3, norm_layer=normlab.norm_act("bin", act_layer=nn.SiLU)
    )
    names = {type(m).__name__ for m in model.modules() if isinstance(m, NormBase)}
    assert names == {"BatchInstanceNormAct2d"}
    expected = activations(timm.create_model("efficientnet_b0", num_classes=3))
    assert activations(model) == expected
    model(torch.randn(2, 3, 64, 64)).sum().backward()  # BIN's IN branch: maps > 1x1


def test_torchvision_models_build_with_normlab_layers_and_train():
    model = torchvision.models.resnet18(num_classes=3, norm_layer=normlab.norm_layer("iebn"))
    assert sum(isinstance(m, normlab.IEBN2d) for m in model.modules()) == 20
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.bn1.gate_weight.grad is not None


def test_timm_group_norm_act_converts_on_request_with_its_activation():
    from timm.layers import GroupNormAct

    layer = GroupNormAct(8, num_groups=4, act_layer=nn.GELU).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    assert normlab.convert_norm(layer, "bn") is layer  # GN is not converted unless asked
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    new, report = normlab.convert_norm(copy.deepcopy(layer), "gn", source="gn",
                                       return_report=True)
    assert type(new).__name__ == "GroupNormAct2d" and new.num_groups == 4
    assert isinstance(new.act, nn.GELU)
    assert report.converted[0][3] == "dim ASSUMED 2d (pass example_inputs= to measure it)"
    torch.testing.assert_close(new(x), layer(x), rtol=1e-12, atol=1e-12)
