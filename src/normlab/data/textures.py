"""Grey texture banks for the style nuisance of the built-in digits.

Two disjoint banks exist, ``"seen"`` (used for training styles) and ``"unseen"`` (held out
to test style invariance). Their textures come from scikit-image's bundled sample images
when scikit-image is installed (``pip install normlab[textures]``), or are drawn
procedurally (stripes, checks, rings, smooth and speckle noise) otherwise.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .seeding import seeded_generator

__all__ = ["texture_bank", "resolve_texture_source", "TEXTURE_SOURCES", "TEXTURE_SIZE"]

TEXTURE_SIZE = 256
"""Height and width of every texture in a bank."""
TEXTURE_SOURCES = ("auto", "skimage", "procedural")
"""Valid ``source`` arguments of :func:`texture_bank`."""

_SKIMAGE_TEXTURES = {
    "seen": ("brick", "grass", "camera", "coffee"),
    "unseen": ("gravel", "moon", "astronaut", "chelsea"),
}


def _standardize(textures: torch.Tensor) -> torch.Tensor:
    flat = textures.flatten(1)
    std, mean = torch.std_mean(flat, dim=1, keepdim=True)
    return ((flat - mean) / std.clamp_min(1e-6)).view_as(textures)


def _skimage_textures(kind: str) -> torch.Tensor:
    from skimage import data as samples  # optional dependency: scikit-image

    textures = []
    for name in _SKIMAGE_TEXTURES[kind]:
        image = torch.as_tensor(getattr(samples, name)(), dtype=torch.float32)
        grey = image[..., :3].mean(-1) if image.dim() == 3 else image
        square = grey[: min(grey.shape), : min(grey.shape)]
        textures.append(F.adaptive_avg_pool2d(square[None, None], TEXTURE_SIZE)[0, 0])
    return torch.stack(textures)


def _procedural_textures(kind: str) -> torch.Tensor:
    axis = torch.arange(TEXTURE_SIZE, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    generator = seeded_generator(0 if kind == "seen" else 1)
    noise = torch.rand((2, TEXTURE_SIZE // 16, TEXTURE_SIZE // 16), generator=generator)
    smooth = F.interpolate(noise[None], size=TEXTURE_SIZE, mode="bicubic", align_corners=False)[0]
    if kind == "seen":
        stripes = torch.sin(2 * math.pi * y / 8)
        checks = torch.sign(torch.sin(2 * math.pi * x / 12) * torch.sin(2 * math.pi * y / 12))
        return torch.stack([stripes, checks, smooth[0], smooth[1]])
    diagonal = torch.sin(2 * math.pi * (x + y) / 10)
    center = TEXTURE_SIZE / 2
    rings = torch.sin(2 * math.pi * torch.hypot(x - center, y - center) / 7)
    speckle = torch.rand((TEXTURE_SIZE, TEXTURE_SIZE), generator=generator)
    return torch.stack([diagonal, rings, speckle, smooth[0] * smooth[1]])


@functools.lru_cache(maxsize=8)
def _bank(kind: str, source: str) -> torch.Tensor:
    textures = _skimage_textures(kind) if source == "skimage" else _procedural_textures(kind)
    return _standardize(textures)


def _skimage_available() -> bool:
    try:
        import skimage.data  # noqa: F401  # optional dependency: scikit-image
    except ImportError:
        return False
    return True


def resolve_texture_source(source: str) -> str:
    """The texture source ``source`` stands for: ``"skimage"`` or ``"procedural"``.

    Args:
        source: ``"skimage"`` (scikit-image sample images), ``"procedural"``, or ``"auto"``
            (scikit-image when importable, else procedural).

    Raises:
        ValueError: For an unknown source.
        ImportError: If ``source="skimage"`` and scikit-image is missing.
    """
    if source not in TEXTURE_SOURCES:
        raise ValueError(f"texture source must be one of {TEXTURE_SOURCES}, got {source!r}")
    if source == "auto":
        return "skimage" if _skimage_available() else "procedural"
    if source == "skimage" and not _skimage_available():
        raise ImportError(
            "skimage textures need scikit-image; `pip install normlab[textures]` "
            "or pass textures='procedural'"
        )
    return source


def texture_bank(kind: str, source: str = "auto") -> torch.Tensor:
    """The standardized textures of one bank.

    Args:
        kind: ``"seen"`` or ``"unseen"``; the two banks share no texture.
        source: See :func:`resolve_texture_source`.

    Returns:
        float32 tensor of shape (T, TEXTURE_SIZE, TEXTURE_SIZE) with zero mean and unit std
        per texture. It is cached: treat it as read-only.

    Raises:
        ValueError: For an unknown kind or source.
        ImportError: If ``source="skimage"`` and scikit-image is missing.
    """
    if kind not in _SKIMAGE_TEXTURES:
        raise ValueError(f"texture bank kind must be 'seen' or 'unseen', got {kind!r}")
    return _bank(kind, resolve_texture_source(source))
