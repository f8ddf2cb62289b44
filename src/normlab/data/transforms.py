"""Whole-data-set transforms on :class:`ImageData`: resizing and channel replication."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .image_data import ImageData

__all__ = ["resize_images", "resize", "with_channels"]

_CHUNK = 4096


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to ``size`` × ``size`` with bilinear interpolation.

    Anti-aliasing is used when shrinking. Images already of that size are returned as is.
    Works in chunks so that large data sets never need a full float copy.

    Args:
        images: uint8 tensor of shape (N, C, H, W).
        size: Output height and width.

    Returns:
        uint8 tensor of shape (N, C, size, size).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    antialias = size < h or size < w
    for start in range(0, n, _CHUNK):
        chunk = images[start : start + _CHUNK].to(torch.float32)
        scaled = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
        )
        out[start : start + _CHUNK] = scaled.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize(data: ImageData, size: int) -> ImageData:
    """The data set with every image resized to ``size`` × ``size`` (statistics kept)."""
    return replace(data, images=resize_images(data.images, size))


def with_channels(data: ImageData, channels: int) -> ImageData:
    """The data set with ``channels`` channels.

    A 1-channel data set is replicated to 3 channels (grey to RGB), repeating its mean and
    std; asking for the channels it already has returns it unchanged.

    Raises:
        ValueError: For any other conversion.
    """
    have = data.images.shape[1]
    if channels == have:
        return data
    if have != 1:
        raise ValueError(
            f"can only replicate a 1-channel data set to {channels} channels; "
            f"{data.name or 'this data set'} has {have}"
        )
    return replace(
        data,
        images=data.images.expand(-1, channels, -1, -1).contiguous(),
        mean=data.mean * channels,
        std=data.std * channels,
    )
