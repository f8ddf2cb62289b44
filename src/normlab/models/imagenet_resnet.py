"""ImageNet residual networks (224×224): ResNet-18/34/50/101/152, ResNeXt-50 32×4d, v2.

The v1 networks have torchvision's parameter names and shapes (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0``/``.1``, ``fc``), so with ``norm="bn"`` a
torchvision-format state dict loads with ``strict=True``; with the defaults their
parameter counts equal torchvision's exactly (ResNet-50: 25,557,032).

IEBN Table 1's BN and IEBN counts of ResNet-34/50/152 (21.81/25.58/60.27 M and
21.82/25.63/60.41 M) are those of the same nets with a bias in every convolution (one
parameter per conv output channel) and, for IEBN, plain BN on the shortcuts; its SE
counts (SENet's) and ResNeXt-50 counts have no conv biases. normlab follows torchvision
(no conv biases), so its BN counts are 21.80/25.56/60.19 M. ``dropout`` before
``fc`` (the SN recipe uses 0.5) adds no parameters. The v2 networks are the
pre-activation ResNets (He et al. 2016b) of the Switchable Normalization model zoo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.models.blocks import NormOptions, Norms, init_conv_weights
from normlab.models.registry import register_model
from normlab.models.resnet_blocks import (
    BasicBlock,
    Bottleneck,
    PreActBottleneck,
    ResidualUnit,
    is_preact,
    make_stages,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet50v2",
    "resnet101",
    "resnet101v2",
    "resnet152",
    "resnext50_32x4d",
]


class ResNet(nn.Module):
    """Four-stage ImageNet ResNet / ResNeXt (He et al. 2016a, Xie et al. 2017).

    Stem: 7×7/2 conv, norm, ReLU, 3×3/2 max pool; stages of widths 64/128/256/512 (strides
    1, 2, 2, 2); global average pooling, dropout, ``fc``. Pre-activation units add a final
    ``bn_final`` + ReLU before the pooling.

    Args:
        block: ``BasicBlock``, ``Bottleneck`` or ``PreActBottleneck``.
        layers: residual units per stage.
        num_classes: classifier outputs.
        in_chans: input channels.
        groups: cardinality of the bottleneck 3×3 convs.
        width_per_group: bottleneck width per group at ``planes = 64``.
        dropout: dropout probability before ``fc`` (0 = none).
        **options: ``norm``, ``norm_downsample``, ``se_reduction`` (16 in Table 1),
            ``last_gamma`` (torchvision's ``zero_init_residual``), ``norm_kwargs``
            (:class:`~normlab.models.blocks.NormOptions`).

    Shape:
        - Input: ``(N, in_chans, H, W)``, ``H, W >= 32`` (224 for ImageNet);
          Output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        block: type[ResidualUnit],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        dropout: float = 0.0,
        **options: Unpack[NormOptions],
    ) -> None:
        super().__init__()
        norms = Norms(**options)
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = norms(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, channels = make_stages(
            block, layers, (64, 128, 256, 512), 64, norms, groups, width_per_group
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_final = norms(channels) if is_preact(block) else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.bn_final is not None:
            x = self.relu(self.bn_final(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


_IMAGENET: dict[str, Any] = {"family": "imagenet", "input_size": (3, 224, 224), "num_classes": 1000}


@register_model(**_IMAGENET, tables=("BIN ImageNet",))
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: 11,689,512 params (torchvision). ``kwargs``: see :class:`ResNet`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(**_IMAGENET, tables=("IEBN Table 1",))
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: 21,797,672 params (torchvision). ``kwargs``: see :class:`ResNet`."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model(**_IMAGENET, tables=("IEBN Table 1", "SN Table II", "SN Table III"))
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: 25,557,032 params (torchvision); SE-16: 28.09 M (IEBN Table 1).

    ``kwargs``: see :class:`ResNet`.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model(**_IMAGENET, tables=("SN Table III",))
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: 44,549,160 params (torchvision). ``kwargs``: see :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model(**_IMAGENET, tables=("IEBN Table 1",))
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152: 60,192,808 params (torchvision); SE-16: 66.82 M (IEBN Table 1).

    ``kwargs``: see :class:`ResNet`.
    """
    return ResNet(Bottleneck, (3, 8, 36, 3), **kwargs)


@register_model(**_IMAGENET, tables=("IEBN Table 1",))
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32×4d: 25,028,904 params (torchvision); SE-16: 27.56 M (IEBN Table 1).

    ``kwargs``: see :class:`ResNet`.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, **kwargs)


@register_model(**_IMAGENET, tables=("SN model zoo (v2)",))
def resnet50v2(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-50 (v2) as in SN's model zoo. ``kwargs``: see :class:`ResNet`.

    The stem keeps its norm + ReLU; units are norm-ReLU-conv; projection shortcuts are
    bare 1×1 convs reading the pre-activated input; ``bn_final`` + ReLU close the trunk.
    """
    return ResNet(PreActBottleneck, (3, 4, 6, 3), **kwargs)


@register_model(**_IMAGENET, tables=("SN model zoo (v2)",))
def resnet101v2(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-101 (v2) as in SN's model zoo. ``kwargs``: see :class:`ResNet`.

    Same layout as :func:`resnet50v2` with (3, 4, 23, 3) units.
    """
    return ResNet(PreActBottleneck, (3, 4, 23, 3), **kwargs)
