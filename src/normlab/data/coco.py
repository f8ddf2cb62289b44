"""COCO instances (detection, instance segmentation): :func:`index_coco` and :class:`CocoSource`.

Layout (COCO 2017's, with ``split`` e.g. ``train2017``, ``val2017``)::

    root/annotations/instances_<split>.json
    root/<split>/<file_name of each image>

The annotation file is read once with pycocotools (Lin et al., "Microsoft COCO: Common
Objects in Context", ECCV 2014) and checked; what a training loader needs is kept in compact
arrays (a few arrays for all images and annotations, never a Python object per annotation,
since DataLoader workers hold a copy): file names, image ids and sizes, every non-crowd
annotation's box and label, and its polygons as float64 coordinates (an RLE as JSON text),
decoded to a mask only when the image is loaded.

Cache: the arrays are stored as one ``.npz`` file in ``cache_dir`` (default:
``$NORMLAB_CACHE_DIR`` or ``~/.cache/normlab/index``) per (annotation file, its size and
modification time, ``masks``, ``train``), so a later run skips the JSON: measured on this
2-core machine with a synthetic file a tenth of ``instances_train2017.json`` (11.8k images,
86k annotations of 24-point polygons, 50 MB), 6.8 s to read and check, 0.24 s from the
cache (38 MB of arrays); the full file takes about ten times that. Every image file is
still checked to exist. A file modified less than two seconds before it was read is not
cached (the file system's clock is coarse).

Labels: the categories sorted by id are labels ``1 .. K`` (0 is the background of
torchvision's detectors); ``category_ids[k - 1]`` maps label ``k`` back for the evaluator.
Crowd annotations (``iscrowd: 1``) are left out of the targets (the evaluator reads them
from the annotation file), as in torchvision's detection references.

:func:`coco_sample_root` writes the built-in sample set
(:func:`~normlab.data.coco_sample.write_coco_sample`) once into a cache folder.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .coco_masks import (
    decode_segmentation,
    pack_segmentations,
    pycocotools_modules,
    unpack_segmentation,
)
from .coco_sample import COCO_SAMPLE_SPLITS, write_coco_sample
from .errors import CorruptDatasetError, MissingDatasetError
from .index_cache import cache_file, default_cache_dir, load_index, store_index
from .textures import resolve_texture_source

__all__ = [
    "COCO_HINT",
    "CocoSource",
    "coco_sample_root",
    "index_coco",
    "index_coco_sample",
]

COCO_HINT = (
    "Get COCO from https://cocodataset.org/#download: unpack annotations_trainval2017.zip "
    "(annotations/instances_train2017.json, annotations/instances_val2017.json) and "
    "train2017.zip, val2017.zip into the root folder"
)
"""Where the COCO files come from, the end of every missing-file message."""
_FIX = "Fix or remove the annotation"
_SKIP_FIX = (
    "Fix or remove the annotation, or pass on_bad_annotation='skip' "
    "(data.kwargs.on_bad_annotation=skip) to drop such annotations (COCO train2017 has two "
    "boxes of height 0)"
)
_SAMPLE_VERSION = 1
_FORMAT = 1
_RACY_NS = 2_000_000_000


class CocoSource:
    """The images and non-crowd annotations of one COCO instances split.

    Args:
        name: Data set name (``coco:<root>/<split>``).
        folder: The images' folder.
        annotation_file: The instances JSON file.
        categories: ``(category id, name)`` pairs sorted by id.
        arrays: ``file_name`` (N,) bytes, ``image_id`` (N,) int64, ``height``, ``width``
            (N,) int32, ``first`` (N + 1,) int64 (image ``i``'s annotations are rows
            ``first[i]:first[i + 1]``), ``boxes`` (A, 4) float32 xyxy, ``labels`` (A,)
            int64 and, for masks, the segmentations
            (:func:`~normlab.data.coco_masks.pack_segmentations`).

    Attributes:
        name: Data set name.
        classes: Category names; label ``k`` (1..K) is ``classes[k - 1]``, 0 the background.
        category_ids: COCO category id of label ``k``: ``category_ids[k - 1]``.
        annotation_file: The instances JSON (the evaluator's ground truth).
        folder: The images' folder.
    """

    def __init__(
        self,
        name: str,
        folder: Path,
        annotation_file: Path,
        categories: Sequence[tuple[int, str]],
        arrays: dict[str, np.ndarray],
    ) -> None:
        self.name = name
        self.folder = folder
        self.annotation_file = annotation_file
        self.category_ids = tuple(int(c) for c, _ in categories)
        self.classes = tuple(n for _, n in categories)
        self._arrays = arrays

    def __len__(self) -> int:
        return len(self._arrays["image_id"])

    def __repr__(self) -> str:
        return (
            f"CocoSource({self.name!r}, {len(self)} images, "
            f"{len(self._arrays['labels'])} annotations, {len(self.classes)} classes)"
        )

    def image_id(self, i: int) -> int:
        """COCO image id of image ``i``."""
        return int(self._arrays["image_id"][i])

    def size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i``, from the annotation file."""
        return int(self._arrays["height"][i]), int(self._arrays["width"][i])

    def aspect_ratios(self) -> np.ndarray:
        """float64 (N,) width / height of every image."""
        return self._arrays["width"] / self._arrays["height"]

    def path(self, i: int) -> Path:
        """The image file of image ``i``."""
        return self.folder / self._arrays["file_name"][i].decode()

    def describe(self, i: int) -> str:
        """``<file> (image id N)``, for messages."""
        return f"{self.path(i)} (image id {self.image_id(i)})"

    def read(self, i: int) -> bytes:
        """The encoded image file of image ``i``.

        Raises:
            MissingDatasetError: The file disappeared after indexing.
        """
        try:
            return self.path(i).read_bytes()
        except FileNotFoundError as error:
            raise MissingDatasetError(
                self.path(i), f"image id {self.image_id(i)} disappeared after it was indexed",
                "Restore the file",
            ) from error

    def target(self, i: int, *, masks: bool) -> dict[str, np.ndarray]:
        """Boxes, labels (and masks) of image ``i``'s non-crowd annotations.

        Returns:
            ``boxes`` (R, 4) float32 xyxy in original pixels, ``labels`` (R,) int64 in
            1..K and, with ``masks``, ``masks`` (R, H, W) uint8 in {0, 1}.
        """
        start, stop = int(self._arrays["first"][i]), int(self._arrays["first"][i + 1])
        target = {
            "boxes": self._arrays["boxes"][start:stop].copy(),
            "labels": self._arrays["labels"][start:stop].copy(),
        }
        if masks:
            if "polygons_of" not in self._arrays:
                raise ValueError(f"{self.name} was indexed without masks (index_coco masks=False)")
            height, width = self.size(i)
            stack = np.zeros((stop - start, height, width), dtype=np.uint8)
            for row, a in enumerate(range(start, stop)):
                segmentation = unpack_segmentation(self._arrays, a)
                stack[row] = decode_segmentation(segmentation, height, width)
            target["masks"] = stack
        return target


def _load_json(file: Path) -> dict[str, Any]:
    """The annotation file's content, read by pycocotools (its prints silenced)."""
    coco, _ = pycocotools_modules()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            dataset: dict[str, Any] = coco(str(file)).dataset
    except (ValueError, AssertionError, TypeError) as error:
        raise CorruptDatasetError(
            file, f"not a COCO annotation file ({type(error).__name__}: {error})",
            "Re-download it",
        ) from error
    missing = [key for key in ("images", "annotations", "categories") if key not in dataset]
    if missing:
        raise CorruptDatasetError(
            file, f"has no {', '.join(missing)} (not an instances file)",
            "Use annotations/instances_<split>.json",
        )
    return dataset


def _categories(file: Path, dataset: dict[str, Any]) -> list[tuple[int, str]]:
    categories = sorted((int(c["id"]), str(c["name"])) for c in dataset["categories"])
    ids = [c for c, _ in categories]
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise CorruptDatasetError(file, f"category id {repeated[0]} is listed twice", _FIX)
    if not categories:
        raise CorruptDatasetError(file, "lists no categories", "Use an instances file")
    return categories


def _check_segmentation(
    file: Path, what: str, segmentation: Any, height: int, width: int
) -> None:
    """Refuse a segmentation that is neither polygons (>= 3 points each) nor an RLE of the
    image's size."""
    if isinstance(segmentation, list):
        if segmentation and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
        ):
            return
        problem = "has a polygon with fewer than 3 points (or none)"
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [])) == [height, width]:
            return
        size = segmentation.get("size")
        problem = f"has an RLE of size {size}, not the image's {[height, width]}"
    else:
        problem = "has no segmentation (polygons or RLE), needed for masks"
    raise CorruptDatasetError(file, f"{what} {problem}", _SKIP_FIX)


