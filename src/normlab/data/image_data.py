"""The in-memory image data set every reader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

__all__ = ["ImageData", "channel_stats"]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units.

    Args:
        images: uint8 tensor of shape (N, C, H, W).

    Returns:
        ``(mean, std)``, each a tuple of C floats. A constant channel gets std 1 so that
        normalizing with it never divides by zero.

    Shape:
        images: (N, C, H, W) uint8.
    """
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64) / 255.0
    std, mean = torch.std_mean(pixels, dim=1, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


@dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled image data set held in memory as uint8 tensors.

    Readers and generators in :mod:`normlab.data` all return this type; the
    :class:`~normlab.data.loader.DeviceLoader` batches it.

    Attributes:
        images: uint8 tensor of shape (N, C, H, W) on the CPU.
        labels: int64 tensor of shape (N,) with values in ``[0, num_classes)``.
        num_classes: Number of classes.
        classes: Class names, ``len(classes) == num_classes``.
        mean: Per-channel mean in [0, 1] units used to normalize inputs (the training
            split's statistics, so every split of a data set is normalized alike).
        std: Per-channel standard deviation in [0, 1] units, all positive.
        name: Human-readable name, e.g. ``"cifar10/train"``.

    Instances compare by identity (tensors have no single truth value); compare the
    fields with ``torch.equal`` to compare contents.

    Shape:
        images: (N, C, H, W); labels: (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = field(default="")

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"ImageData.images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{images.dtype} of shape {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"ImageData.labels must be an int64 tensor of shape ({images.shape[0]},), got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"ImageData has num_classes={self.num_classes} but {len(self.classes)} class names"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"ImageData labels must lie in [0, {self.num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"ImageData.mean and .std need one value per channel ({channels}), got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"ImageData.std must be positive, got {self.std}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape (C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return c, h, w

    def subset(self, indices: torch.Tensor | Sequence[int], name: str | None = None) -> ImageData:
        """The samples at ``indices``, keeping classes and normalization statistics.

        Args:
            indices: Integer indices or a boolean mask over the samples.
            name: Name of the subset; defaults to this data set's name.
        """
        index = torch.as_tensor(indices)
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            name=self.name if name is None else name,
        )
