"""Colour photos for style transfer: scikit-image's bundled samples or local image files.

Content batches are random square crops (random scale and position) resized to one size,
drawn from a seeded generator, so a run sees the same batches every time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from normlab.data.errors import DatasetError, MissingDatasetError
from normlab.data.seeding import seeded_generator

__all__ = ["BUILTIN_CONTENT", "BUILTIN_STYLE", "content_batches", "load_photo", "random_crops"]

BUILTIN_CONTENT = (
    "chelsea", "coffee", "rocket", "stereo_motorcycle", "retina", "hubble_deep_field",
)
"""scikit-image samples used as training content images (``astronaut`` is held out)."""
BUILTIN_STYLE = "immunohistochemistry"
"""The default style image (a stained tissue section: strong colours and texture)."""


def _from_skimage(name: str) -> torch.Tensor:
    try:
        from skimage import data as samples  # optional dependency: scikit-image
    except ImportError as exc:
        raise MissingDatasetError(
            name, "the built-in photos come from scikit-image, which is not installed",
            "`pip install normlab[textures]`, or give the path of an image file",
        ) from exc
    loader = getattr(samples, name, None)
    if loader is None or not callable(loader):
        raise MissingDatasetError(
            name, "is neither an image file nor a scikit-image sample",
            "give an image file (PNG, JPEG) or a name such as astronaut or coffee",
        )
    image = loader()
    return torch.as_tensor(image[0] if isinstance(image, tuple) else image)


def _from_file(path: Path) -> torch.Tensor:
    try:
        from PIL import Image  # optional dependency: Pillow
    except ImportError as exc:
        raise DatasetError(path, "reading image files needs Pillow, which is not installed",
                           "`pip install normlab[images]`") from exc

    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB")))


def load_photo(spec: str | Path) -> torch.Tensor:
    """An RGB image ``(3, H, W)`` in [0, 1] from a file path or a scikit-image sample name.

    Raises:
        MissingDatasetError: Neither a file nor a sample (or scikit-image is missing).
        DatasetError: Pillow, needed to read a file, is missing.
    """
    path = Path(spec)
    pixels = _from_file(path) if path.is_file() else _from_skimage(str(spec))
    if pixels.ndim == 2:
        pixels = pixels[..., None].expand(-1, -1, 3)
    return pixels[..., :3].permute(2, 0, 1).float().div(255.0).contiguous()


def random_crops(
    images: Sequence[torch.Tensor], count: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` square crops ``(count, 3, size, size)``: a random image, a random side
    between half and all of its shorter side, a random position, resized (area)."""
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        short = min(image.shape[-2:])
        side = int(torch.randint(short // 2, short + 1, (1,), generator=generator))
        top = int(torch.randint(image.shape[-2] - side + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[-1] - side + 1, (1,), generator=generator))
        crop = image[:, top : top + side, left : left + side]
        crops.append(F.interpolate(crop[None], size=(size, size), mode="area")[0])
    return torch.stack(crops)


def content_batches(
    images: Sequence[torch.Tensor], batch_size: int, size: int, seed: int
) -> Iterator[torch.Tensor]:
    """An endless, seeded stream of :func:`random_crops` batches."""
    generator = seeded_generator(seed)
    while True:
        yield random_crops(images, batch_size, size, generator)
