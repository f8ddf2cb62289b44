"""Data sets by name: :func:`create_dataset`, :func:`list_datasets`, :func:`dataset_info`.

Names, whether they read from ``root``, their splits and their reader options:

- ``cifar10`` (root): train, test.
- ``cifar100`` (root): train, test; ``labels`` ("fine" default, or "coarse").
- ``mnist``, ``fashion_mnist`` (root): train, test; ``size``, ``channels`` (``size=32,
  channels=3`` for mixing with CIFAR).
- ``imagefolder`` (root): a split sub-folder name (e.g. "train", "val") or "all" for the
  folder itself; ``size``, ``domain``, ``classes``, ``channels``, ``mean``, ``std``.
- ``webdataset`` (root): WebDataset shards ``<split>-*.tar``, any split name; ``size``,
  ``channels``, ``mean``, ``std``, ``cache_dir``.
- ``digits`` (built in): train, test, test_unseen_styles; ``style``, ``textures``,
  ``size``, ``seed``.
- ``synthetic`` (built in): train, test; ``num_classes``, ``size``, ``channels``,
  ``train_size``, ``test_size``, ``noise``, ``seed``.
- ``coco`` (root, task detection): COCO instances, any split name (``train2017``,
  ``val2017``); ``masks``, ``train``, ``on_bad_annotation``, ``cache_dir``
  (:func:`~normlab.data.coco.index_coco`).
- ``coco_sample`` (built in, task detection): train, val; the same options
  (:func:`~normlab.data.coco.index_coco_sample`).

Detection data sets are indexed, not read into memory: :func:`create_detection_source`
gives their :class:`~normlab.data.coco.CocoSource` (for
:class:`~normlab.data.detection_loader.DetectionLoader`); :func:`create_dataset` and
:func:`create_source` refuse them.

Data sets with a ``source`` can also be streamed from disk (:func:`create_source`, for
:class:`~normlab.data.streaming.StreamingLoader`): ``imagefolder``
(:func:`~normlab.data.folder_index.index_image_folder`: ``domain``, ``classes``,
``cache_dir``, ``on_bad_file``) and ``webdataset``
(:func:`~normlab.data.shards.index_shards`: ``cache_dir``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cifar import read_cifar10, read_cifar100
from .coco import CocoSource, index_coco, index_coco_sample
from .coco_sample import COCO_SAMPLE_SPLITS
from .digits import DIGITS_SPLITS, load_digits_data
from .folder_index import index_image_folder
from .image_data import ImageData
from .image_folder import read_image_folder
from .mnist import read_fashion_mnist, read_mnist
from .shards import index_shards, read_shards
from .streaming import SampleSource
from .synthetic import SYNTHETIC_SPLITS, make_synthetic

__all__ = [
    "DatasetInfo",
    "create_dataset",
    "create_detection_source",
    "create_source",
    "dataset_info",
    "list_datasets",
]

_TRAIN_TEST = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about one data set.

    Attributes:
        name: Registry name.
        reader: The function building it (an :class:`ImageData`; for a detection data set
            its :class:`~normlab.data.coco.CocoSource`); called as
            ``reader(root, split, **options)`` when ``needs_root``, else
            ``reader(split, **options)``.
        needs_root: Whether the data are read from a local path.
        splits: Valid split names; ``None`` when any sub-folder name is valid.
        description: One line for listings.
        source: The function indexing it for streaming, called like ``reader``; ``None``
            when it is only read into memory.
        task: ``"classification"`` (images and class labels) or ``"detection"`` (images
            with boxes and masks, :class:`~normlab.data.coco.CocoSource`).
    """

    name: str
    reader: Callable[..., Any]
    needs_root: bool
    splits: tuple[str, ...] | None
    description: str
    source: Callable[..., Any] | None = None
    task: str = "classification"

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the reader accepts besides root and split."""
        return _keyword_options(self.reader)

    @property
    def source_options(self) -> tuple[str, ...]:
        """Keyword options the source accepts besides root and split."""
        return _keyword_options(self.source) if self.source is not None else ()


def _keyword_options(function: Callable[..., object]) -> tuple[str, ...]:
    parameters = inspect.signature(function).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


_DATASETS = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", read_cifar10, True, _TRAIN_TEST, "CIFAR-10 python archive"),
        DatasetInfo("cifar100", read_cifar100, True, _TRAIN_TEST, "CIFAR-100 python archive"),
        DatasetInfo("mnist", read_mnist, True, _TRAIN_TEST, "MNIST idx files"),
        DatasetInfo(
            "fashion_mnist", read_fashion_mnist, True, _TRAIN_TEST, "Fashion-MNIST idx files"
        ),
        DatasetInfo(
            "imagefolder",
            read_image_folder,
            True,
            None,
            "class-per-folder images (Pillow)",
            source=index_image_folder,
        ),
        DatasetInfo(
            "webdataset", read_shards, True, None, "WebDataset tar shards (normlab data pack)",
            source=index_shards,
        ),
        DatasetInfo(
            "digits", load_digits_data, False, DIGITS_SPLITS, "built-in scikit-learn digits"
        ),
        DatasetInfo(
            "synthetic", make_synthetic, False, SYNTHETIC_SPLITS, "procedural class patterns"
        ),
        DatasetInfo(
            "coco", index_coco, True, None, "COCO instances (boxes, masks; pycocotools)",
            source=index_coco, task="detection",
        ),
        DatasetInfo(
            "coco_sample", index_coco_sample, False, COCO_SAMPLE_SPLITS,
            "built-in COCO-format shapes and digits (boxes, masks)",
            source=index_coco_sample, task="detection",
        ),
    )
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`create_dataset`, sorted."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (case-insensitive; ``-`` may stand for ``_``).

    Raises:
        ValueError: For an unknown name, listing the valid ones.
    """
    key = name.lower().replace("-", "_")
    if key not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(list_datasets())}")
    return _DATASETS[key]


