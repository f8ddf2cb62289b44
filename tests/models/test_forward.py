"""Forward + backward: output shape and a finite gradient on every parameter.

Two layers of coverage within the CPU budget:
- every norm × every kind of unit (post/pre-activation basic and bottleneck, grouped,
  dense, plain conv, ImageNet stem, style network) on small instances, with SE blocks,
  ``last_gamma`` and normalized shortcuts;
- every registered model at its own input size (ImageNet nets: one sample at 224×224),
  each built once with its norms cycling through every registered norm.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import normlab
from normlab.models import (
    CifarResNet,
    DenseNet,
    ResNet,
    TransformerNet,
    create_model,
    list_models,
    model_info,
)
from normlab.models.resnet_blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
)
from tests.norms.tables import EveryNorm

NORMS = normlab.list_norms()


def _check_step(model: nn.Module, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    out = model(x)
    assert out.shape == shape
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


TINY = {
    "basic": functools.partial(CifarResNet, BasicBlock, 1, se_reduction=4),
    "bottleneck": functools.partial(CifarResNet, Bottleneck, 1, last_gamma=True),
    "grouped": functools.partial(
        CifarResNet, Bottleneck, 1, (8, 16, 32), 16, groups=4, width_per_group=8,
        se_reduction=8,
    ),
    "preact_basic": functools.partial(CifarResNet, PreActBasicBlock, 1, se_reduction=4),
    "preact_bottleneck": functools.partial(CifarResNet, PreActBottleneck, 1),
    "dense": functools.partial(DenseNet, 10, 4, se_reduction=4),
    "alexnet": functools.partial(create_model, "alexnet"),
    "imagenet": functools.partial(ResNet, BasicBlock, (1, 1, 1, 1), num_classes=10),
    "imagenet_v2": functools.partial(ResNet, PreActBasicBlock, (1, 1, 1, 1), num_classes=10),
}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", sorted(TINY))
def test_every_norm_in_every_kind_of_unit(kind, norm):
    model = TINY[kind](norm=norm, norm_downsample=norm)
    size = 64 if kind.startswith("imagenet") else 32
    _check_step(model, torch.randn(2, 3, size, size), (2, 10))


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_in_the_style_network(norm):
    model = TransformerNet(num_residual=1, norm=norm, se_reduction=8)
    _check_step(model, torch.randn(2, 3, 32, 32), (2, 3, 32, 32))


FULL = [m for m in list_models()
        if m != "vgg16_features" and model_info(m)["family"] != "detection"]
HEAVY = {"resnext29_8x64d", "wrn28_10"}


def _full_cases() -> list:
    """Every registered model; the ImageNet nets and the two widest CIFAR nets are slow."""
    return [
        pytest.param(name, marks=[pytest.mark.slow] * (
            model_info(name)["family"] == "imagenet" or name in HEAVY))
        for name in FULL
    ]


@pytest.mark.parametrize("name", _full_cases())
def test_full_model_with_every_norm_at_its_input_size(name):
    """Each model built by its constructor with norms cycling through every registered norm
    (one build covers them all; a net with fewer norm layers than norms is built again
    with the next ones); CIFAR nets on 2 samples, ImageNet and style nets on 1 sample at
    224² / 256²."""
    info = model_info(name)
    batch = 2 if info["family"] == "cifar" else 1
    covered: set[str] = set()
    while covered != set(NORMS):
        norm = EveryNorm(start=len(covered))
        model = create_model(name, norm=norm)
        covered.update(norm.built)
        x = torch.randn(batch, *info["input_size"])
        shape = (batch, info["num_classes"]) if info["num_classes"] else x.shape
        _check_step(model, x, tuple(shape))


def test_num_classes_in_chans_and_dropout():
    model = create_model("resnet18", num_classes=5, in_chans=1, dropout=0.5, norm="gn")
    assert model.dropout.p == 0.5
    _check_step(model, torch.randn(2, 1, 64, 64), (2, 5))
    model = create_model("resnet20", num_classes=100, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)
