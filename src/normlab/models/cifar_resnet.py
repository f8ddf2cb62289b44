"""CIFAR residual networks (32×32 inputs): ResNet, PreResNet, ResNeXt-29, WRN-28-10.

Networks are named by their true depth (weighted layers): ``resnetD`` with basic blocks
has ``D = 6n + 2``, ``resnet164``/``preresnet164`` (bottleneck) have ``D = 9n + 2`` with
``n = 18`` blocks per stage.

Shapes change through 1×1 projection shortcuts (He et al.'s option B), so the basic-block
nets have slightly more parameters than the zero-padding variant (ResNet-56: 0.86 M
against 0.85 M).

Note on the BIN paper: the authors' CIFAR ResNet code silently switches to bottleneck
blocks for depth >= 44 while keeping ``n = (depth - 2) / 6`` blocks per stage, so their
"ResNet-110" is a 164-layer bottleneck net (here ``resnet164``; their "PreResNet-110"
likewise ``preresnet164`` if the same rule applies) and their "ResNet-56" is an 83-layer
bottleneck net (``CifarResNet(Bottleneck, 9)``). The names below mean what they say.
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
    PreActBasicBlock,
    PreActBottleneck,
    ResidualUnit,
    conv3x3,
    is_preact,
    make_stages,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "CifarResNet",
    "preresnet110",
    "preresnet164",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet164",
    "resnext29_8x64d",
    "wrn28_10",
]

_BIN_TABLE = "BIN CIFAR-100 architectures"


class CifarResNet(nn.Module):
    """Three-stage residual network for 32×32 images (He et al. 2016a/b).

    Stem: 3×3 conv (+ norm + ReLU for post-activation units). Stages of ``blocks`` units
    with ``planes`` ``widths`` and strides 1, 2, 2. Post-activation nets end in global
    average pooling and ``fc``; pre-activation nets first apply ``bn_final`` + ReLU.

    Args:
        block: ``BasicBlock``, ``Bottleneck``, ``PreActBasicBlock`` or ``PreActBottleneck``.
        blocks: residual units per stage.
        widths: ``planes`` per stage (output channels are ``planes * block.expansion``).
        stem_width: channels of the stem convolution.
        num_classes: classifier outputs.
        in_chans: input channels.
        groups: convolution groups of bottleneck 3×3 convs (ResNeXt cardinality).
        width_per_group: bottleneck width per group at ``planes = 64``.
        **options: ``norm``, ``norm_downsample``, ``se_reduction``, ``last_gamma``,
            ``norm_kwargs`` (:class:`~normlab.models.blocks.NormOptions`). Pre-activation
            shortcuts are bare convolutions, so ``norm_downsample`` acts only on
            post-activation nets.

    Shape:
        - Input: ``(N, in_chans, 32, 32)``; Output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        block: type[ResidualUnit],
        blocks: int,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_width: int = 16,
        num_classes: int = 10,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        **options: Unpack[NormOptions],
    ) -> None:
        super().__init__()
        norms = Norms(**options)
        preact = is_preact(block)
        self.conv1 = conv3x3(in_chans, stem_width)
        self.bn1 = None if preact else norms(stem_width)
        stages, channels = make_stages(
            block, (blocks,) * 3, widths, stem_width, norms, groups, width_per_group
        )
        self.layer1, self.layer2, self.layer3 = stages
        self.bn_final = norms(channels) if preact else None
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = torch.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.bn_final is not None:
            x = torch.relu(self.bn_final(x))
        return self.fc(x.mean(dim=(2, 3)))


def _basic(depth: int) -> int:
    return (depth - 2) // 6


_CIFAR: dict[str, Any] = {"family": "cifar", "input_size": (3, 32, 32), "num_classes": 10}


@register_model(**_CIFAR)
def resnet20(**kwargs: Any) -> CifarResNet:
    """ResNet-20 (basic blocks, 3 per stage). ``kwargs``: see :class:`CifarResNet`."""
    return CifarResNet(BasicBlock, _basic(20), **kwargs)


@register_model(**_CIFAR)
def resnet32(**kwargs: Any) -> CifarResNet:
    """ResNet-32 (basic blocks, 5 per stage). ``kwargs``: see :class:`CifarResNet`."""
    return CifarResNet(BasicBlock, _basic(32), **kwargs)


@register_model(**_CIFAR)
def resnet44(**kwargs: Any) -> CifarResNet:
    """ResNet-44 (basic blocks, 7 per stage). ``kwargs``: see :class:`CifarResNet`."""
    return CifarResNet(BasicBlock, _basic(44), **kwargs)


