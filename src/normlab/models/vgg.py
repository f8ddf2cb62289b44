"""VGG networks: CIFAR VGG-19 with a norm after every conv, and the VGG-16 loss network.

:class:`VGG16Features` has the parameter names of torchvision's ``vgg16().features``
(``features.0.weight`` ... ``features.28.bias``) and loads ImageNet weights from a local
file (:func:`load_vgg16_features`); it is the perceptual-loss network of Johnson et al.
2016 used for the style-transfer figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.models.blocks import NormOptions, Norms, init_conv_weights
from normlab.models.registry import register_model
from normlab.models.state_check import state_mismatch

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CifarVGG", "VGG16Features", "load_vgg16_features", "vgg16_features", "vgg19"]

_M = "M"
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512, _M,
)
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M, 512, 512, 512, 512, _M,
    512, 512, 512, 512, _M,
)


def vgg_layers(cfg: Sequence[int | str], in_ch: int, norms: Norms | None) -> list[nn.Module]:
    """torchvision's VGG layer list: conv3×3 (with bias), [norm], ReLU; ``"M"`` = max pool.

    Returns:
        The modules in order, so ``nn.Sequential`` indices match torchvision's.
    """
    layers: list[nn.Module] = []
    for v in cfg:
        if v == _M:
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(in_ch, int(v), 3, padding=1))
        if norms is not None:
            layers.append(norms(int(v)))
        layers.append(nn.ReLU(inplace=False))
        in_ch = int(v)
    return layers


class CifarVGG(nn.Module):
    """VGG for 32×32 images with a norm after every conv and one linear classifier.

    After five poolings a 32×32 input is 512×1×1, classified by ``fc``: 20.04 M
    parameters for VGG-19 with BN on CIFAR-10 (the BIN paper's CIFAR-100 VGG-19).

    Args:
        cfg: channel list with ``"M"`` for max pooling.
        num_classes: classifier outputs.
        in_chans: input channels.
        **options: :class:`~normlab.models.blocks.NormOptions`; ``norm`` follows every
            conv. VGG has no shortcuts (``norm_downsample`` has nothing to act on) and no
            residual units (``se_reduction`` must be None, ``last_gamma`` False).

    Shape:
        - Input: ``(N, in_chans, 32, 32)``; Output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        cfg: Sequence[int | str] = VGG19_CFG,
        num_classes: int = 10,
        in_chans: int = 3,
        **options: Unpack[NormOptions],
    ) -> None:
        super().__init__()
        norms = Norms(**options)
        norms.reject_residual_options("VGG")
        self.features = nn.Sequential(*vgg_layers(cfg, in_chans, norms))
        width = [v for v in cfg if v != _M][-1]
        self.fc = nn.Linear(int(width), num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x).mean(dim=(2, 3)), 1))


@register_model(
    family="cifar", input_size=(3, 32, 32), num_classes=10,
    tables=("BIN CIFAR-100 architectures",),
)
def vgg19(**kwargs: Any) -> CifarVGG:
    """VGG-19 for CIFAR, norm after each conv. ``kwargs``: see :class:`CifarVGG`."""
    return CifarVGG(VGG19_CFG, **kwargs)


VGG16_LAYERS: dict[str, int] = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22,
                                "relu5_3": 29}
"""Index in ``features`` of the ReLU outputs used as perceptual features."""


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` returning named intermediate activations.

    Args:
        layers: which activations to return (keys of ``VGG16_LAYERS``); the default is
            Johnson et al.'s relu1_2, relu2_2, relu3_3 (style) and relu2_2 (content).
        weights: optional path to a torchvision-format state dict, loaded with
            :func:`load_vgg16_features`.

    Shape:
        - Input: ``(N, 3, H, W)`` normalized with the ImageNet mean/std;
          Output: ``{name: (N, C_name, H / s, W / s)}``.
    """

    def __init__(
        self,
        layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            raise ValueError(
                f"unknown VGG-16 layers {unknown}; choose from {sorted(VGG16_LAYERS)}"
            )
        self.layers = tuple(layers)
        self.features = nn.Sequential(*vgg_layers(VGG16_CFG, 3, None))
        if weights is not None:
            self.load_state_dict(load_vgg16_features(weights))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = {VGG16_LAYERS[name]: name for name in self.layers}
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x
                if len(out) == len(wanted):
                    break
        return out


def load_vgg16_features(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read VGG-16 feature weights from a local torchvision-format file.

    Accepts a full ``vgg16().state_dict()`` (``features.*`` kept, ``classifier.*``
    dropped: the loss network has no classifier) or ``vgg16().features.state_dict()``
    (keys ``0.weight`` ...). No download happens.

    Returns:
        A state dict with keys ``features.<i>.weight`` / ``.bias`` for
        :class:`VGG16Features`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says where to get it).
        ValueError: the file is not a state dict or its keys/shapes do not match VGG-16.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VGG-16 weights not found at {os.fspath(path)!r}; download torchvision's "
            "ImageNet VGG-16 weights (vgg16-397923af.pth, from download.pytorch.org/models) "
            "and pass the local path"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state dict of tensors")
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    with torch.device("meta"):
        reference = nn.Sequential(*vgg_layers(VGG16_CFG, 3, None))
    expected = {f"features.{k}": v.shape for k, v in reference.state_dict().items()}
    mismatch = state_mismatch(state, expected)
    if mismatch:
        wrong = [f"{key}: file {got} vs VGG-16 {want}" for key, got, want in mismatch.wrong_shapes]
        raise ValueError(
            f"{os.fspath(path)!r} is not a torchvision VGG-16 state dict: missing keys "
            f"{mismatch.missing}, unexpected keys {mismatch.unexpected}, shape mismatches {wrong}"
        )
    return dict(state)


@register_model(
    family="style", input_size=(3, 256, 256), num_classes=None,
    tables=("IEBN Fig. 2/3/5", "SN style transfer (Fig. 16)"),
)
def vgg16_features(**kwargs: Any) -> VGG16Features:
    """VGG-16 perceptual-loss network (no norms). ``kwargs``: see :class:`VGG16Features`."""
    return VGG16Features(**kwargs)