def _check_arguments(
    info: DatasetInfo, split: str, options: dict[str, object], accepted: tuple[str, ...], kind: str
) -> None:
    """Refuse a split ``info`` does not have, or options outside ``accepted``."""
    if info.splits is not None and split not in info.splits:
        raise ValueError(f"unknown {info.name} split {split!r}; valid: {', '.join(info.splits)}")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ValueError(f"unknown {info.name} {kind}(s) {unknown}; valid: {valid}")


def _refuse_detection(info: DatasetInfo, function: str) -> None:
    """Refuse a detection data set in a function building classification data."""
    if info.task == "detection":
        raise ValueError(
            f"data set {info.name!r} is a detection data set (boxes and masks): {function} "
            "builds classification data; index it with create_detection_source and batch "
            "it with DetectionLoader"
        )


def create_dataset(
    name: str, root: str | Path | None = None, split: str = "train", **options: object
) -> ImageData:
    """Build a data set by name.

    Args:
        name: One of :func:`list_datasets` (see the module docstring for splits/options).
        root: Local path of the data; required by readers, refused by built-in data.
        split: Split name.
        **options: Reader options, e.g. ``size=32, channels=3`` for MNIST or
            ``style=True`` for digits.

    Raises:
        ValueError: For an unknown name, split or option, or a root given to built-in
            data or missing for a reader.
        MissingDatasetError, CorruptDatasetError: From the readers.
    """
    info = dataset_info(name)
    _refuse_detection(info, "create_dataset")
    _check_arguments(info, split, options, info.options, "option")
    if info.needs_root:
        if root is None:
            raise ValueError(f"data set {info.name!r} is read from disk: pass root=<its folder>")
        return info.reader(root, split, **options)
    if root is not None:
        raise ValueError(f"data set {info.name!r} is built in and takes no root (got {root!r})")
    return info.reader(split, **options)


def create_source(
    name: str, root: str | Path | None = None, split: str = "train", **options: object
) -> SampleSource:
    """Index a data set by name for streaming (:class:`~normlab.data.StreamingLoader`).

    Args:
        name: A data set with a source (see the module docstring).
        root: Local path of the data.
        split: Split name (a sub-folder name for image folders).
        **options: Source options, e.g. ``cache_dir=...``, ``on_bad_file="skip"``.

    Raises:
        ValueError: For an unknown name, a data set that cannot be streamed, an unknown
            option or a missing root.
        MissingDatasetError, CorruptDatasetError: From the source.
    """
    info = dataset_info(name)
    _refuse_detection(info, "create_source")
    if info.source is None:
        streamable = ", ".join(n for n in list_datasets() if _DATASETS[n].source is not None)
        raise ValueError(
            f"data set {info.name!r} is read into memory only; streamable: {streamable}"
        )
    _check_arguments(info, split, options, info.source_options, "source option")
    if root is None:
        raise ValueError(f"data set {info.name!r} is streamed from disk: pass root=<its folder>")
    return info.source(root, split, **options)


def create_detection_source(
    name: str, root: str | Path | None = None, split: str = "train", **options: Any
) -> CocoSource:
    """Index a detection data set by name (for :class:`~normlab.data.DetectionLoader`).

    Args:
        name: A data set of task ``"detection"`` (``coco``, ``coco_sample``).
        root: Local path of the data; refused by built-in data.
        split: Split name.
        **options: Indexer options (``masks``, ``train``, ``on_bad_annotation``,
            ``cache_dir``).

    Raises:
        ValueError: For an unknown name, a classification data set, an unknown split or
            option, or a root missing or given to built-in data.
        MissingDatasetError, CorruptDatasetError: From the indexer.
    """
    info = dataset_info(name)
    if info.task != "detection" or info.source is None:
        detection = ", ".join(n for n in list_datasets() if _DATASETS[n].task == "detection")
        raise ValueError(f"data set {info.name!r} is not a detection data set; detection: "
                         f"{detection}")
    _check_arguments(info, split, options, info.source_options, "source option")
    if not info.needs_root:
        if root is not None:
            raise ValueError(f"data set {info.name!r} is built in and takes no root (got {root!r})")
        return info.source(split, **options)
    if root is None:
        raise ValueError(f"data set {info.name!r} is read from disk: pass root=<its folder>")
    return info.source(root, split, **options)
