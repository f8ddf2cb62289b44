"""Named per-sample transform pipelines for the streaming loader: :func:`transform_preset`.

Each preset is a ``torchvision.transforms.v2`` pipeline on one uint8 image tensor
``(C, H, W) -> (C, h, w)`` (normalization happens later, on the device, in the loader), with
an attribute ``min_size``: the shorter side the image must keep when it is decoded at
reduced size (Pillow's JPEG ``draft``), or ``None`` to decode at full size.

Presets (``size`` is the output side):

- ``imagenet_train``: RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) +
  horizontal flip — the ResNet recipe the IEBN paper's Table 7/8 ("random cropping of size
  224 by 224 ... and horizontal flipping") and the SN paper ("data augmentation the same as
  [6]", i.e. ResNet) train with.
- ``imagenet_train_lighting``: ``imagenet_train`` + AlexNet PCA lighting noise (std 0.1):
  the SN authors' ImageNet code (RandomResizedCrop 224, flip, PCA lighting;
  ``../shared/papers/OFFICIAL_IMPLEMENTATIONS.md``).
- ``imagenet_train_color``: ``imagenet_train`` + colour jitter (brightness, contrast,
  saturation 0.4, in random order) + PCA lighting (std 0.1): fb.resnet.torch's ImageNet
  training pipeline, the ResNet reference implementation.
- ``imagenet_eval``: resize the shorter side to ``round(size * 256 / 224)``, centre crop
  ``size`` (the papers' "224x224 center crop" of a 256 resize).
- ``cifar_train``: zero-pad 4, random crop ``size``, horizontal flip (IEBN Table 6/7,
  BIN's and SN's CIFAR recipes).
- ``eval_center``: resize the shorter side to ``size``, centre crop ``size`` (evaluation of
  small images, e.g. CIFAR-sized folders, without the 256/224 margin).
- ``none``: the image unchanged (it must already be ``size`` x ``size`` to be batched).

Randomness comes from torch's global generator, so ``torch.manual_seed`` before a call fixes
the result (the streaming loader seeds every sample that way).

Example:
    >>> transform = transform_preset("imagenet_train", size=224)
    >>> transform(torch.zeros(3, 375, 500, dtype=torch.uint8)).shape
    torch.Size([3, 224, 224])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

__all__ = [
    "IMAGENET_PCA_EIGENVALUES",
    "IMAGENET_PCA_EIGENVECTORS",
    "Lighting",
    "PresetTransform",
    "eval_resize",
    "list_transform_presets",
    "register_transform_preset",
    "transform_preset",
]

IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
"""Eigenvalues of the RGB covariance of ImageNet pixels in [0, 1] (AlexNet's PCA, as
fb.resnet.torch ships them)."""
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
"""The matching eigenvectors, one per column (rows are R, G, B)."""


def _transforms_v2() -> ModuleType:
    """``torchvision.transforms.v2``, imported when a preset is built (so that importing
    normlab does not import torchvision)."""
    try:
        from torchvision.transforms import v2  # optional dependency: torchvision
    except ImportError as error:
        raise ImportError(
            "the transform presets need torchvision; install it with "
            "`pip install normlab[vision]`"
        ) from error
    return v2


class PresetTransform(torch.nn.Sequential):
    """The steps of a preset applied in order (as ``v2.Compose``), with the preset's name
    and its decode-size hint.

    Args:
        transforms: The steps, applied in order.
        name: Preset name (for ``repr`` and error messages).
        min_size: Shorter side the decoded image must keep, or ``None`` (full size).
    """

    def __init__(
        self, transforms: Sequence[torch.nn.Module], *, name: str, min_size: int | None
    ) -> None:
        super().__init__(*transforms)
        self.name = name
        self.min_size = min_size

    def extra_repr(self) -> str:
        return f"name={self.name!r}, min_size={self.min_size}"


class Lighting(torch.nn.Module):
    """AlexNet's PCA lighting noise (Krizhevsky et al. 2012, Sec. 4.1) on a uint8 image.

    Adds to every pixel the same RGB offset ``255 * V @ (alpha * lambda)`` with
    ``alpha ~ N(0, std^2)`` per component, ``V`` the eigenvectors (columns) and ``lambda``
    the eigenvalues of ImageNet's RGB covariance in [0, 1] units, as fb.resnet.torch's
    ``Lighting(0.1, eigval, eigvec)`` does on [0, 1] images; the result is rounded and
    clamped to [0, 255]. ``alpha`` is drawn from torch's global generator.

    Args:
        std: Standard deviation of ``alpha`` (0.1 in fb.resnet.torch and the SN code).
        eigenvalues: The three eigenvalues.
        eigenvectors: 3x3, one eigenvector per column.

    Shape:
        (3, H, W) uint8 -> (3, H, W) uint8.
    """

    def __init__(
        self,
        std: float = 0.1,
        eigenvalues: Sequence[float] = IMAGENET_PCA_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_PCA_EIGENVECTORS,
    ) -> None:
        super().__init__()
        self.std = std
        self.eigenvalues = torch.tensor(eigenvalues, dtype=torch.float32)
        self.eigenvectors = torch.tensor(eigenvectors, dtype=torch.float32)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"Lighting needs a uint8 RGB image (3, H, W), got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        alpha = torch.randn(3) * self.std
        offset = self.eigenvectors @ (alpha * self.eigenvalues) * 255.0
        shifted = image.to(torch.float32) + offset.view(3, 1, 1)
        return shifted.round_().clamp_(0, 255).to(torch.uint8)

    def extra_repr(self) -> str:
        return f"std={self.std}"


def eval_resize(size: int) -> int:
    """The shorter side ImageNet evaluation resizes to before its centre crop of ``size``:
    ``round(size * 256 / 224)`` (256 for 224)."""
    return round(size * 256 / 224)


PresetFactory = Callable[[int], PresetTransform]
_PRESETS: dict[str, PresetFactory] = {}


def register_transform_preset(name: str) -> Callable[[PresetFactory], PresetFactory]:
    """Decorator registering ``factory(size) -> PresetTransform`` under ``name``.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def register(factory: PresetFactory) -> PresetFactory:
        if name in _PRESETS:
            raise ValueError(f"transform preset {name!r} is already registered")
        _PRESETS[name] = factory
        return factory

    return register


