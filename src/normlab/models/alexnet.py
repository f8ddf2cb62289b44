"""AlexNet for CIFAR (32×32) with a norm after every conv, as in the BIN paper's table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.models.blocks import NormOptions, Norms, init_conv_weights
from normlab.models.registry import register_model

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CifarAlexNet", "alexnet"]

# (out_channels, kernel, stride, padding, max-pool after)
_LAYERS = ((64, 11, 4, 5, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
           (256, 3, 1, 1, False), (256, 3, 1, 1, True))


class CifarAlexNet(nn.Module):
    """Five conv layers (11×11/4, 5×5, 3×3 ×3), each conv-norm-ReLU, and one linear layer.

    A 32×32 input becomes 8×8 after the first conv and 256×1×1 after the last pool.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        **options: :class:`~normlab.models.blocks.NormOptions`; ``norm`` follows every
            conv. AlexNet has no shortcuts (``norm_downsample`` has nothing to act on) and
            no residual units (``se_reduction`` must be None, ``last_gamma`` False).

    Shape:
        - Input: ``(N, in_chans, 32, 32)``; Output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        **options: Unpack[NormOptions],
    ) -> None:
        super().__init__()
        norms = Norms(**options)
        norms.reject_residual_options("AlexNet")
        layers: list[nn.Module] = []
        for out_ch, kernel, stride, padding, pool in _LAYERS:
            layers += [nn.Conv2d(in_chans, out_ch, kernel, stride, padding),
                       norms(out_ch), nn.ReLU(inplace=False)]
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
            in_chans = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_chans, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@register_model(
    family="cifar", input_size=(3, 32, 32), num_classes=10,
    tables=("BIN CIFAR-100 architectures",),
)
def alexnet(**kwargs: Any) -> CifarAlexNet:
    """AlexNet for CIFAR, norm after each conv. ``kwargs``: see :class:`CifarAlexNet`."""
    return CifarAlexNet(**kwargs)
