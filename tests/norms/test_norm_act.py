"""Norm+act layers, norm_layer factories, freezing, and convert_norm's sources, filters,
dimensionality and report on small torch-only models."""

import copy
import functools
import logging
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import normlab
from normlab.norms import NormAct, NormBase, norm_act_class, resolve_norm


def registered_classes():
    return [resolve_norm(name, dim) for name in normlab.list_norms() for dim in (1, 2, 3)]


def example_input(dim: int, channels: int = 4) -> torch.Tensor:
    return torch.randn(3, channels, *{1: (5,), 2: (3, 4), 3: (2, 3, 2)}[dim])


@pytest.mark.parametrize("cls", registered_classes(), ids=lambda c: c.__name__)
def test_norm_act_is_the_norm_then_drop_then_act_with_the_norms_state_dict(cls):
    act_cls = norm_act_class(cls)
    assert issubclass(act_cls, cls) and act_cls.__name__ == cls.__name__[:-2] + "Act" + \
        cls.__name__[-2:]
    torch.manual_seed(0)
    norm = cls(4)
    layer = act_cls(4, act_layer=nn.Tanh, drop_layer=functools.partial(nn.Dropout, 0.0))
    assert layer.state_dict().keys() == norm.state_dict().keys()
    layer.load_state_dict(norm.state_dict())
    x = example_input(cls.dim)
    torch.testing.assert_close(layer(x), torch.tanh(norm(x)))
    assert isinstance(act_cls(4, apply_act=False).act, nn.Identity)
    assert isinstance(act_cls(4, act_layer="silu").act, nn.SiLU)
    copy = pickle.loads(pickle.dumps(layer))
    assert type(copy) is act_cls
    torch.testing.assert_close(copy(x), layer(x))


def test_norm_act_function_binds_the_activation_or_refuses():
    build = normlab.norm_act("sn", act_layer=nn.SiLU, momentum=0.2)
    layer = build(6, inplace=False)
    assert isinstance(layer, normlab.SwitchNorm2d) and isinstance(layer, NormAct)
    assert isinstance(layer.act, nn.SiLU) and not layer.act.inplace and layer.momentum == 0.2
    assert isinstance(normlab.norm_act("bn")(6, apply_act=False).act, nn.Identity)
    with pytest.raises(TypeError, match="no act_layer was bound or passed"):
        normlab.norm_act("bn")(6)
    with pytest.raises(ValueError, match="unknown activation"):
        normlab.norm_act("bn", act_layer="nope")(6)


def test_norm_layer_returns_a_class_or_a_partial_keeping_bound_arguments():
    assert normlab.norm_layer("sn") is normlab.SwitchNorm2d
    assert normlab.get_norm_layer("bn", dim=1) is normlab.BatchNorm1d
    bound = normlab.norm_layer("iebn", momentum=0.05)
    assert isinstance(bound, functools.partial) and bound(8).momentum == 0.05
    rebound = normlab.norm_layer(bound, eps=1e-3)
    assert rebound.keywords == {"momentum": 0.05, "eps": 1e-3}
    layer = bound(8, device="cpu", dtype=torch.float64)  # as timm calls it
    assert layer.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown norm"):
        normlab.norm_layer("nope")


def trained_bn(channels=4):
    layer = nn.BatchNorm2d(channels)
    with torch.no_grad():
        layer(torch.randn(8, channels, 3, 3) * 2 + 1)
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("name", normlab.list_norms())
def test_freeze_keeps_eval_behaviour_in_training_and_unfreeze_undoes_it(name):
    layer = normlab.convert_norm(trained_bn(), name).train()
    has_stats = getattr(layer, "running_mean", None) is not None
    frozen = normlab.freeze_norm(layer)
    assert frozen == [""]
    assert not any(p.requires_grad for p in layer.parameters())
    x = torch.randn(3, 4, 3, 3)
    stats = {k: v.clone() for k, v in layer.state_dict().items()}
    y_train = layer(x)
    torch.testing.assert_close(y_train, layer.eval()(x), rtol=0, atol=0)
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in stats.items())
    normlab.unfreeze_norm(layer)
    layer.train()
    assert all(p.requires_grad for p in layer.parameters())
    if has_stats:
        before = layer.running_mean.clone()
        layer(x)
        assert not torch.equal(layer.running_mean, before)


def test_frozen_bn_computes_torchvisions_frozen_formula():
    layer = normlab.convert_norm(trained_bn(6), "bn")
    normlab.freeze_norm(layer)
    scale = layer.weight * (layer.running_var + layer.eps).rsqrt()
    shift = layer.bias - layer.running_mean * scale
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(layer.train()(x), x * scale[:, None, None] + shift[:, None, None])


def test_freeze_by_prefix_and_hardened_sn_ratios_stay_frozen():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), normlab.SwitchNorm2d(4)),
        nn.Sequential(nn.Conv2d(4, 4, 3), normlab.BatchNorm2d(4)),
    )
    model[0][1].harden()
    assert normlab.freeze_norm(model, ["0"]) == ["0.1"]
    assert normlab.norms.is_frozen(model[0][1]) and not normlab.norms.is_frozen(model[1][1])
    normlab.unfreeze_norm(model)
    assert model[0][1].weight.requires_grad and not model[0][1].mean_weight.requires_grad
    with pytest.raises(ValueError, match="no normlab norm layer"):
        normlab.freeze_norm(model, ["nothing"])


def mixed_model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        nn.LayerNorm(5),
        nn.Flatten(),
        nn.Linear(100, 6),
        nn.BatchNorm1d(6),
    )