def _box(file: Path, what: str, annotation: dict[str, Any], height: int, width: int) -> list[float]:
    """The annotation's box as xyxy clipped to the image; refuses a zero-area, negative or
    outside box."""
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise CorruptDatasetError(file, f"{what} has no bbox [x, y, width, height]", _SKIP_FIX)
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        raise CorruptDatasetError(
            file, f"{what} has a zero-area or negative box {bbox} (width and height must be > 0)",
            _SKIP_FIX,
        )
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if not (x2 > x1 and y2 > y1):
        raise CorruptDatasetError(
            file, f"{what} has a box {bbox} outside its {width}x{height} image", _SKIP_FIX
        )
    return [x1, y1, x2, y2]


_Annotations = dict[int, list[tuple[list[float], int, Any]]]


def _annotations(
    file: Path, dataset: dict[str, Any], images: dict[int, dict[str, Any]],
    labels: dict[int, int], masks: bool, skip: bool,
) -> tuple[_Annotations, list[str]]:
    """Every image id's non-crowd annotations as (box xyxy, label, segmentation), after
    checking every annotation, and the problems of those skipped (with ``skip``: a bad
    box or segmentation)."""
    per_image: _Annotations = {i: [] for i in images}
    skipped: list[str] = []
    for annotation in dataset["annotations"]:
        image_id = annotation.get("image_id")
        what = f"annotation {annotation.get('id')} (image id {image_id})"
        if image_id not in images:
            raise CorruptDatasetError(file, f"{what} refers to an image id not in 'images'", _FIX)
        category = annotation.get("category_id")
        if category not in labels:
            raise CorruptDatasetError(
                file, f"{what} has category id {category}, which is not in 'categories'", _FIX
            )
        image = images[image_id]
        height, width = int(image["height"]), int(image["width"])
        crowd = bool(annotation.get("iscrowd", 0))
        segmentation = annotation.get("segmentation")
        try:
            box = _box(file, what, annotation, height, width)
            if masks and not crowd:
                _check_segmentation(file, what, segmentation, height, width)
        except CorruptDatasetError as error:
            if not skip:
                raise
            skipped.append(error.problem)
            continue
        if not crowd:
            per_image[image_id].append((box, labels[category], segmentation))
    return per_image, skipped


