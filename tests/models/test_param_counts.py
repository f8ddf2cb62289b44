"""Parameter counts against the IEBN paper's Table 1 and torchvision's definitions.

Table 1: ../shared/papers/000_17ef3fb680615681.txt (about line 120). All builds run on the
meta device (same constructors, no memory).
"""

import pytest
from torch import nn

import normlab
from tests.models.helpers import meta_model, millions, n_params

# (model, classes, BN, IEBN) in M; IEBN with the authors' layout (plain BN on shortcuts)
TABLE1_CIFAR = [
    ("resnet164", 100, 1.73, 1.75),
    ("preresnet164", 100, 1.73, 1.75),
    ("densenet100_12", 100, 0.80, 0.82),
    ("resnext29_8x64d", 100, 34.52, 34.57),
    ("resnet164", 10, 1.70, 1.73),
    ("preresnet164", 10, 1.70, 1.73),
    ("densenet100_12", 10, 0.77, 0.79),
    ("resnext29_8x64d", 10, 34.43, 34.48),
]


@pytest.mark.parametrize(("name", "classes", "bn", "iebn"), TABLE1_CIFAR)
def test_table1_cifar_bn_and_iebn(name, classes, bn, iebn):
    assert millions(n_params(meta_model(name, num_classes=classes))) == bn
    model = meta_model(name, num_classes=classes, norm="iebn", norm_downsample="bn")
    assert millions(n_params(model)) == iebn


@pytest.mark.parametrize(("classes", "se"), [(10, 1.91), (100, 1.93)])
def test_table1_se_resnet164(classes, se):
    model = meta_model("resnet164", num_classes=classes, se_reduction=16)
    assert millions(n_params(model)) == se


def _without_se_biases(model: nn.Module) -> int:
    se = [m for m in model.modules() if isinstance(m, normlab.models.SqueezeExcite)]
    assert se, "expected SE blocks"
    return n_params(model) - sum(m.fc1.bias.numel() + m.fc2.bias.numel() for m in se)


@pytest.mark.parametrize(
    ("name", "classes", "se"),
    [("preresnet164", 10, 1.90), ("preresnet164", 100, 1.92), ("densenet100_12", 10, 0.78),
     ("densenet100_12", 100, 0.81), ("resnext29_8x64d", 10, 34.94),
     ("resnext29_8x64d", 100, 35.04)],
)
def test_table1_other_se_counts_are_bias_free_se(name, classes, se):
    """The documented finding: these SE entries of Table 1 count SE blocks without biases."""
    model = meta_model(name, num_classes=classes, se_reduction=16)
    assert millions(_without_se_biases(model)) == se
    if name != "resnext29_8x64d" or classes == 10:
        assert millions(n_params(model)) != se


TORCHVISION = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
}


@pytest.mark.parametrize(("name", "count"), sorted(TORCHVISION.items()))
def test_imagenet_v1_equals_torchvision(name, count):
    assert n_params(meta_model(name)) == count
    assert n_params(meta_model(name, dropout=0.5)) == count


@pytest.mark.parametrize(
    ("name", "se"), [("resnet50", 28.09), ("resnet152", 66.82), ("resnext50_32x4d", 27.56)]
)
def test_table1_se_imagenet(name, se):
    assert millions(n_params(meta_model(name, se_reduction=16))) == se


def _conv_channels(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    ("name", "bn", "iebn"),
    [("resnet34", 21.81, 21.82), ("resnet50", 25.58, 25.63), ("resnet152", 60.27, 60.41)],
)
def test_table1_imagenet_resnet_counts_include_conv_biases(name, bn, iebn):
    """The documented finding: Table 1's BN/IEBN ResNet counts have a bias in every conv."""
    model = meta_model(name)
    assert millions(n_params(model)) != bn
    assert millions(n_params(model) + _conv_channels(model)) == bn
    model = meta_model(name, norm="iebn", norm_downsample="bn")
    assert millions(n_params(model) + _conv_channels(model)) == iebn


def test_table1_resnext50_bn_and_iebn():
    assert millions(n_params(meta_model("resnext50_32x4d"))) == 25.03
    model = meta_model("resnext50_32x4d", norm="iebn", norm_downsample="bn")
    assert millions(n_params(model)) == 25.09


@pytest.mark.parametrize(
    ("name", "count"),
    [("resnet20", 272_474), ("resnet56", 855_770), ("resnet110", 1_730_714),
     ("wrn28_10", 36_479_194), ("vgg16_features", 14_714_688)],
)
def test_pinned_counts_of_other_models(name, count):
    """Regression pins; they round to the published 0.27 M, 0.86 M (projection shortcuts;
    He et al.'s zero-padding variant has 0.85 M), 1.7 M, 36.5 M and torchvision's count."""
    assert n_params(meta_model(name)) == count