def test_sources_filters_and_report(caplog):
    model = mixed_model()
    with caplog.at_level(logging.INFO, logger="normlab.norms.convert"):
        model, report = normlab.convert_norm(model, "sn", return_report=True)
    assert [(n, old, new) for n, old, new, _ in report.converted] == [
        ("1", "torch BatchNorm2d", "normlab SwitchNorm2d"),
        ("7", "torch BatchNorm1d", "normlab SwitchNorm1d"),
    ]
    assert [(n, kind) for n, kind, _ in report.left] == [
        ("2", "torch GroupNorm"), ("3", "torch InstanceNorm2d"), ("4", "torch LayerNorm")
    ]
    assert "not requested" in report.left[0][2] and "last dimension" in report.left[2][2]
    assert "converted 2 layer(s)" in caplog.text and "left 3" in caplog.text

    model, report = normlab.convert_norm(
        mixed_model(), "bn", source="all", exclude=["1", nn.BatchNorm1d], return_report=True
    )
    assert [n for n, *_ in report.converted] == ["2", "3"]
    assert isinstance(model[2], normlab.BatchNorm2d) and isinstance(model[3], normlab.BatchNorm2d)
    assert [(n, why) for n, _, why in report.left if n in ("1", "7")] == [
        ("1", "filtered out by include/exclude"), ("7", "filtered out by include/exclude")
    ]
    _, report = normlab.convert_norm(mixed_model(), "gn", source=["gn", "in"], include="[23]",
                                     return_report=True)
    assert [n for n, *_ in report.converted] == ["2", "3"]
    assert [normlab.norms.is_norm_layer(m) for m in mixed_model()] == [
        False, True, False, False, False, False, False, True
    ]
    with pytest.raises(ValueError, match="unknown source"):
        normlab.convert_norm(mixed_model(), "bn", source="ln")


@pytest.mark.parametrize("target", ["gn", "in"])
def test_group_and_instance_norms_convert_to_their_twins_exactly(target):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    ).double()
    with torch.no_grad():
        for layer in model:
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    source = {"gn": "gn", "in": "in"}[target]
    twin = 0 if target == "gn" else 1
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            expected = model[twin](x)
        converted = normlab.convert_norm(copy.deepcopy(model), target, source=source)
        assert isinstance(converted[twin], resolve_norm(target, 2))
        assert isinstance(converted[1 - twin], type(model[1 - twin]))  # other source: left
        with torch.no_grad():
            torch.testing.assert_close(converted[twin](x), expected, rtol=1e-12, atol=1e-12)
    assert normlab.convert_norm(copy.deepcopy(model), "gn", source="gn")[0].num_groups == 2


def test_sync_batchnorm_keeps_the_dimensionality_it_wrapped(caplog):
    model = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Conv3d(6, 6, 1),
                      nn.BatchNorm3d(6))
    )
    assert isinstance(model[1], nn.SyncBatchNorm)
    _, report = normlab.convert_norm(model, "bn", return_report=True)
    assert type(model[1]) is normlab.BatchNorm1d and type(model[3]) is normlab.BatchNorm3d
    assert "preceding layer" in report.converted[0][3]

    lone = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(6)))
    probed = normlab.convert_norm(lone, "bn", example_inputs=torch.randn(4, 6))
    assert type(probed[0]) is normlab.BatchNorm1d
    lone = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(6)))
    with caplog.at_level(logging.WARNING, logger="normlab.norms.convert"):
        _, report = normlab.convert_norm(lone, "bn", return_report=True)
    assert "ASSUMED 2d" in report.converted[0][3] and "ASSUMED 2d" in caplog.text


def test_init_from_bn_refuses_norms_that_cannot_start_as_bn():
    for name in normlab.list_norms():
        cls = resolve_norm(name, 2)
        if hasattr(cls, "start_from_bn"):
            continue
        model = nn.Sequential(trained_bn(), trained_bn())
        with pytest.raises(ValueError, match="cannot compute what a BatchNorm computes"):
            normlab.convert_norm(model, name, init="from_bn")
        assert all(type(m) is nn.BatchNorm2d for m in model)  # nothing changed
    with pytest.raises(ValueError, match="init must be None or 'from_bn'"):
        normlab.convert_norm(trained_bn(), "bn", init="bn")


@pytest.mark.parametrize("name", [n for n in normlab.list_norms()
                                  if hasattr(resolve_norm(n, 2), "start_from_bn")])
def test_init_from_bn_matches_bn_in_float64_train_and_eval(name):
    bn = trained_bn().double()
    new = normlab.convert_norm(normlab.convert_norm(bn, "bn"), name, init="from_bn")
    x = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(new.eval()(x), bn.eval()(x), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(new.train()(x), bn.train()(x), rtol=1e-12, atol=1e-12)


def test_normlab_imports_and_converts_without_torchvision_and_timm():
    code = (
        "import sys; sys.modules['timm'] = None; sys.modules['torchvision'] = None\n"
        "import torch, normlab\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))\n"
        "m, r = normlab.convert_norm(m, 'sn', return_report=True)\n"
        "assert isinstance(m[1], normlab.SwitchNorm2d), r\n"
        "assert 'timm' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_converted_layers_are_normlab_layers_with_act_carried():
    act = nn.ReLU()
    layer = normlab.norm_act("bn", act_layer=None)(4)
    layer.act = act
    new = normlab.convert_norm(layer, "iebn")
    assert isinstance(new, normlab.IEBN2d) and new.act is act
    assert isinstance(new, NormBase)
