"""Readers for MNIST and Fashion-MNIST in the idx format, gzipped or not.

``root`` is the folder holding the four idx files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
optionally ending in ``.gz``); torchvision's ``root/MNIST/raw`` and ``root/FashionMNIST/raw``
layouts are found too. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CorruptDatasetError, MissingDatasetError
from .image_data import ImageData
from .transforms import resize, with_channels

__all__ = ["read_idx", "read_mnist", "read_fashion_mnist", "MNIST_STATS", "FASHION_MNIST_STATS"]

MNIST_STATS = ((0.1307,), (0.3081,))
"""(mean, std) of the MNIST training images, in [0, 1] units."""
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
"""(mean, std) of the Fashion-MNIST training images, in [0, 1] units."""

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class _Family:
    name: str
    folder: str
    classes: tuple[str, ...]
    stats: tuple[tuple[float, ...], tuple[float, ...]]
    source: str

    def hint(self) -> str:
        return (
            f"Download the four {self.name} idx files (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            f"from {self.source} and pass the folder holding them as root"
        )


_MNIST = _Family(
    name="MNIST",
    folder="MNIST",
    classes=tuple(str(d) for d in range(10)),
    stats=MNIST_STATS,
    source="the MNIST page of Yann LeCun, Corinna Cortes and Christopher Burges",
)
_FASHION = _Family(
    name="Fashion-MNIST",
    folder="FashionMNIST",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),  # fmt: skip
    stats=FASHION_MNIST_STATS,
    source="the Fashion-MNIST repository of Zalando Research on GitHub",
)


def read_idx(path: str | Path, ndim: int, hint: str = "") -> np.ndarray:
    """Read an unsigned-byte idx file (gzipped or not) into an array.

    Args:
        path: The idx file. Gzip compression is detected from the content, not the name.
        ndim: The number of dimensions the file must have (3 for images, 1 for labels).
        hint: Where the user gets the file, appended to error messages.

    Returns:
        uint8 array with the shape stored in the header.

    Raises:
        MissingDatasetError: If the file does not exist.
        CorruptDatasetError: If decompression fails, the magic number is wrong, or the
            payload is shorter or longer than the header says.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDatasetError(path, "missing idx file", hint)
    payload = path.read_bytes()
    if payload[:2] == _GZIP_MAGIC:
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as error:
            raise CorruptDatasetError(path, f"corrupt gzip data ({error})", hint) from error
    header_size = 4 + 4 * ndim
    if len(payload) < header_size:
        raise CorruptDatasetError(
            path, f"{len(payload)} bytes is too short for an idx header ({header_size} bytes)", hint
        )
    magic = int.from_bytes(payload[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise CorruptDatasetError(
            path,
            f"wrong magic number {magic:#010x}; expected {expected_magic:#010x} "
            f"(an unsigned-byte idx file with {ndim} dimension{'s' if ndim > 1 else ''})",
            hint,
        )
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape))
    if len(payload) != expected:
        raise CorruptDatasetError(
            path,
            f"idx header declares shape {shape} ({expected} bytes) but the file holds "
            f"{len(payload)} bytes; it is truncated or corrupt",
            hint,
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx(root: Path, family: _Family, stem: str) -> Path:
    folders = [root, root / family.folder / "raw", root / family.folder]
    dotted = stem.replace("-idx", ".idx")
    for folder in folders:
        for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
            if (folder / name).is_file():
                return folder / name
    raise MissingDatasetError(root / f"{stem}.gz", f"missing {family.name} idx file", family.hint())


def _read_family(
    root: str | Path, split: str, family: _Family, size: int | None, channels: int
) -> ImageData:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown {family.name} split {split!r}; valid: train, test")
    root, prefix = Path(root), _SPLIT_PREFIX[split]
    images_path = _find_idx(root, family, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, family, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, 3, family.hint())
    labels = read_idx(labels_path, 1, family.hint())
    if labels.shape[0] != images.shape[0]:
        raise CorruptDatasetError(
            labels_path,
            f"holds {labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images",
            family.hint(),
        )
    if labels.size and labels.max() >= len(family.classes):
        raise CorruptDatasetError(
            labels_path, f"labels must lie in [0, 10), got max {labels.max()}", family.hint()
        )
    data = ImageData(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=len(family.classes),
        classes=list(family.classes),
        mean=family.stats[0],
        std=family.stats[1],
        name=f"{family.name.lower().replace('-', '_')}/{split}",
    )
    if size is not None:
        data = resize(data, size)
    return with_channels(data, channels)


def read_mnist(
    root: str | Path, split: str = "train", *, size: int | None = None, channels: int = 1
) -> ImageData:
    """Read MNIST from its idx files.

    Args:
        root: Folder holding the idx files (gzipped or not).
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000).
        size: Resize the 28×28 images to ``size`` × ``size`` (bilinear); ``None`` keeps 28.
        channels: 1 (grey) or 3 (grey replicated to RGB, e.g. to mix with CIFAR).

    Returns:
        The data set, normalized with :data:`MNIST_STATS` (replicated per channel).

    Raises:
        MissingDatasetError: If an idx file is missing.
        CorruptDatasetError: If an idx file is truncated, corrupt or has a wrong magic number.
    """
    return _read_family(root, split, _MNIST, size, channels)


def read_fashion_mnist(
    root: str | Path, split: str = "train", *, size: int | None = None, channels: int = 1
) -> ImageData:
    """Read Fashion-MNIST from its idx files.

    Same arguments, returns and errors as :func:`read_mnist`; normalized with
    :data:`FASHION_MNIST_STATS`.
    """
    return _read_family(root, split, _FASHION, size, channels)
