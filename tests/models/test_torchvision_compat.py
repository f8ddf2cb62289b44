"""torchvision-format state dicts load strictly into the ImageNet v1 nets (``norm="bn"``).

The expected key -> shape table is generated here from torchvision's naming rules
(``conv1``, ``bn1``, ``layer{s}.{i}.conv{j}``/``bn{j}``, ``downsample.0``/``.1``, ``fc``),
independently of normlab's model code.
"""

from __future__ import annotations

import pytest
import torch

from normlab.models import create_model
from tests.models.helpers import meta_model

BN_KEYS = ("weight", "bias", "running_mean", "running_var")

# name -> (bottleneck?, units per stage, groups, width per group)
ARCHS = {
    "resnet18": (False, (2, 2, 2, 2), 1, 64),
    "resnet34": (False, (3, 4, 6, 3), 1, 64),
    "resnet50": (True, (3, 4, 6, 3), 1, 64),
    "resnet101": (True, (3, 4, 23, 3), 1, 64),
    "resnet152": (True, (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": (True, (3, 4, 6, 3), 32, 4),
}
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
}


def torchvision_shapes(name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``name`` state dict, from its naming rules."""
    bottleneck, layers, groups, width_per_group = ARCHS[name]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key: str, out_ch: int, in_ch: int, k: int) -> None:
        shapes[f"{key}.weight"] = (out_ch, in_ch, k, k)

    def bn(key: str, ch: int) -> None:
        shapes.update({f"{key}.{b}": (ch,) for b in BN_KEYS})
        shapes[f"{key}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_ch = 64
    for stage, (count, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for i in range(count):
            key = f"layer{stage}.{i}"
            out_ch = planes * 4 if bottleneck else planes
            if bottleneck:
                width = planes * width_per_group // 64 * groups
                convs = [(width, in_ch, 1), (width, width // groups, 3), (out_ch, width, 1)]
            else:
                convs = [(planes, in_ch, 3), (planes, planes, 3)]
            for j, (o, c, k) in enumerate(convs, start=1):
                conv(f"{key}.conv{j}", o, c, k)
                bn(f"{key}.bn{j}", o)
            if (stage > 1 and i == 0) or in_ch != out_ch:
                conv(f"{key}.downsample.0", out_ch, in_ch, 1)
                bn(f"{key}.downsample.1", out_ch)
            in_ch = out_ch
    shapes["fc.weight"] = (num_classes, in_ch)
    shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_generated_table_has_torchvision_parameter_count(name):
    shapes = torchvision_shapes(name)
    params = [s for k, s in shapes.items() if not k.endswith(("running_mean", "running_var",
                                                               "num_batches_tracked"))]
    assert sum(torch.Size(s).numel() for s in params) == TORCHVISION_COUNTS[name]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_state_dict_names_and_shapes_equal_torchvision(name):
    for kwargs in ({}, {"dropout": 0.5}):
        state = meta_model(name, **kwargs).state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == torchvision_shapes(name)


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked")
        else torch.rand(s) + 0.5 if k.endswith("running_var") else torch.randn(s)
        for k, s in shapes.items()
    }


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_generated_torchvision_state_dict_loads_strictly(name):
    state = _random_state(torchvision_shapes(name, num_classes=10))
    model = create_model(name, num_classes=10)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_strict_load_rejects_other_layouts():
    state = _random_state(torchvision_shapes("resnet18"))
    with pytest.raises(RuntimeError, match="Missing key.*gate_weight"):
        create_model("resnet18", norm="iebn").load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_model("resnet18", num_classes=10).load_state_dict(state, strict=True)
