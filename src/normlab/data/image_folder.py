"""Reader for folders of images with one sub-folder per class.

Layouts (``<split>`` is optional, ``<domain>`` is for multi-domain sets such as Office-Home)::

    root/<class>/<image>                    read_image_folder(root)
    root/<split>/<class>/<image>            read_image_folder(root, "train")   # ImageNet-style
    root/<domain>/<class>/<image>           read_image_folder(root, domain="Art")
    root/<domain>/<split>/<class>/<image>   read_image_folder(root, "train", domain="Art")

Every image is loaded into memory at ``size`` × ``size``, so this suits data sets of up to a
few hundred thousand small images (Office-Home, ImageNet subsets, downsampled ImageNet).
Pillow is needed (``pip install normlab[images]``) and imported only when this reader runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .decode import import_pillow, pillow_errors
from .errors import CorruptDatasetError, MissingDatasetError
from .image_data import ImageData

__all__ = [
    "read_image_folder",
    "ClassLayout",
    "class_layout",
    "no_images_error",
    "normalization_stats",
    "IMAGE_EXTENSIONS",
    "IMAGENET_STATS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
"""File endings (case-insensitive) read as images; other files in class folders are skipped."""
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""Per-channel (mean, std) of ImageNet, the default normalization of image folders."""

TRAIN_SPLIT = "train"
"""The split whose class folders name the classes of every other split of a data set."""

_HINT = "Pass the folder that holds one sub-folder of images per class as root"


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _resolve_folder(root: Path, split: str, domain: str | None) -> Path:
    base = root / domain if domain is not None else root
    if not base.is_dir():
        known = ", ".join(_subfolders(root)) if root.is_dir() else "none, root does not exist"
        raise MissingDatasetError(
            base, f"no such folder (folders in root: {known})", "Pass an existing root and domain"
        )
    if split == "all":
        return base
    folder = base / split
    if not folder.is_dir():
        raise MissingDatasetError(
            folder,
            f"no folder for split {split!r}",
            "Pass split='all' to read the folder itself as one split (class per sub-folder)",
        )
    return folder


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _load_image(path: Path, size: int, mode: str) -> np.ndarray:
    image_module, image_ops = import_pillow()
    with pillow_errors(path), image_module.open(path) as image:
        fitted = image_ops.fit(
            image.convert(mode), (size, size), method=image_module.Resampling.BILINEAR
        )
    return np.asarray(fitted, dtype=np.uint8).reshape(size, size, -1)


def _class_list(
    folder: Path, split: str, classes: Sequence[str] | None, found: list[str]
) -> tuple[list[str], str, Path | None]:
    """The class names fixing the labels, where they come from, and the sibling training
    split folder when its listing named them.

    Given ``classes`` win; otherwise a split other than ``train`` takes the class folders
    of its sibling ``train`` split (when there is one), so that a split lacking a class
    keeps every other class's label.
    """
    if classes is not None:
        return list(classes), "the given classes", None
    train = folder.parent / TRAIN_SPLIT
    if split not in ("all", TRAIN_SPLIT) and train.is_dir():
        return _subfolders(train), f"the training split {train}", train
    return found, str(folder), None


@dataclass(frozen=True)
class ClassLayout:
    """Where a split's images are and which classes label them.

    Attributes:
        folder: The folder holding one sub-folder per class.
        classes: The class names fixing the labels (label ``k`` is ``classes[k]``).
        found: The class sub-folders present in ``folder``, sorted.
        listed: The folders whose listings decided ``classes`` and ``found`` (``folder``,
            and the sibling training split when it named the classes).
        name: The data set's name, ``imagefolder:<root name>/<domain>/<split>``.
    """

    name: str
    folder: Path
    classes: list[str]
    found: list[str]
    listed: tuple[Path, ...]


