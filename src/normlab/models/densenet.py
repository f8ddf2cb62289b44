"""DenseNet-BC for CIFAR (Huang et al. 2017): ``densenet100_12``.

Each dense layer is norm-ReLU-conv1×1 (4k channels)-norm-ReLU-conv3×3 (k channels), its
output concatenated to its input; transitions are norm-ReLU-conv1×1 (compression 0.5) +
2×2 average pooling; the head is norm-ReLU-global pooling-fc. Depth 100 = 3 blocks of 16
dense layers (2 convs each) + stem conv + 2 transition convs + fc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.models.blocks import NormOptions, Norms, init_conv_weights
from normlab.models.registry import register_model
from normlab.models.resnet_blocks import conv1x1, conv3x3

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DenseNet", "densenet100_12"]


class DenseLayer(nn.Module):
    """Bottleneck dense layer: ``x -> cat(x, conv3x3(act(conv1x1(act(x)))))``.

    With ``se_reduction`` an SE block rescales the ``4k`` bottleneck channels (the output
    of ``conv1``); the ``k = 12`` new channels are too few for a reduction of 16.
    """

    def __init__(self, in_ch: int, growth: int, norms: Norms) -> None:
        super().__init__()
        self.bn1 = norms(in_ch)
        self.conv1 = conv1x1(in_ch, 4 * growth)
        self.bn2 = norms(4 * growth)
        self.conv2 = conv3x3(4 * growth, growth)
        self.se = norms.se(4 * growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        if self.se is not None:
            out = self.se(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """norm-ReLU-conv1×1-avgpool2 between dense blocks (the network's downsampling)."""

    def __init__(self, in_ch: int, out_ch: int, norm: nn.Module) -> None:
        super().__init__()
        self.bn = norm
        self.conv = conv1x1(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(self.conv(torch.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC for 32×32 images.

    Args:
        depth: ``6 * n + 4`` for ``n`` dense layers per block.
        growth: growth rate ``k``.
        compression: channel factor of each transition.
        num_classes: classifier outputs.
        in_chans: input channels.
        **options: :class:`~normlab.models.blocks.NormOptions`. ``norm_downsample`` is the
            norm of the transitions (the network's downsampling); ``se_reduction`` adds an
            SE block to every dense layer; ``last_gamma`` must be False (dense layers are
            not residual units).

    Shape:
        - Input: ``(N, in_chans, 32, 32)``; Output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        depth: int = 100,
        growth: int = 12,
        compression: float = 0.5,
        num_classes: int = 10,
        in_chans: int = 3,
        **options: Unpack[NormOptions],
    ) -> None:
        super().__init__()
        norms = Norms(**options)
        if norms.last_gamma:
            raise ValueError("DenseNet has no residual units to zero-init; use last_gamma=False")
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = 2 * growth
        self.conv1 = conv3x3(in_chans, channels)
        stages: list[nn.Module] = []
        for i in range(3):
            for _ in range(n):
                stages.append(DenseLayer(channels, growth, norms))
                channels += growth
            if i < 2:
                out = int(channels * compression)
                stages.append(Transition(channels, out, norms.downsample(channels)))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn_final = norms(channels)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv1(x))
        x = torch.relu(self.bn_final(x))
        return self.fc(x.mean(dim=(2, 3)))


@register_model(
    family="cifar",
    input_size=(3, 32, 32),
    num_classes=10,
    tables=("IEBN Table 1", "BIN CIFAR-100 architectures"),
)
def densenet100_12(**kwargs: Any) -> DenseNet:
    """DenseNet-BC-100 (k = 12, compression 0.5): 0.77 M (CIFAR-10) / 0.80 M (CIFAR-100).

    ``kwargs``: see :class:`DenseNet`. IEBN Table 1: IEBN 0.79/0.82 M (with or without
    ``norm_downsample="bn"`` on the transitions). With ``se_reduction=16`` on the 48
    bottleneck channels: 0.79/0.82 M; Table 1's SE column (0.78/0.81 M) equals bias-free
    SE blocks at that place (0.7830/0.8139 M).
    """
    return DenseNet(100, 12, 0.5, **kwargs)
