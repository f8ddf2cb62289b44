"""Transforms of a detection sample (an image with its boxes and masks).

Resizing and normalization belong to the detector (torchvision's
``GeneralizedRCNNTransform``), which maps its predictions back to the original image, so a
detection loader only flips (the training augmentation of Faster R-CNN, Ren et al. 2015,
and of Detectron's recipes).
"""

from __future__ import annotations

import torch

__all__ = ["hflip_sample"]


def hflip_sample(
    image: torch.Tensor, target: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mirror an image and its target left-right.

    A box ``[x1, y1, x2, y2]`` in pixel-edge coordinates of an image ``W`` wide becomes
    ``[W - x2, y1, W - x1, y2]``; masks are mirrored like the image; other entries are kept.

    Shape:
        image (C, H, W); boxes (R, 4) xyxy; masks (R, H, W) if present.
    """
    width = image.shape[-1]
    flipped = dict(target)
    boxes = target["boxes"]
    flipped["boxes"] = torch.stack(
        (width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1
    )
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped
