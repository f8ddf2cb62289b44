"""A small built-in detection and instance-segmentation set in the real COCO format.

:func:`write_coco_sample` pastes objects of four categories (circles, squares, triangles
as polygons; scikit-learn's handwritten digits as RLE masks) in random colours, sizes, places
and rotations onto crops of the built-in colour photos (scikit-image's samples) or tinted
textures, and writes them as COCO does::

    out/annotations/instances_train.json   out/train/000000000001.jpg ...
    out/annotations/instances_val.json     out/val/000000010001.jpg ...

Every annotation is exact: an object's mask is the one pycocotools decodes from its
segmentation (polygons are rasterized by pycocotools before painting), objects never
overlap (so each mask is fully visible), and ``bbox`` and ``area`` are the mask's own
(``pycocotools.mask.toBbox`` / ``area``). Images are 128-192 pixels high or wide, half of
them landscape and half portrait, with 3-6 objects of 16-80 pixels. Category ids are not
contiguous (1, 2, 4, 7), as in COCO, so a label/category mix-up shows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .coco_masks import decode_segmentation, encode_rle, pycocotools_modules
from .decode import import_pillow
from .digits import load_digits_data
from .photos import random_crops
from .sample_folder import background_images, write_atomically
from .seeding import seeded_generator

__all__ = ["COCO_SAMPLE_CATEGORIES", "COCO_SAMPLE_SPLITS", "write_coco_sample"]

COCO_SAMPLE_SPLITS = ("train", "val")
"""The set's splits; each has ``annotations/instances_<split>.json`` and ``<split>/``."""
COCO_SAMPLE_CATEGORIES = ((1, "circle"), (2, "square"), (4, "triangle"), (7, "digit"))
"""``(category id, name)`` of the set's categories."""
_DIGITS_SPLIT = {"train": "train", "val": "test"}
_FIRST_ID = {"train": 1, "val": 10_001}
_SIDES = (128, 192)
_OBJECT_SIDES = (16, 80)
_OBJECTS = (3, 6)
_MARGIN = 2
_TRIES = 30
_JPEG_QUALITY = 90


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """A uniform integer in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _polygon(kind: str, x: int, y: int, side: int, generator: torch.Generator) -> list[float]:
    """A circle (24-gon), square or triangle inscribed in the ``side`` square at (x, y),
    rotated by a random angle, as COCO's flat ``[x1, y1, x2, y2, ...]`` (2 decimals)."""
    corners = {"circle": 24, "square": 4, "triangle": 3}[kind]
    radius = side / 2 if kind == "circle" else side / 2 * 0.95
    angle = 2 * math.pi * _uniform(generator)
    cx, cy = x + side / 2, y + side / 2
    points = []
    for k in range(corners):
        a = angle + 2 * math.pi * k / corners
        points += [round(cx + radius * math.cos(a), 2), round(cy + radius * math.sin(a), 2)]
    return points


def _digit_rle(
    digit: torch.Tensor, x: int, y: int, side: int, height: int, width: int
) -> dict[str, Any]:
    """The compressed RLE of a digit (32 x 32 in [0, 1]) scaled to ``side`` at (x, y)."""
    scaled = F.interpolate(digit[None, None], size=(side, side), mode="bilinear")[0, 0]
    mask = np.zeros((1, height, width), dtype=np.uint8)
    mask[0, y : y + side, x : x + side] = (scaled > 0.5).numpy()
    return encode_rle(mask)[0]


def _place(
    squares: list[tuple[int, int, int]], height: int, width: int, generator: torch.Generator
) -> tuple[int, int, int] | None:
    """A square (x, y, side) inside the image, apart from ``squares``; ``None`` if none is
    found."""
    for _ in range(_TRIES):
        side = _randint(*_OBJECT_SIDES, generator)
        x = _randint(0, width - side, generator)
        y = _randint(0, height - side, generator)
        if all(
            x + side + _MARGIN <= sx or sx + s + _MARGIN <= x
            or y + side + _MARGIN <= sy or sy + s + _MARGIN <= y
            for sx, sy, s in squares
        ):
            return x, y, side
    return None


def _image(
    image_id: int,
    backgrounds: list[torch.Tensor],
    digits: torch.Tensor,
    generator: torch.Generator,
    mask_api: Any,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image (H, W, 3) uint8 and its annotations (without ids)."""
    long_side = _randint(_SIDES[0] + 32, _SIDES[1], generator)
    short_side = _randint(_SIDES[0], long_side - 16, generator)
    portrait = _uniform(generator) < 0.5
    height, width = (long_side, short_side) if portrait else (short_side, long_side)
    crop = random_crops(backgrounds, 1, long_side, generator)
    pixels = F.interpolate(crop, size=(height, width), mode="bilinear")[0]
    annotations: list[dict[str, Any]] = []
    squares: list[tuple[int, int, int]] = []
    for _ in range(_randint(*_OBJECTS, generator)):
        place = _place(squares, height, width, generator)
        if place is None:
            continue
        x, y, side = place
        category, kind = COCO_SAMPLE_CATEGORIES[_randint(0, 3, generator)]
        segmentation: Any
        if kind == "digit":
            digit = digits[_randint(0, len(digits) - 1, generator)]
            segmentation = _digit_rle(digit, x, y, side, height, width)
        else:
            segmentation = [_polygon(kind, x, y, side, generator)]
        decoded = decode_segmentation(segmentation, height, width)
        rle = encode_rle(decoded[None])[0]
        mask = torch.from_numpy(decoded).float()
        colour = torch.rand((3, 1, 1), generator=generator)
        pixels.mul_(1 - mask).add_(colour * mask)
        squares.append(place)
        annotations.append({
            "image_id": image_id,
            "category_id": category,
            "segmentation": segmentation,
            "area": float(mask_api.area(rle)),
            "bbox": [float(v) for v in mask_api.toBbox(rle)],
            "iscrowd": 0,
        })
    image = pixels.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return image, annotations


def _write_split(
    out: Path, split: str, count: int, seed: int, backgrounds: list[torch.Tensor], mask_api: Any
) -> None:
    image_module, _ = import_pillow()
    digits = load_digits_data(_DIGITS_SPLIT[split], size=32).images[:, 0].float() / 255
    generator = seeded_generator(seed, COCO_SAMPLE_SPLITS.index(split))
    (out / split).mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(_FIRST_ID[split], _FIRST_ID[split] + count):
        pixels, objects = _image(image_id, backgrounds, digits, generator, mask_api)
        file_name = f"{image_id:012d}.jpg"
        image_module.fromarray(pixels).save(out / split / file_name, quality=_JPEG_QUALITY)
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for annotation in objects:
            annotations.append({"id": len(annotations) + 1, **annotation})
    content = {
        "info": {"description": "normlab coco_sample", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c, "name": name, "supercategory": "shape"} for c, name in COCO_SAMPLE_CATEGORIES
        ],
    }
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))


def write_coco_sample(
    out: str | Path, *, seed: int = 0, train_images: int = 200, val_images: int = 50
) -> Path:
    """Write the built-in COCO-format detection and instance-mask set (module docstring).

    Deterministic: the same arguments (and texture source: scikit-image's photos when it
    is installed) give the same files. Written atomically: into a temporary folder next to
    ``out``, renamed to ``out`` at the end.

    Args:
        out: The folder to create (absent or empty).
        seed: Seed of backgrounds, objects, places and colours.
        train_images: Images of the ``train`` split.
        val_images: Images of the ``val`` split.

    Returns:
        ``out``.

    Raises:
        FileExistsError: If ``out`` exists and is not an empty folder (or another process
            completed it meanwhile).
        ValueError: For a split of fewer than one image.
        ImportError: If pycocotools or Pillow is missing.
    """
    if train_images < 1 or val_images < 1:
        raise ValueError(f"need >= 1 image per split, got {train_images} and {val_images}")
    _, mask_api = pycocotools_modules()

    def write(folder: Path) -> None:
        backgrounds = background_images(_SIDES[1] // 2, seeded_generator(seed))
        for split, count in zip(COCO_SAMPLE_SPLITS, (train_images, val_images)):
            _write_split(folder, split, count, seed, backgrounds, mask_api)

    return write_atomically(out, write)
