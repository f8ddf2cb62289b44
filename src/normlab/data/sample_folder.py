"""A small ImageNet-format folder of JPEGs made from built-in data: :func:`write_sample_folder`.

Each image is one of scikit-learn's handwritten digits (its class) drawn, in a random colour,
size and place, on a random crop of a built-in colour photo (scikit-image's samples, with
scikit-image installed) or of a tinted procedural texture (without it). The folder has the
layout of ImageNet after the usual validation-set preparation::

    out/train/n00000003/n00000003_17.JPEG
    out/val/n00000003/ILSVRC2012_val_00000042.JPEG

so every ImageNet recipe, the streaming loader and ``normlab data pack`` run on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .decode import import_pillow
from .digits import load_digits_data
from .photos import BUILTIN_CONTENT, load_photo, random_crops
from .seeding import seeded_generator
from .textures import resolve_texture_source, texture_bank

__all__ = ["SAMPLE_SPLITS", "background_images", "write_atomically", "write_sample_folder"]

SAMPLE_SPLITS = {"train": "train", "val": "test"}
"""The folder's splits and the digits split each one draws its digits from."""
_JPEG_QUALITY = 90


def background_images(size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Colour images (3, H, W) in [0, 1] with shorter side ``2 * size`` (or less): the
    built-in photos, or tinted textures. Shrunk once here, so each crop is cheap."""
    if resolve_texture_source("auto") == "skimage":
        images = [load_photo(name) for name in BUILTIN_CONTENT]
    else:
        textures = texture_bank("seen", "procedural")
        tints = torch.rand((len(textures), 3, 1, 1), generator=generator)
        images = list((0.5 + 0.15 * textures[:, None]).clamp(0.0, 1.0) * (0.3 + 0.7 * tints))
    shrunk = []
    for image in images:
        scale = min(1.0, 2 * size / min(image.shape[-2:]))
        shape = [max(size, round(side * scale)) for side in image.shape[-2:]]
        shrunk.append(F.interpolate(image[None], size=shape, mode="area")[0])
    return shrunk


def _draw(
    background: torch.Tensor, digit: torch.Tensor, width: int, generator: torch.Generator
) -> np.ndarray:
    """The digit mask (S, S) in [0, 1] blended in a random colour onto ``background``
    (3, size, size) stretched to ``width``; returns (size, width, 3) uint8."""
    size = background.shape[-1]
    image = F.interpolate(background[None], size=(size, width), mode="bilinear")[0]
    side = int(torch.randint(size // 2, size * 9 // 10 + 1, (1,), generator=generator))
    mask = F.interpolate(digit[None, None], size=(side, side), mode="bilinear")[0].clamp(0, 1)
    top = int(torch.randint(size - side + 1, (1,), generator=generator))
    left = int(torch.randint(width - side + 1, (1,), generator=generator))
    colour = torch.rand((3, 1, 1), generator=generator)
    region = image[:, top : top + side, left : left + side]
    region.mul_(1 - mask).add_(colour * mask)
    return image.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _write_split(
    folder: Path, split: str, per_class: int, size: int, seed: int, backgrounds: list[torch.Tensor]
) -> None:
    image_module, _ = import_pillow()
    digits = load_digits_data(SAMPLE_SPLITS[split], size=32)
    masks = digits.images[:, 0].float() / 255
    generator = seeded_generator(seed, list(SAMPLE_SPLITS).index(split))
    width = round(size * 4 / 3)
    count = 0
    for label in range(10):
        wnid = f"n{label:08d}"
        (folder / wnid).mkdir(parents=True)
        members = torch.nonzero(digits.labels == label).flatten().tolist()
        for i in range(per_class):
            crop = random_crops(backgrounds, 1, size, generator)[0]
            pixels = _draw(crop, masks[members[i % len(members)]], width, generator)
            count += 1
            name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{count:08d}.JPEG"
            image_module.fromarray(pixels).save(folder / wnid / name, quality=_JPEG_QUALITY)


def write_sample_folder(
    out: str | Path,
    *,
    per_class: int = 20,
    size: int = 64,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """Write an ImageNet-format folder of JPEGs of the 10 digit classes.

    Deterministic: the same arguments (and the same texture source, see the module
    docstring) give the same pixels. Written atomically: into a temporary folder next to
    ``out``, renamed to ``out`` at the end, so ``out`` never holds a partial folder.

    Args:
        out: The folder to create (absent or empty).
        per_class: Images per class and split (digits are reused with new backgrounds
            when a class has fewer).
        size: Image height; the width is ``round(size * 4 / 3)`` (ImageNet's usual 4:3).
        splits: Splits to write, of ``"train"`` (digits of the digits' train split) and
            ``"val"`` (digits of its test split).
        seed: Seed of backgrounds, digit sizes, places and colours.

    Returns:
        ``out``.

    Raises:
        FileExistsError: If ``out`` exists and is not an empty folder.
        ValueError: For an unknown split, ``per_class < 1`` or ``size < 16``.
    """
    unknown = [s for s in splits if s not in SAMPLE_SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be some of {list(SAMPLE_SPLITS)}, got {list(splits)}")
    if per_class < 1 or size < 16:
        raise ValueError(f"need per_class >= 1 and size >= 16, got {per_class} and {size}")

    def write(folder: Path) -> None:
        backgrounds = background_images(size, seeded_generator(seed))
        for split in splits:
            _write_split(folder / split, split, per_class, size, seed, backgrounds)

    return write_atomically(out, write)


def write_atomically(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(folder)`` on a temporary folder next to ``out`` and rename it to ``out``
    when it returns, so ``out`` never holds a partial folder (a failed write leaves nothing).
    Torch runs on one intra-op thread meanwhile (tiny per-image ops: a thread pool's
    hand-offs cost more).

    Returns:
        ``out``.

    Raises:
        FileExistsError: If ``out`` exists and is not an empty folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose another one")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        temporary.chmod(0o755)
        write(temporary)
        os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return out
