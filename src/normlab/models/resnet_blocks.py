"""Residual units shared by the CIFAR and ImageNet networks.

Post-activation units (He et al. 2016a) use torchvision's attribute names
(``conv1``, ``bn1``, ..., ``downsample.0``/``downsample.1``) so torchvision-format state
dicts load strictly. Pre-activation units follow He et al. 2016b ("Identity mappings").

With ``se_reduction`` set, an SE block (``se``) rescales the residual branch after its
last layer and before the addition (Hu et al. 2018, the IEBN paper's SE baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from normlab.models.blocks import Norms

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResidualUnit",
    "conv1x1",
    "conv3x3",
    "is_preact",
    "make_stages",
]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (a norm follows)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride, 1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution, no bias."""
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class ResidualUnit(nn.Module):
    """A residual unit: subclasses build the branch (``_build``) and run it (``forward``).

    ``width`` is ``planes`` for basic units and torchvision's
    ``planes * width_per_group / 64 * groups`` for bottlenecks (which also gives the CIFAR
    ResNeXt-29 8×64d widths 512/1024/2048). The shortcut is a projection when the shape
    changes: 1×1 conv + ``norm_downsample`` (torchvision's ``downsample``) after
    post-activation units, a bare 1×1 conv reading the pre-activated input in
    pre-activation units (He et al. 2016b; wide ResNets).

    Shape:
        - Input: ``(N, in_ch, H, W)``;
          Output: ``(N, planes * expansion, H / stride, W / stride)``.
    """

    expansion: int = 1
    preact: bool = False

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        norms: Norms,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        if self.expansion == 1:
            if groups != 1 or width_per_group != 64:
                raise ValueError("basic units support only groups=1 and width_per_group=64")
            width = planes
        else:
            width = int(planes * (width_per_group / 64.0)) * groups
        self._build(in_ch, width, out_ch, stride, groups, norms)
        self.relu = nn.ReLU(inplace=not self.preact)
        self.se = norms.se(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            conv = conv1x1(in_ch, out_ch, stride)
            self.downsample = conv if self.preact else nn.Sequential(
                conv, norms.downsample(out_ch)
            )

    def _build(
        self, in_ch: int, width: int, out_ch: int, stride: int, groups: int, norms: Norms
    ) -> None:
        raise NotImplementedError

    def _merge(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.se is not None:
            branch = self.se(branch)
        return branch + shortcut


class BasicBlock(ResidualUnit):
    """Two 3×3 convs with a norm after each (He et al. 2016a); ReLU after the sum."""

    def _build(
        self, in_ch: int, width: int, out_ch: int, stride: int, groups: int, norms: Norms
    ) -> None:
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = norms(width)
        self.conv2 = conv3x3(width, out_ch)
        self.bn2 = norms.last(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self._merge(out, shortcut))


class Bottleneck(ResidualUnit):
    """1×1 reduce, 3×3 (grouped for ResNeXt; stride here), 1×1 expand ×4, norm after each."""

    expansion = 4

    def _build(
        self, in_ch: int, width: int, out_ch: int, stride: int, groups: int, norms: Norms
    ) -> None:
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = norms(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norms(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = norms.last(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self._merge(out, shortcut))


class PreActBasicBlock(ResidualUnit):
    """Pre-activation basic unit: norm-ReLU-conv3×3 twice (He et al. 2016b).

    With ``last_gamma`` the second norm's weight starts at zero, which zeroes the branch.
    """

    preact = True

    def _build(
        self, in_ch: int, width: int, out_ch: int, stride: int, groups: int, norms: Norms
    ) -> None:
        self.bn1 = norms(in_ch)
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn2 = norms.last(width)
        self.conv2 = conv3x3(width, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return self._merge(out, shortcut)


class PreActBottleneck(ResidualUnit):
    """Pre-activation bottleneck: norm-ReLU-conv 1×1, 3×3 (stride), 1×1 ×4 (He et al. 2016b)."""

    expansion = 4
    preact = True

    def _build(
        self, in_ch: int, width: int, out_ch: int, stride: int, groups: int, norms: Norms
    ) -> None:
        self.bn1 = norms(in_ch)
        self.conv1 = conv1x1(in_ch, width)
        self.bn2 = norms(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = norms.last(width)
        self.conv3 = conv1x1(width, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        out = self.conv3(self.relu(self.bn3(out)))
        return self._merge(out, shortcut)


def make_stages(
    block: type[ResidualUnit],
    blocks: Sequence[int],
    widths: Sequence[int],
    in_ch: int,
    norms: Norms,
    groups: int = 1,
    width_per_group: int = 64,
) -> tuple[list[nn.Sequential], int]:
    """Stages of residual units; the first stage keeps the resolution, the others halve it.

    Returns:
        The stages and the number of channels the last one outputs.
    """
    stages = []
    for i, (count, planes) in enumerate(zip(blocks, widths)):
        units = []
        for j in range(count):
            stride = 2 if i > 0 and j == 0 else 1
            units.append(block(in_ch, planes, stride, norms, groups, width_per_group))
            in_ch = planes * block.expansion
        stages.append(nn.Sequential(*units))
    return stages, in_ch


def is_preact(block: type[nn.Module]) -> bool:
    """Whether ``block`` is a pre-activation unit (the network then ends in a norm)."""
    return bool(getattr(block, "preact", False))
