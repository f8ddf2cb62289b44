"""Johnson et al. (2016) image transformation network for fast style transfer.

Used by the IEBN paper (Fig. 2, 3, 5: BN vs IN vs BN+SE vs IEBN) and the SN paper's
stylization experiment. Layout: 9×9 conv (32), two stride-2 3×3 convs (64, 128), five
residual blocks (128), two ×2 upsampling 3×3 convs (64, 32), 9×9 output conv (3); norm +
ReLU after every conv but the last.

Choices (Johnson et al.'s supplementary, as revised by common practice): reflection
padding instead of zero padding, nearest-neighbour upsampling + conv instead of
transposed convs (avoids checkerboard artefacts), no ReLU after the residual addition,
and a linear output (no scaled tanh) in the input's value range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.models.blocks import NormOptions, Norms, init_conv_weights
from normlab.models.registry import register_model

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["TransformerNet", "transformer_net"]


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Module:
    """Reflection-padded convolution keeping ``H / stride``."""
    return nn.Sequential(
        nn.ReflectionPad2d(kernel // 2), nn.Conv2d(in_ch, out_ch, kernel, stride, bias=bias)
    )


class StyleResidual(nn.Module):
    """conv-norm-ReLU-conv-norm (+ SE) + identity, without a ReLU after the sum."""

    def __init__(self, channels: int, norms: Norms) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3)
        self.bn1 = norms(channels)
        self.conv2 = _conv(channels, channels, 3)
        self.bn2 = norms.last(channels)
        self.se = norms.se(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.se is not None:
            out = self.se(out)
        return x + out


class TransformerNet(nn.Module):
    """Image transformation network of Johnson et al. with a selectable norm.

    Args:
        in_chans: input (and output) channels.
        num_residual: number of residual blocks (5).
        **options: :class:`~normlab.models.blocks.NormOptions`. ``norm`` (default ``"in"``,
            the usual choice for stylization) follows every conv but the output one; the
            IEBN paper compares ``"bn"``, ``"in"``, ``"iebn"`` and ``"bn"`` with
            ``se_reduction=16`` (its "SE" network). The network has no normalized
            shortcuts, so ``norm_downsample`` has nothing to act on.

    Shape:
        - Input: ``(N, in_chans, H, W)`` with ``H, W`` divisible by 4 (256 in the papers);
          Output: same shape.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_residual: int = 5,
        **options: Unpack[NormOptions],
    ) -> None:
        super().__init__()
        options.setdefault("norm", "in")
        norms = Norms(**options)
        layers: list[nn.Module] = []
        for in_ch, out_ch, kernel, stride in ((in_chans, 32, 9, 1), (32, 64, 3, 2),
                                              (64, 128, 3, 2)):
            layers += [_conv(in_ch, out_ch, kernel, stride), norms(out_ch), nn.ReLU()]
        self.down = nn.Sequential(*layers)
        self.res = nn.Sequential(
            *(StyleResidual(128, norms) for _ in range(num_residual))
        )
        layers = []
        for in_ch, out_ch in ((128, 64), (64, 32)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(in_ch, out_ch, 3),
                       norms(out_ch), nn.ReLU()]
        self.up = nn.Sequential(*layers)
        self.out = _conv(32, in_chans, 9, bias=True)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(
                f"TransformerNet needs height and width divisible by 4 (two stride-2 convs "
                f"and two ×2 upsamplings), got {tuple(x.shape[-2:])}; crop or resize the input"
            )
        return self.out(self.up(self.res(self.down(x))))


@register_model(
    family="style", input_size=(3, 256, 256), num_classes=None,
    tables=("IEBN Fig. 2", "IEBN Fig. 3", "IEBN Fig. 5", "SN style transfer (Fig. 16)"),
)
def transformer_net(**kwargs: Any) -> TransformerNet:
    """Johnson et al.'s style-transfer network. ``kwargs``: see :class:`TransformerNet`."""
    return TransformerNet(**kwargs)