def class_layout(
    root: Path, split: str, domain: str | None, classes: Sequence[str] | None
) -> ClassLayout:
    """Resolve the folder of ``split`` (and ``domain``) under ``root`` and its classes, with
    the rules of :func:`read_image_folder`.

    Raises:
        MissingDatasetError: If the domain or split folder is missing.
        CorruptDatasetError: If a class sub-folder is not one of the classes.
    """
    folder = _resolve_folder(root, split, domain)
    found = _subfolders(folder)
    names, source, train = _class_list(folder, split, classes, found)
    unknown = [name for name in found if name not in names]
    if unknown:
        raise CorruptDatasetError(
            folder / unknown[0],
            f"class folder {unknown[0]!r} is not one of the {len(names)} classes of "
            f"{source} ({', '.join(names)})",
            "Remove the folder, or add the class to the training split",
        )
    parts = [p for p in (root.name, domain, None if split == "all" else split) if p]
    listed = (folder,) if train is None else (folder, train)
    return ClassLayout("imagefolder:" + "/".join(parts), folder, names, found, listed)


def no_images_error(folder: Path) -> MissingDatasetError:
    """The error for a split folder whose class sub-folders hold no images."""
    return MissingDatasetError(
        folder, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders", _HINT
    )


def read_image_folder(
    root: str | Path,
    split: str = "all",
    *,
    size: int = 32,
    domain: str | None = None,
    classes: Sequence[str] | None = None,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageData:
    """Read a folder of images with one sub-folder per class.

    Each image is converted to RGB (``channels=3``) or grey (``channels=1``), its central
    square (the largest with the image's aspect ratio) is cut out and resized to ``size``
    × ``size`` with bilinear filtering; images already of that size are kept exactly.

    Args:
        root: The data set's folder.
        split: Sub-folder of the split (e.g. ``"train"``, ``"val"``), or ``"all"`` to read
            the folder itself.
        size: Output height and width.
        domain: Sub-folder of the domain for multi-domain sets (Office-Home: ``"Art"``,
            ``"Clipart"``, ``"Product"``, ``"Real World"``).
        classes: The class list, fixing the label order; pass the training split's
            ``classes`` when reading another domain so labels agree. Default: the sorted
            class folders of the ``train`` split next to ``split`` when there is one (a
            test split lacking a class keeps the other labels), else of ``split`` itself.
            A listed class without a folder has no images.
        channels: 3 (RGB) or 1 (grey).
        mean: Normalization mean per channel; default :data:`IMAGENET_STATS` (its
            average for grey images).
        std: Normalization std per channel; default as for ``mean``.

    Returns:
        The images, labelled by class sub-folder.

    Raises:
        MissingDatasetError: If a folder is missing or holds no images.
        CorruptDatasetError: If an image cannot be decoded or is a possible
            decompression bomb, or a class sub-folder is not one of the classes.
        ImportError: If Pillow is not installed.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    layout = class_layout(root, split, domain, classes)
    names = layout.classes
    files = [
        (path, label)
        for label, name in enumerate(names)
        for path in _image_files(layout.folder / name)
    ]
    if not files:
        raise no_images_error(layout.folder)
    mode = "RGB" if channels == 3 else "L"
    images = np.stack([_load_image(path, size, mode) for path, _ in files])
    mean, std = normalization_stats(channels, mean, std)
    return ImageData(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor([label for _, label in files], dtype=torch.int64),
        num_classes=len(names),
        classes=names,
        mean=mean,
        std=std,
        name=layout.name,
    )


def normalization_stats(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as given, each defaulting to :data:`IMAGENET_STATS` (their channel
    average for grey images, ``channels=1``)."""
    default_mean: tuple[float, ...]
    default_std: tuple[float, ...]
    default_mean, default_std = IMAGENET_STATS
    if channels == 1:
        default_mean, default_std = (sum(default_mean) / 3,), (sum(default_std) / 3,)
    return (
        tuple(mean) if mean is not None else default_mean,
        tuple(std) if std is not None else default_std,
    )
