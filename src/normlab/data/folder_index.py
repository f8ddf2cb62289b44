"""An index of an image folder (file names and labels in compact arrays), cached on disk.

:func:`index_image_folder` lists a class-per-folder image tree once — the layouts, class
rules and errors of :func:`~normlab.data.image_folder.read_image_folder` — and keeps what
the streaming loader needs: one uint8 buffer of all file names, their int64 offsets and
int32 labels. For ImageNet's 1.28 M training images that is about 45 MB, against ~300 B
per image for a Python list of paths. The result is cached as one ``.npz`` file and reused
while the folder is unchanged.

Cache: ``cache_dir`` (default: ``$NORMLAB_CACHE_DIR`` or ``~/.cache/normlab/index``) holds
one file per (absolute folder, split, domain, classes, on_bad_file). It is valid while every
listed folder (the split folder, the training split whose classes it uses, each class
folder) keeps the modification time recorded when it was listed; adding, removing or
renaming a file or a class changes one of them. A folder modified less than two seconds
before it was listed is recorded as unknown (the file system's clock is coarse, so a change
in the same tick would go unseen), and the next call lists the folder again.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import CorruptDatasetError
from .image_folder import IMAGE_EXTENSIONS, ClassLayout, class_layout, no_images_error
from .index_cache import CACHE_DIR_ENV, cache_file, default_cache_dir, load_index, store_index

__all__ = [
    "CACHE_DIR_ENV",
    "FolderIndex",
    "default_cache_dir",
    "index_image_folder",
    "index_memory",
    "write_empty_folder",
]

OnBadFile = Literal["stop", "skip"]

_FORMAT = 1
_RACY_NS = 2_000_000_000
SKIP_HINT = "or pass on_bad_file='skip' (data.on_bad_file=skip) to skip and count bad files"
"""The end of every bad-file message: how to skip bad files instead of stopping."""


class FolderIndex:
    """The images of one split of an image folder: a :class:`~normlab.data.SampleSource`.

    Args:
        name: Data set name (``imagefolder:<root>/<domain>/<split>``).
        folder: The folder holding one sub-folder per class.
        classes: Class names; label ``k`` is ``classes[k]``.
        names: uint8 buffer of every file name (relative to its class folder), in order.
        offsets: int64 (N + 1,): image ``i``'s name is ``names[offsets[i]:offsets[i + 1]]``.
        labels: int32 (N,) class index of each image.
        bad_entries: Non-image files and empty class folders skipped while indexing.
    """

    def __init__(
        self,
        name: str,
        folder: Path,
        classes: Sequence[str],
        names: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray,
        bad_entries: int = 0,
    ) -> None:
        if offsets.shape != (labels.size + 1,):
            raise ValueError(f"need {labels.size + 1} offsets, got {offsets.shape}")
        self.name = name
        self.folder = folder
        self.classes = tuple(classes)
        self.bad_entries = bad_entries
        self._names = names
        self._offsets = offsets
        self._labels = labels
        self._class_folders = [os.fsencode(folder / c) + b"/" for c in self.classes]

    def __len__(self) -> int:
        return int(self._labels.size)

    @property
    def labels(self) -> np.ndarray:
        """int32 (N,) labels of all images (read-only)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        return int(self._names.nbytes + self._offsets.nbytes + self._labels.nbytes)

    def label(self, i: int) -> int:
        """Class index of image ``i``."""
        return int(self._labels[self._check(i)])

    def path(self, i: int) -> Path:
        """File of image ``i``."""
        i = self._check(i)
        name = self._names[self._offsets[i] : self._offsets[i + 1]].tobytes()
        return Path(os.fsdecode(self._class_folders[self._labels[i]] + name))

    def describe(self, i: int) -> str:
        """Image ``i``'s file path, for messages."""
        return str(self.path(i))

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i``.

        Raises:
            CorruptDatasetError: If the file cannot be read (e.g. removed since indexing).
        """
        path = self.path(i)
        try:
            return path.read_bytes()
        except OSError as error:
            raise CorruptDatasetError(
                path,
                f"cannot read the file ({error.strerror or error})",
                "Restore it; the folder changed after it was indexed and is indexed again on "
                "the next run",
            ) from error

    def _check(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} out of range for {len(self)} images of {self.name}")
        return i

    def __repr__(self) -> str:
        return f"FolderIndex({self.name!r}, {len(self)} images, {len(self.classes)} classes)"


def _bad(on_bad_file: str, path: Path, problem: str, fix: str) -> int:
    """1 (one skipped entry) with ``skip``; raises the one-line error with ``stop``."""
    if on_bad_file == "stop":
        raise CorruptDatasetError(path, problem, f"{fix}, {SKIP_HINT}")
    return 1


def _list_class(folder: Path, on_bad_file: str) -> tuple[list[str], int]:
    """Sorted image file names in a class folder and the number of bad entries skipped.

    Hidden files (``.DS_Store``) and sub-folders are ignored.
    """
    images, bad = [], 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(entry.name)
            else:
                bad += _bad(
                    on_bad_file,
                    folder / entry.name,
                    f"not an image file (known endings: {', '.join(IMAGE_EXTENSIONS)})",
                    "Remove it from the class folder",
                )
    if not images:
        bad += _bad(
            on_bad_file,
            folder,
            f"class folder {folder.name!r} holds no images",
            "Add its images or remove the folder",
        )
    return sorted(images), bad


def _scan(layout: ClassLayout, on_bad_file: str) -> FolderIndex:
    buffers, lengths, counts, bad = [], [], [], 0
    found = set(layout.found)
    for name in layout.classes:
        images: list[str] = []
        if name in found:
            images, skipped = _list_class(layout.folder / name, on_bad_file)
            bad += skipped
        encoded = [os.fsencode(image) for image in images]
        buffers.append(np.frombuffer(b"".join(encoded), dtype=np.uint8))
        lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        counts.append(len(encoded))
    if not sum(counts):
        raise no_images_error(layout.folder)
    offsets = np.zeros(sum(counts) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    labels = np.repeat(np.arange(len(layout.classes), dtype=np.int32), counts)
    names = np.concatenate(buffers)
    return FolderIndex(layout.name, layout.folder, layout.classes, names, offsets, labels, bad)


def _mtimes(folders: Sequence[Path], since_ns: int) -> np.ndarray:
    """Modification times (ns) of ``folders``; -1 for one modified after ``since_ns``."""
    times = np.array([os.stat(f).st_mtime_ns for f in folders], dtype=np.int64)
    times[times >= since_ns] = -1
    return times


def _load_cached(file: Path, key: dict[str, object]) -> FolderIndex | None:
    """The cached index when ``file`` holds one for ``key`` whose folders are unchanged."""
    loaded = load_index(file, key)
    if loaded is None:
        return None
    record, arrays = loaded
    try:
        current = np.array(
            [os.stat(f).st_mtime_ns for f in record["folders"]], dtype=np.int64
        )
    except OSError:
        return None
    if not np.array_equal(arrays["mtimes"], current):
        return None
    return FolderIndex(
        record["name"], Path(record["folder"]), record["classes"], arrays["names"],
        arrays["offsets"], arrays["labels"], int(record["bad_entries"]),
    )


def _store(file: Path, key: dict[str, object], index: FolderIndex, folders: list[Path],
           mtimes: np.ndarray) -> None:
    record = {
        "name": index.name,
        "folder": str(index.folder),
        "classes": list(index.classes),
        "bad_entries": index.bad_entries,
        "folders": [str(f) for f in folders],
    }
    arrays = {"mtimes": mtimes, "names": index._names, "offsets": index._offsets,
              "labels": index._labels}
    store_index(file, key, record, arrays)


def index_image_folder(
    root: str | Path,
    split: str = "all",
    *,
    domain: str | None = None,
    classes: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    on_bad_file: OnBadFile = "stop",
) -> FolderIndex:
    """Index a folder of images with one sub-folder per class, or load its cached index.

    Layouts, class rules and the ``split``, ``domain`` and ``classes`` arguments are those
    of :func:`~normlab.data.image_folder.read_image_folder`. Files are in the same order
    (classes in label order, files sorted by name within a class).

    Args:
        root: The data set's folder.
        split: Sub-folder of the split (``"train"``, ``"val"``), or ``"all"``.
        domain: Sub-folder of the domain for multi-domain sets.
        classes: The class list fixing the label order.
        cache_dir: Folder of the cache file; default :func:`default_cache_dir`.
        on_bad_file: ``"stop"``: a non-image file in a class folder, or a class folder
            without images, raises an error naming it; ``"skip"``: they are left out and
            counted in :attr:`FolderIndex.bad_entries`. Hidden files and sub-folders of
            class folders are ignored either way.

    Returns:
        The index, a :class:`~normlab.data.SampleSource`.

    Raises:
        MissingDatasetError: If a folder is missing or holds no images.
        CorruptDatasetError: If a class sub-folder is not one of the classes, or (with
            ``on_bad_file="stop"``) for a non-image file or an empty class folder; the
            one-line message names it.
    """
    if on_bad_file not in ("stop", "skip"):
        raise ValueError(f"on_bad_file must be 'stop' or 'skip', got {on_bad_file!r}")
    root = Path(root)
    key: dict[str, object] = {
        "format": _FORMAT,
        "root": os.path.abspath(root),
        "split": split,
        "domain": domain,
        "classes": None if classes is None else list(classes),
        "on_bad_file": on_bad_file,
    }
    file = cache_file(cache_dir, "folder", key)
    cached = _load_cached(file, key)
    if cached is not None:
        return cached
    started = time.time_ns() - _RACY_NS
    layout = class_layout(root, split, domain, classes)
    index = _scan(layout, on_bad_file)
    folders = [*layout.listed, *(layout.folder / name for name in layout.found)]
    folders = [Path(os.path.abspath(f)) for f in folders]
    _store(file, key, index, folders, _mtimes(folders, started))
    return index


def write_empty_folder(root: str | Path, classes: int = 100, per_class: int = 2000) -> Path:
    """Create ``root/train/c<k>/<j>.JPEG``: ``classes`` × ``per_class`` empty files, for
    measuring the index's memory (:func:`index_memory`) without image data on disk."""
    split = Path(root) / "train"
    for k in range(classes):
        folder = split / f"c{k:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            os.close(os.open(folder / f"n{k:04d}_{j:07d}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    return Path(root)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def index_memory(root: str | Path, split: str = "train") -> dict[str, int]:
    """Memory of indexing ``root`` (uncached) in this process, in bytes.

    A one-image folder is indexed first (so one-time imports and caches do not count),
    and the process's peak resident size is reset (``/proc/self/clear_refs``, Linux), so
    ``peak_increase`` is what listing and building the index took at most;
    ``rss_increase`` is what stays while the index is alive.

    Returns:
        ``images``, ``index_bytes`` (the arrays), ``rss_increase``, ``peak_increase``.
    """
    with tempfile.TemporaryDirectory() as cache:
        index_image_folder(write_empty_folder(Path(cache) / "warm", 1, 1), split, cache_dir=cache)
        before = _rss_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            peak_field = "VmHWM"
        except OSError:
            peak_field = ""
        index = index_image_folder(root, split, cache_dir=cache)
        after = _rss_kib("VmRSS")
        peak = _rss_kib(peak_field) if peak_field else resource.getrusage(
            resource.RUSAGE_SELF
        ).ru_maxrss
        return {
            "images": len(index),
            "index_bytes": index.nbytes,
            "rss_increase": (after - before) * 1024,
            "peak_increase": (peak - before) * 1024,
        }