def _build(
    file: Path, masks: bool, train: bool, skip: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The record (categories, skipped annotations) and index arrays of an annotation
    file (read and checked)."""
    dataset = _load_json(file)
    categories = _categories(file, dataset)
    labels = {c: k + 1 for k, (c, _) in enumerate(categories)}
    images = {int(image["id"]): image for image in dataset["images"]}
    per_image, skipped = _annotations(file, dataset, images, labels, masks, skip)
    kept = [i for i in sorted(images) if per_image[i] or not train]
    annotations = [a for i in kept for a in per_image[i]]
    arrays = {
        "file_name": np.array([images[i]["file_name"].encode() for i in kept], dtype=np.bytes_),
        "image_id": np.array(kept, dtype=np.int64),
        "height": np.array([images[i]["height"] for i in kept], dtype=np.int32),
        "width": np.array([images[i]["width"] for i in kept], dtype=np.int32),
        "first": np.cumsum([0] + [len(per_image[i]) for i in kept], dtype=np.int64),
        "boxes": np.array([box for box, _, _ in annotations], dtype=np.float32).reshape(-1, 4),
        "labels": np.array([label for _, label, _ in annotations], dtype=np.int64),
    }
    if masks:
        arrays |= pack_segmentations([segmentation for _, _, segmentation in annotations])
    record = {"categories": categories, "skipped": len(skipped), "first_skipped": skipped[:1]}
    return record, arrays


def _check_files(file: Path, folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Every indexed image file exists.

    Raises:
        MissingDatasetError: Naming the first missing file and its image id.
    """
    for name, image_id in zip(arrays["file_name"], arrays["image_id"]):
        path = folder / name.decode()
        if not path.is_file():
            raise MissingDatasetError(
                path, f"image file of image id {image_id} (listed in {file.name}) is missing",
                f"Restore it, or remove the image from the annotations. {COCO_HINT}",
            )


def index_coco(
    root: str | Path,
    split: str,
    *,
    masks: bool = True,
    train: bool = False,
    on_bad_annotation: Literal["stop", "skip"] = "stop",
    cache_dir: str | Path | None = None,
) -> CocoSource:
    """Index ``root/annotations/instances_<split>.json`` and the images of ``root/<split>``.

    Every annotation is checked (its image and category exist, its box has positive width
    and height and overlaps the image, its segmentation is valid when ``masks``), and every
    kept image file must exist; the first problem raises a one-line error naming the
    annotation or image. Boxes reaching past the image are clipped to it.

    With ``on_bad_annotation="skip"`` an annotation with a bad box (zero-area, negative,
    outside the image) or, for masks, a bad segmentation is dropped instead, with one
    warning that counts them and names the first (torchvision's references drop such
    boxes silently; COCO train2017 has two of height 0). Unknown image or category ids
    are always errors.

    Args:
        root: The folder holding ``annotations/`` and the image folders.
        split: Split name, e.g. ``train2017`` or ``val2017``.
        masks: Whether targets carry instance masks (segmentations are then checked).
        train: Drop images without a non-crowd annotation (torchvision's detection
            references do, for training); evaluation keeps every image.
        on_bad_annotation: ``"stop"`` or ``"skip"`` (see above).
        cache_dir: Folder of the index cache (module docstring).

    Returns:
        The images, sorted by image id.

    Raises:
        MissingDatasetError: The annotation file, the image folder or an image is missing.
        CorruptDatasetError: The annotation file is unreadable or has a bad annotation.
        ImportError: pycocotools is not installed.
    """
    root = Path(root)
    file = root / "annotations" / f"instances_{split}.json"
    folder = root / split
    if not file.is_file():
        raise MissingDatasetError(file, f"no COCO instances annotations for split {split!r}",
                                  COCO_HINT)
    if not folder.is_dir():
        raise MissingDatasetError(folder, f"no image folder for split {split!r}", COCO_HINT)
    if on_bad_annotation not in ("stop", "skip"):
        raise ValueError(
            f"on_bad_annotation must be 'stop' or 'skip', got {on_bad_annotation!r}"
        )
    stat = file.stat()
    key = {"format": _FORMAT, "file": str(file.resolve()), "size": stat.st_size,
           "mtime_ns": stat.st_mtime_ns, "masks": masks, "train": train,
           "on_bad_annotation": on_bad_annotation}
    cache = cache_file(cache_dir, "coco", key)
    stored = load_index(cache, key)
    if stored is None:
        record, arrays = _build(file, masks, train, on_bad_annotation == "skip")
        if time.time_ns() - stat.st_mtime_ns > _RACY_NS:
            store_index(cache, key, record, arrays)
    else:
        record, arrays = stored
    _check_files(file, folder, arrays)
    if record["skipped"]:
        warnings.warn(
            f"{file}: dropped {record['skipped']} bad annotation(s) (on_bad_annotation='skip'); "
            f"the first: {record['first_skipped'][0]}",
            stacklevel=2,
        )
    categories = [(int(c), str(n)) for c, n in record["categories"]]
    return CocoSource(f"coco:{root}/{split}", folder, file, categories, arrays)


def coco_sample_root(root: str | Path | None = None) -> Path:
    """The folder of the built-in COCO-format sample set, written on first use.

    The set (:func:`~normlab.data.coco_sample.write_coco_sample`, seed 0) is written once,
    atomically, into ``root`` or, by default, into ``coco_sample-v<version>-<textures>``
    under :func:`~normlab.data.index_cache.default_cache_dir` (``$NORMLAB_CACHE_DIR``);
    later calls (and concurrent processes) reuse it.

    Args:
        root: The folder to hold the set; written there when absent.

    Returns:
        The folder (``annotations/instances_train.json``, ``train/``, ...).
    """
    if root is None:
        textures = resolve_texture_source("auto")
        folder = default_cache_dir() / f"coco_sample-v{_SAMPLE_VERSION}-{textures}"
    else:
        folder = Path(root)
    done = folder / "annotations" / f"instances_{COCO_SAMPLE_SPLITS[-1]}.json"
    if not done.is_file():
        try:
            write_coco_sample(folder)
        except OSError:  # FileExistsError, or a rename onto a finished copy
            if not done.is_file():  # not a concurrent writer's finished copy
                raise
    return folder


def index_coco_sample(
    split: str,
    *,
    masks: bool = True,
    train: bool = False,
    on_bad_annotation: Literal["stop", "skip"] = "stop",
    cache_dir: str | Path | None = None,
) -> CocoSource:
    """:func:`index_coco` of the built-in sample set (:func:`coco_sample_root`)."""
    if split not in COCO_SAMPLE_SPLITS:
        raise ValueError(
            f"unknown coco_sample split {split!r}; valid: {', '.join(COCO_SAMPLE_SPLITS)}"
        )
    return index_coco(
        coco_sample_root(), split, masks=masks, train=train,
        on_bad_annotation=on_bad_annotation, cache_dir=cache_dir,
    )
