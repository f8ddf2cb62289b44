"""Writers of tiny data files in the real on-disk formats, for the reader tests."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np


def cifar_record(rng: np.random.Generator, n: int, label_keys: dict[str, int]) -> dict:
    """A CIFAR batch dict: n random images as (n, 3072) uint8 and labels per key."""
    record: dict = {"batch_label": "tiny", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    for key, classes in label_keys.items():
        record[key] = rng.integers(0, classes, n).tolist()
    return record


def write_pickle(path: Path, record: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(record, protocol=2))


def write_cifar10_folder(root: Path, per_batch: int = 3, seed: int = 0) -> dict[str, dict]:
    """Write ``root/cifar-10-batches-py`` and return its records by file name."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    records = {name: cifar_record(rng, per_batch, {"labels": 10}) for name in names}
    records["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    for name, record in records.items():
        write_pickle(folder / name, record)
    return records


def write_cifar100_folder(root: Path, n: int = 5, seed: int = 1) -> dict[str, dict]:
    """Write ``root/cifar-100-python`` and return its records by file name."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    keys = {"fine_labels": 100, "coarse_labels": 20}
    records = {name: cifar_record(rng, n, keys) for name in ("train", "test")}
    records["meta"] = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    for name, record in records.items():
        write_pickle(folder / name, record)
    return records


def tar_folder(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` into the gzipped tar ``archive`` under the folder's own name."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def cifar_images(record: dict) -> np.ndarray:
    return record["data"].reshape(-1, 3, 32, 32)


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file holding ``array``."""
    header = io.BytesIO()
    header.write(bytes([0, 0, 0x08, array.ndim]))
    for dim in array.shape:
        header.write(int(dim).to_bytes(4, "big"))
    return header.getvalue() + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    payload = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_mnist_folder(
    root: Path, compress: bool, n_train: int = 6, n_test: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four MNIST idx files into ``root``; return the arrays by split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_jpeg_folder(
    folder: Path, classes: list[str], per_class: int = 3, size: tuple[int, int] = (12, 16),
    seed: int = 0,
) -> list[Path]:
    """Write random JPEGs (height, width = ``size``) to folder/<class>/img<i>.JPEG and set
    every folder's modification time a minute back (an index cache trusts old folders
    only); return the files in index order."""
    from PIL import Image  # optional dependency: Pillow

    rng = np.random.default_rng(seed)
    files = []
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            files.append(folder / name / f"img{i}.JPEG")
            Image.fromarray(pixels).save(files[-1], quality=90)
    age_folders(folder.parent)
    return files


def age_folders(root: Path, seconds: float = 60.0) -> None:
    """Set the modification time of ``root`` and every folder below it ``seconds`` back."""
    stamp = time.time() - seconds
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (stamp, stamp))
