"""Every model builds with every registry norm; norm options reach every position.

Builds run on the meta device: the constructors are the same, but nothing is allocated
or initialised, so the full model × norm matrix stays cheap. Forward/backward runs are in
``test_forward.py``.
"""

import functools

import pytest
import torch
from torch import nn

import normlab
from normlab.models import create_model, list_models, model_info
from normlab.models.blocks import SqueezeExcite
from tests.models.helpers import meta_model, n_params

NORMS = normlab.list_norms()
NORMED = [m for m in list_models()
        if m != "vgg16_features" and model_info(m)["family"] != "detection"]
RESIDUAL = [m for m in NORMED if m not in ("vgg19", "alexnet", "densenet100_12")]
NORM_CLASSES = tuple(normlab.norms.resolve_norm(norm, 2) for norm in normlab.list_norms())


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, NORM_CLASSES)]


def _channels(model: nn.Module, cls: type) -> int:
    return sum(m.num_features for m in model.modules() if isinstance(m, cls))


@pytest.mark.parametrize("name", NORMED)
def test_builds_with_every_norm_at_every_position(name):
    reference = _norm_layers(meta_model(name, norm="bn"))
    assert reference and all(isinstance(m, normlab.BatchNorm2d) for m in reference)
    for norm in NORMS:
        layers = _norm_layers(meta_model(name, norm=norm))
        assert [m.num_features for m in layers] == [m.num_features for m in reference]
        kinds = {type(m) for m in layers}
        assert kinds == {normlab.norms.resolve_norm(norm)}, (norm, kinds)


@pytest.mark.parametrize("name", NORMED)
def test_iebn_adds_two_parameters_per_normalized_channel(name):
    bn = n_params(meta_model(name, norm="bn"))
    for downsample in (None, "bn"):
        model = meta_model(name, norm="iebn", norm_downsample=downsample)
        channels = _channels(model, normlab.IEBN2d)
        assert channels > 0
        assert n_params(model) - bn == 2 * channels


def test_sn_and_bin_increments():
    bn = meta_model("resnet20")
    layers = len(_norm_layers(bn))
    assert n_params(meta_model("resnet20", norm="sn")) - n_params(bn) == 6 * layers
    channels = _channels(bn, normlab.BatchNorm2d)
    assert n_params(meta_model("resnet20", norm="bin")) - n_params(bn) == channels


@pytest.mark.parametrize("name", ["resnet164", "resnext29_8x64d", "resnet50", "densenet100_12"])
def test_norm_downsample_acts_only_on_shortcuts(name):
    """Projection shortcuts (``downsample.1``) and DenseNet transitions (``features.i.bn``)."""
    model = meta_model(name, norm="gn", norm_downsample="bn")
    shortcut = {n for n, m in model.named_modules()
                if isinstance(m, NORM_CLASSES) and ("downsample" in n or n.endswith(".bn"))}
    bns = {n for n, m in model.named_modules() if isinstance(m, normlab.BatchNorm2d)}
    assert bns and bns == shortcut


def test_preact_shortcuts_have_no_norm():
    model = meta_model("preresnet164", norm="gn", norm_downsample="bn")
    assert not any(isinstance(m, normlab.BatchNorm2d) for m in model.modules())


def test_norm_as_class_partial_and_kwargs():
    by_class = meta_model("resnet20", norm=normlab.IEBN2d)
    by_partial = meta_model("resnet20", norm=functools.partial(normlab.IEBN2d, eps=1e-3))
    by_kwargs = meta_model("resnet20", norm="iebn", norm_kwargs={"eps": 1e-3, "momentum": 0.2})
    assert all(isinstance(m, normlab.IEBN2d) for m in _norm_layers(by_class))
    assert {m.eps for m in _norm_layers(by_partial)} == {1e-3}
    assert {(m.eps, m.momentum) for m in _norm_layers(by_kwargs)} == {(1e-3, 0.2)}


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="unknown norm"):
        create_model("resnet20", norm="no-such-norm")


@pytest.mark.parametrize("name", RESIDUAL + ["densenet100_12"])
def test_se_reduction_adds_se_blocks(name):
    assert not any(isinstance(m, SqueezeExcite) for m in meta_model(name).modules())
    se = [m for m in meta_model(name, se_reduction=16).modules() if isinstance(m, SqueezeExcite)]
    assert se and all(m.fc1.bias is not None and m.fc2.bias is not None for m in se)


@pytest.mark.parametrize("name", ["vgg19", "alexnet", "densenet100_12"])
def test_options_without_residual_units_raise(name):
    with pytest.raises(ValueError, match="last_gamma"):
        create_model(name, last_gamma=True)
    if name != "densenet100_12":
        with pytest.raises(ValueError, match="se_reduction"):
            create_model(name, se_reduction=16)


@pytest.mark.parametrize("reduction", [0, -4, True])
def test_bad_se_reduction_raises(reduction):
    with pytest.raises(ValueError, match="se_reduction"):
        create_model("resnet20", se_reduction=reduction)


def test_last_gamma_needs_affine_norm():
    with pytest.raises(ValueError, match="affine"):
        create_model("resnet20", last_gamma=True, norm_kwargs={"affine": False})


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet164", "preresnet110", "preresnet164", "transformer_net"]
)
def test_last_gamma_makes_every_residual_unit_an_identity(name):
    model = create_model(name, last_gamma=True, norm="iebn", norm_downsample="bn")
    units = [m for m in model.modules() if hasattr(m, "se") and hasattr(m, "bn2")]
    assert units
    for unit in units:
        last = unit.bn3 if hasattr(unit, "bn3") else unit.bn2
        assert torch.count_nonzero(last.weight) == 0
    plain = [u for u in units if getattr(u, "downsample", None) is None][:2]
    assert plain
    for unit in plain:
        first_conv = next(m for m in unit.modules() if isinstance(m, nn.Conv2d))
        x = torch.rand(2, first_conv.in_channels, 8, 8)
        torch.testing.assert_close(unit(x), x)
