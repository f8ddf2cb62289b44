"""Pieces shared by every network: norm factories, Squeeze-and-Excitation, initialisation.

Models never name a normalization class: every norm layer is built by
:func:`normlab.norms.create_norm` through a :class:`Norms` factory, so any registry name,
layer class or ``functools.partial`` can be dropped into any network. The options every
constructor shares are declared once, in :class:`NormOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import torch
from torch import nn

from normlab.norms import NormSpec, create_norm

__all__ = ["NormOptions", "Norms", "SqueezeExcite", "init_conv_weights"]


class NormOptions(TypedDict, total=False):
    """The options every network constructor accepts (as keyword arguments).

    Keys:
        norm: norm at every normalization position: a registry name (``"bn"``,
            ``"iebn"``, ... see :func:`normlab.list_norms`), a layer class or a
            ``functools.partial``. Default ``"bn"``.
        norm_downsample: norm of the projection (downsample) shortcuts; default: ``norm``.
            The IEBN authors kept plain BN there (``norm_downsample="bn"``).
        se_reduction: ``None`` (default, no SE), or the reduction ratio of a
            Squeeze-and-Excitation block with biases in every residual unit (16 in the
            IEBN paper's SE baseline).
        last_gamma: zero-initialise the weight of the last norm of each residual unit, so
            every unit starts as the identity (Goyal et al. 2017). Default False.
        norm_kwargs: extra keyword arguments for every norm layer (``eps``, ``momentum``,
            ``affine``, ...).
    """

    norm: NormSpec
    norm_downsample: NormSpec | None
    se_reduction: int | None
    last_gamma: bool
    norm_kwargs: Mapping[str, Any] | None


class Norms:
    """Builds the norm and SE layers of one network from its :class:`NormOptions`.

    Args:
        norm, norm_downsample, se_reduction, last_gamma, norm_kwargs: see
            :class:`NormOptions`.
        dim: spatial rank handed to ``create_norm`` (2 for images).
    """

    def __init__(
        self,
        norm: NormSpec = "bn",
        norm_downsample: NormSpec | None = None,
        se_reduction: int | None = None,
        last_gamma: bool = False,
        norm_kwargs: Mapping[str, Any] | None = None,
        dim: int = 2,
    ) -> None:
        self.norm = norm
        self.norm_downsample = norm if norm_downsample is None else norm_downsample
        self.se_reduction = se_reduction
        self.last_gamma = last_gamma
        self.kwargs = dict(norm_kwargs or {})
        self.dim = dim

    def __call__(self, channels: int) -> nn.Module:
        """A layer of the main ``norm`` over ``channels`` channels."""
        return create_norm(self.norm, channels, dim=self.dim, **self.kwargs)

    def last(self, channels: int) -> nn.Module:
        """The last norm of a residual unit: weight zeroed when ``last_gamma`` is set."""
        layer = self(channels)
        if self.last_gamma:
            weight = getattr(layer, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ValueError(
                    f"last_gamma=True zero-initialises the norm weight, but "
                    f"{type(layer).__name__} has no 'weight' (is it affine?); "
                    "use an affine norm or last_gamma=False"
                )
            with torch.no_grad():
                weight.zero_()
        return layer

    def downsample(self, channels: int) -> nn.Module:
        """The norm of a downsample shortcut (``norm_downsample``)."""
        return create_norm(self.norm_downsample, channels, dim=self.dim, **self.kwargs)

    def se(self, channels: int) -> SqueezeExcite | None:
        """An SE block over ``channels``, or ``None`` without ``se_reduction``."""
        if self.se_reduction is None:
            return None
        return SqueezeExcite(channels, self.se_reduction)

    def reject_residual_options(self, model: str) -> None:
        """Raise for options a network without residual units cannot honour."""
        if self.se_reduction is not None:
            raise ValueError(
                f"{model} has no residual units to put SE blocks in; pass se_reduction=None"
            )
        if self.last_gamma:
            raise ValueError(
                f"{model} has no residual units whose last norm could be zeroed; "
                "pass last_gamma=False"
            )


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018, Eqn. 2-4 of the IEBN paper), with biases.

    ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` with ``fc1: C -> C // reduction`` and
    ``fc2: C // reduction -> C``, both with bias: ``2 * C * (C // r) + C // r + C``
    parameters. With ``reduction=16`` this reproduces the SE counts of the IEBN paper's
    Table 1 for ResNet-164 (1.91/1.93 M), SE-ResNet-50 (28.09 M), SE-ResNet-152 (66.82 M)
    and SE-ResNeXt-50 (27.56 M). Table 1's SE counts of PreResNet-164, DenseNet-100-12 and
    ResNeXt-29 are those of bias-free SE blocks (see those constructors).

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"se_reduction must be None or a positive int, got {reduction!r}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


def init_conv_weights(model: nn.Module) -> None:
    """He (fan-out) normal init for every convolution, as torchvision's ResNets.

    Norm layers keep the initialisation their own class gives them (IEBN gates start at
    γ̂=0, β̂=-1; BIN gates at 1; SN logits at 1), and linear layers keep PyTorch's default.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