@register_model(**_CIFAR, tables=(_BIN_TABLE,))
def resnet56(**kwargs: Any) -> CifarResNet:
    """ResNet-56 (basic blocks, 9 per stage); BIN's "ResNet-56" was a bottleneck net.

    ``kwargs``: see :class:`CifarResNet`. The BIN authors' code built an 83-layer
    bottleneck net for depth 56; ``CifarResNet(Bottleneck, 9)`` reproduces that.
    """
    return CifarResNet(BasicBlock, _basic(56), **kwargs)


@register_model(**_CIFAR)
def resnet110(**kwargs: Any) -> CifarResNet:
    """ResNet-110 (basic blocks, 18 per stage); BIN's "ResNet-110" is ``resnet164``.

    ``kwargs``: see :class:`CifarResNet`. The BIN authors' code builds bottleneck units
    for depth >= 44, so their "ResNet-110" results come from the 164-layer bottleneck net.
    """
    return CifarResNet(BasicBlock, _basic(110), **kwargs)


@register_model(
    **_CIFAR,
    tables=("IEBN Table 1", "IEBN Table 2", "IEBN Table 3", "IEBN Table 4", "IEBN Table 5",
            "BIN CIFAR-10/100 main results"),
)
def resnet164(**kwargs: Any) -> CifarResNet:
    """ResNet-164 (bottleneck, 18 per stage, widths 16/32/64 ×4): 1.70 M / 1.73 M params.

    ``kwargs``: see :class:`CifarResNet`. IEBN Table 1 (BN 1.70/1.73 M, SE 1.91/1.93 M,
    IEBN 1.73/1.75 M on CIFAR-10/100; IEBN with ``norm_downsample="bn"``, SE with
    ``se_reduction=16``) and the noise-attack and ablation tables 2-5. Also the network
    behind the BIN paper's "ResNet-110" (see the module docstring).
    """
    return CifarResNet(Bottleneck, 18, **kwargs)


@register_model(**_CIFAR, tables=(_BIN_TABLE,))
def preresnet110(**kwargs: Any) -> CifarResNet:
    """PreResNet-110 (pre-activation basic blocks, 18 per stage).

    ``kwargs``: see :class:`CifarResNet`. If the BIN authors' PreResNet code follows the
    depth >= 44 bottleneck rule of their ResNet code, their "PreResNet-110" is
    ``preresnet164``.
    """
    return CifarResNet(PreActBasicBlock, _basic(110), **kwargs)


@register_model(**_CIFAR, tables=("IEBN Table 1",))
def preresnet164(**kwargs: Any) -> CifarResNet:
    """PreResNet-164 (pre-activation bottleneck, 18 per stage): 1.70 M / 1.73 M params.

    ``kwargs``: see :class:`CifarResNet`. IEBN Table 1 (IEBN 1.73/1.75 M). Its shortcuts
    carry no norm, so ``norm_downsample`` has nothing to act on. With ``se_reduction=16``
    it has 1.91/1.93 M parameters; Table 1's SE column (1.90/1.92 M) counts SE blocks
    without biases (1.8968/1.9199 M).
    """
    return CifarResNet(PreActBottleneck, 18, **kwargs)


@register_model(**_CIFAR, tables=("IEBN Table 1", _BIN_TABLE))
def resnext29_8x64d(**kwargs: Any) -> CifarResNet:
    """ResNeXt-29 8×64d (Xie et al. 2017): 3 bottlenecks per stage, cardinality 8.

    ``kwargs``: see :class:`CifarResNet`. Stem 64 channels, group widths 512/1024/2048,
    outputs 256/512/1024: 34.43 M (CIFAR-10) / 34.52 M (CIFAR-100) params as in IEBN
    Table 1 (IEBN 34.48/34.57 M only with ``norm_downsample="bn"``: IEBN on the three
    shortcut norms too gives 34.58 M on CIFAR-100). With ``se_reduction=16``: 34.95/35.04 M;
    Table 1's SE column (34.94/35.04 M) counts SE blocks without biases.
    """
    return CifarResNet(
        Bottleneck, 3, (64, 128, 256), 64, groups=8, width_per_group=64, **kwargs
    )


@register_model(**_CIFAR, tables=(_BIN_TABLE,))
def wrn28_10(**kwargs: Any) -> CifarResNet:
    """Wide ResNet-28-10 (Zagoruyko & Komodakis 2016): pre-activation, widths 160/320/640.

    ``kwargs``: see :class:`CifarResNet`. 4 units per stage, 36.5 M params, no dropout.
    """
    return CifarResNet(PreActBasicBlock, 4, (160, 320, 640), 16, **kwargs)
