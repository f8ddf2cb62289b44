"""Batched data augmentation on the device: random crop with zero padding and flip.

All samples of a batch are cropped and flipped in one gather, with no Python loop over
samples. Randomness is drawn separately (:func:`draw_crop_flip`) so that a loader can draw a
whole epoch's parameters from one seeded generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["draw_crop_flip", "crop_flip"]


def draw_crop_flip(
    n: int, padding: int, generator: torch.Generator, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw random crop offsets and flip decisions for ``n`` samples.

    Args:
        n: Number of samples.
        padding: Zero padding on each side; offsets are uniform in ``[0, 2 * padding]``.
        generator: Source of randomness (CPU).
        flip: Whether to flip half of the samples at random; ``False`` flips none.

    Returns:
        ``(offsets, flips)``: int64 (n, 2) row/column offsets into the padded image and a
        bool (n,) flip mask.
    """
    offsets = torch.randint(2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips & flip


def crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int
) -> torch.Tensor:
    """Crop each zero-padded image at its offset, then mirror it left-right where flagged.

    Sample ``i`` of the result is ``pad(images[i])[:, r:r+H, c:c+W]`` with
    ``(r, c) = offsets[i]``, reversed along the width when ``flips[i]``. Padding is zero in
    the images' own units (black for uint8 images), as torchvision's ``RandomCrop`` does.

    Args:
        images: Batch of images of any dtype.
        offsets: Row and column offsets into the padded images, in ``[0, 2 * padding]``.
        flips: Which samples to mirror.
        padding: Zero padding on each side.

    Returns:
        The augmented batch, same shape and dtype, in channels-last memory format.

    Shape:
        images: (B, C, H, W); offsets: (B, 2); flips: (B,) → (B, C, H, W).
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    rows = offsets[:, :1] + torch.arange(h, device=images.device)
    columns = torch.arange(w, device=images.device).expand(b, w)
    columns = torch.where(flips[:, None], w - 1 - columns, columns) + offsets[:, 1:]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)
