"""Reader for CIFAR-10 and CIFAR-100 in the official Python-pickle format.

``root`` may be any of: the archive itself (``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz``), the folder holding the archive, the extracted folder
(``cifar-10-batches-py`` / ``cifar-100-python``), or the folder holding the extracted folder.
Nothing is downloaded.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptDatasetError, MissingDatasetError
from .image_data import ImageData
from .safe_pickle import load_array_pickle

__all__ = ["read_cifar10", "read_cifar100", "CIFAR10_STATS", "CIFAR100_STATS"]

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
"""Per-channel (mean, std) of the CIFAR-10 training images, in [0, 1] units."""
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
"""Per-channel (mean, std) of the CIFAR-100 training images, in [0, 1] units."""

_IMAGE_BYTES = 3 * 32 * 32
_READ_ERRORS = (OSError, EOFError, pickle.UnpicklingError, tarfile.TarError, zlib.error)


@dataclass(frozen=True)
class _Layout:
    name: str
    archive: str
    folder: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    stats: tuple[tuple[float, ...], tuple[float, ...]]

    @property
    def hint(self) -> str:
        return (
            f"Download {self.archive} (the 'python version') from the CIFAR page of Alex "
            f"Krizhevsky (University of Toronto) and pass the folder holding it, or the "
            f"extracted {self.folder} folder, as root"
        )


_CIFAR10 = _Layout(
    name="cifar10",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta="batches.meta",
    stats=CIFAR10_STATS,
)
_CIFAR100 = _Layout(
    name="cifar100",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    meta="meta",
    stats=CIFAR100_STATS,
)


def _read_members(root: Path, layout: _Layout, members: list[str]) -> dict[str, tuple[Path, bytes]]:
    """Bytes of each member file, from the extracted folder or from the archive."""
    root = Path(root)
    folders = [root / layout.folder, root] if root.is_dir() else []
    for folder in folders:
        if (folder / members[0]).is_file():
            return {m: (folder / m, _read_file(folder / m, layout)) for m in members}
    archive = root if root.is_file() else root / layout.archive
    if not archive.is_file():
        raise MissingDatasetError(
            root,
            f"found neither {layout.archive} nor an extracted {layout.folder} folder "
            f"(expected files: {', '.join(members)})",
            layout.hint,
        )
    return _read_archive(archive, layout, members)


def _read_file(path: Path, layout: _Layout) -> bytes:
    if not path.is_file():
        raise MissingDatasetError(path, f"missing {layout.name} file", layout.hint)
    return path.read_bytes()


def _read_archive(
    archive: Path, layout: _Layout, members: list[str]
) -> dict[str, tuple[Path, bytes]]:
    found: dict[str, tuple[Path, bytes]] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                member = tar.extractfile(info) if info.isfile() else None
                if member is not None and base in members and base not in found:
                    found[base] = (archive / info.name, member.read())
    except _READ_ERRORS as error:
        raise CorruptDatasetError(
            archive, f"cannot read the archive ({error}); expected a {layout.archive}", layout.hint
        ) from error
    missing = [m for m in members if m not in found]
    if missing:
        raise CorruptDatasetError(
            archive,
            f"archive lacks {', '.join(missing)} (expected {layout.folder}/<file>)",
            layout.hint,
        )
    return found


def _unpickle(
    path: Path, payload: bytes, layout: _Layout, keys: tuple[str, ...]
) -> dict[str, Any]:
    try:
        record = load_array_pickle(payload)
    except _READ_ERRORS as error:
        raise CorruptDatasetError(
            path, f"truncated or corrupt {layout.name} pickle ({error})", layout.hint
        ) from error
    if not isinstance(record, dict) or any(k not in record for k in keys):
        raise CorruptDatasetError(
            path, f"expected a pickled dict with keys {', '.join(keys)}", layout.hint
        )
    return record


def _read_batch(
    path: Path, payload: bytes, layout: _Layout, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    record = _unpickle(path, payload, layout, ("data", label_key))
    data, labels = record["data"], np.asarray(record[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise CorruptDatasetError(path, "'data' must be a 2-D uint8 array", layout.hint)
    if labels.dtype.kind not in "iu":
        raise CorruptDatasetError(
            path, f"{label_key!r} must be integer class indices, got {labels.dtype} values",
            layout.hint,
        )
    if data.shape[1] != _IMAGE_BYTES or labels.shape != (data.shape[0],):
        raise CorruptDatasetError(
            path,
            f"expected 'data' of shape (N, {_IMAGE_BYTES}) and N labels, got {data.shape} "
            f"and {labels.shape[0] if labels.ndim else 'no'} labels",
            layout.hint,
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDatasetError(
            path, f"labels must lie in [0, {num_classes}), got max {labels.max()}", layout.hint
        )
    return data, labels.astype(np.int64)


def _read_cifar(
    root: str | Path, split: str, layout: _Layout, label: str, classes_key: str
) -> ImageData:
    if split not in layout.splits:
        valid = ", ".join(layout.splits)
        raise ValueError(f"unknown {layout.name} split {split!r}; valid: {valid}")
    batches = list(layout.splits[split])
    files = _read_members(Path(root), layout, [*batches, layout.meta])
    meta_path, meta_payload = files[layout.meta]
    meta = _unpickle(meta_path, meta_payload, layout, (classes_key,))
    classes = [str(c) for c in meta[classes_key]]
    parts = [_read_batch(*files[b], layout, label, len(classes)) for b in batches]
    images = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([lab for _, lab in parts])
    return ImageData(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        num_classes=len(classes),
        classes=classes,
        mean=layout.stats[0],
        std=layout.stats[1],
        name=f"{layout.name}/{split}",
    )


def read_cifar10(root: str | Path, split: str = "train") -> ImageData:
    """Read CIFAR-10 from the official Python-pickle archive or its extracted folder.

    Args:
        root: The archive, its folder, the extracted ``cifar-10-batches-py`` folder or its
            parent folder.
        split: ``"train"`` (50 000 images, ``data_batch_1``…``5``) or ``"test"`` (10 000).

    Returns:
        3×32×32 images, 10 classes, normalized with :data:`CIFAR10_STATS`.

    Raises:
        MissingDatasetError: If neither the archive nor the extracted files are found.
        CorruptDatasetError: If a file is truncated, corrupt or has the wrong layout.
    """
    return _read_cifar(root, split, _CIFAR10, "labels", "label_names")


def read_cifar100(root: str | Path, split: str = "train", *, labels: str = "fine") -> ImageData:
    """Read CIFAR-100 from the official Python-pickle archive or its extracted folder.

    Args:
        root: The archive, its folder, the extracted ``cifar-100-python`` folder or its
            parent folder.
        split: ``"train"`` (50 000 images) or ``"test"`` (10 000).
        labels: ``"fine"`` (100 classes, default) or ``"coarse"`` (20 super-classes).

    Returns:
        3×32×32 images, normalized with :data:`CIFAR100_STATS`.

    Raises:
        MissingDatasetError: If neither the archive nor the extracted files are found.
        CorruptDatasetError: If a file is truncated, corrupt or has the wrong layout.
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"CIFAR-100 labels must be 'fine' or 'coarse', got {labels!r}")
    return _read_cifar(root, split, _CIFAR100, f"{labels}_labels", f"{labels}_label_names")
