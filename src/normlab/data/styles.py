"""Style nuisance: paint grey shape masks with random colours, textures and contrast.

A :class:`StyleSet` fixes the family a style is drawn from. :data:`SEEN_STYLES` and
:data:`UNSEEN_STYLES` are disjoint: their hues come from opposite halves of the colour
wheel and their textures from disjoint banks (see :mod:`normlab.data.textures`), so a model
trained on seen styles can be tested on styles it has never met.

Per image, :func:`render_styles` draws: a foreground and a background colour (hue from the
set's range, saturation 0.4-1, one of the two light, value 0.7-1, the other dark, value
0.05-0.35, at random), an independent texture crop for each of the two layers with a random
strength, and a global contrast factor 0.7-1. The light/dark pairing keeps every digit
legible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .textures import TEXTURE_SIZE, texture_bank

__all__ = ["StyleSet", "SEEN_STYLES", "UNSEEN_STYLES", "render_styles", "hsv_to_rgb"]


@dataclass(frozen=True)
class StyleSet:
    """A family of styles.

    Attributes:
        name: ``"seen"`` or ``"unseen"``; also names the texture bank used.
        hue_range: Hues are drawn uniformly from ``[lo, hi)`` (fractions of a turn).
    """

    name: str
    hue_range: tuple[float, float]


SEEN_STYLES = StyleSet(name="seen", hue_range=(0.0, 0.5))
UNSEEN_STYLES = StyleSet(name="unseen", hue_range=(0.5, 1.0))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Convert colours from HSV to RGB, all components in [0, 1].

    Shape:
        hsv: (..., 3) → (..., 3).
    """
    h, s, v = hsv.unbind(-1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v[..., None] * (1.0 - s[..., None] * ramp)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _colour_pair(styles: StyleSet, n: int, generator: torch.Generator) -> torch.Tensor:
    hue = _uniform(2 * n, *styles.hue_range, generator)
    saturation = _uniform(2 * n, 0.4, 1.0, generator)
    light, dark = _uniform(n, 0.7, 1.0, generator), _uniform(n, 0.05, 0.35, generator)
    foreground_light = torch.rand(n, generator=generator) < 0.5
    value = torch.cat(
        [torch.where(foreground_light, light, dark), torch.where(foreground_light, dark, light)]
    )
    return hsv_to_rgb(torch.stack([hue, saturation, value], dim=-1)).view(2, n, 3)


def _texture_crops(
    bank: torch.Tensor, n: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    choice = torch.randint(bank.shape[0], (n,), generator=generator)
    offsets = torch.randint(TEXTURE_SIZE - size + 1, (2, n), generator=generator)
    axis = torch.arange(size)
    rows = (offsets[0, :, None] + axis)[:, :, None]
    cols = (offsets[1, :, None] + axis)[:, None, :]
    return bank[choice[:, None, None], rows, cols]


def render_styles(
    masks: torch.Tensor, styles: StyleSet, generator: torch.Generator, textures: str = "auto"
) -> torch.Tensor:
    """Paint foreground masks with random styles from ``styles``.

    Args:
        masks: Float foreground weights in [0, 1] (1 = digit stroke).
        styles: The style family to draw from.
        generator: Source of randomness; the same generator state gives the same images.
        textures: Texture source, see :func:`normlab.data.textures.texture_bank`.

    Returns:
        uint8 RGB images.

    Shape:
        masks: (N, H, W) with H, W ≤ 256 → (N, 3, H, W).
    """
    n, height, width = masks.shape
    bank = texture_bank(styles.name, textures)
    colours = _colour_pair(styles, n, generator)
    layers = []
    for colour in colours:
        strength = _uniform(n, 0.05, 0.2, generator)[:, None, None, None]
        crops = _texture_crops(bank, n, max(height, width), generator)[:, None, :height, :width]
        layers.append(colour[:, :, None, None] + strength * crops)
    images = torch.lerp(layers[1], layers[0], masks[:, None])
    contrast = _uniform(n, 0.7, 1.0, generator)[:, None, None, None]
    centre = images.mean(dim=(1, 2, 3), keepdim=True)
    images = torch.addcmul(centre * (1.0 - contrast), images, contrast)
    return images.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