def list_transform_presets() -> list[str]:
    """Names accepted by :func:`transform_preset`, sorted."""
    return sorted(_PRESETS)


def transform_preset(name: str, *, size: int) -> PresetTransform:
    """The preset ``name`` producing ``size`` x ``size`` images (see the module docstring).

    Raises:
        ValueError: For an unknown name (listing the valid ones) or a size below 1.
    """
    if name not in _PRESETS:
        raise ValueError(
            f"unknown transform preset {name!r}; valid: {', '.join(list_transform_presets())}"
        )
    if size < 1:
        raise ValueError(f"transform preset size must be >= 1, got {size}")
    return _PRESETS[name](size)


def _random_resized_crop_flip(size: int) -> list[Any]:
    v2 = _transforms_v2()
    return [
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
    ]


@register_transform_preset("imagenet_train")
def _imagenet_train(size: int) -> PresetTransform:
    return PresetTransform(_random_resized_crop_flip(size), name="imagenet_train", min_size=size)


@register_transform_preset("imagenet_train_lighting")
def _imagenet_train_lighting(size: int) -> PresetTransform:
    return PresetTransform(
        [*_random_resized_crop_flip(size), Lighting(0.1)],
        name="imagenet_train_lighting",
        min_size=size,
    )


@register_transform_preset("imagenet_train_color")
def _imagenet_train_color(size: int) -> PresetTransform:
    jitter = _transforms_v2().ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    return PresetTransform(
        [*_random_resized_crop_flip(size), jitter, Lighting(0.1)],
        name="imagenet_train_color",
        min_size=size,
    )


@register_transform_preset("imagenet_eval")
def _imagenet_eval(size: int) -> PresetTransform:
    v2 = _transforms_v2()
    resize = eval_resize(size)
    return PresetTransform(
        [v2.Resize(resize, antialias=True), v2.CenterCrop(size)],
        name="imagenet_eval",
        min_size=resize,
    )


@register_transform_preset("eval_center")
def _eval_center(size: int) -> PresetTransform:
    v2 = _transforms_v2()
    return PresetTransform(
        [v2.Resize(size, antialias=True), v2.CenterCrop(size)], name="eval_center", min_size=size
    )


@register_transform_preset("cifar_train")
def _cifar_train(size: int) -> PresetTransform:
    v2 = _transforms_v2()
    return PresetTransform(
        [v2.RandomCrop(size, padding=4, fill=0), v2.RandomHorizontalFlip()],
        name="cifar_train",
        min_size=None,
    )


@register_transform_preset("none")
def _none(size: int) -> PresetTransform:
    v2 = _transforms_v2()
    return PresetTransform([v2.Identity()], name="none", min_size=None)
