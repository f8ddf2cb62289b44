"""WebDataset tar shards: :func:`pack_folder` writes them, :func:`index_shards` reads them.

Layout (the standard WebDataset one, readable by ``webdataset``, ``tar`` and
:mod:`tarfile`)::

    OUT/<split>-000000.tar   consecutive members per sample: <key>.<ext>, <key>.cls
    OUT/<split>-000001.tar   ...
    OUT/<split>.json         {"format": "webdataset", "classes": [...], "samples": n,
                              "shards": ["<split>-000000.tar", ...]}

``<key>.<ext>`` holds the original image file's bytes unchanged (``<ext>`` its extension,
lower-cased: ``jpg``, ``jpeg``, ``png`` ...), ``<key>.cls`` the label as ASCII digits.
Keys are the sample's position in the packed source, zero-padded to one width (at least
8 digits: ``00000042``), so they sort in the source's order.
:func:`pack_folder` writes the samples in a seeded random order, so a reader that streams
shards one after another (WebDataset's own loader) sees mixed classes; :func:`index_shards`
orders samples by key, so the index lists the source's samples in the source's order
whatever their spread over shards, and a streamed epoch over the shards is the epoch over
the folder they came from.

The index (shard, byte offset, size and label of every sample; member offsets read once
from the tar headers) is cached like the image-folder index and invalidated when a shard
changes. ``read(i)`` seeks to the member's data and reads its bytes, so no archive is ever
unpacked.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decode import decode_image
from .errors import CorruptDatasetError, MissingDatasetError
from .image_data import ImageData
from .image_folder import IMAGE_EXTENSIONS, normalization_stats
from .index_cache import cache_file, load_index, store_index
from .presets import transform_preset
from .seeding import seeded_generator
from .streaming import SampleSource

__all__ = ["LABEL_EXTENSION", "ShardIndex", "index_shards", "pack_folder", "read_shards"]

LABEL_EXTENSION = "cls"
"""Extension of the member holding a sample's class index (WebDataset's convention)."""
_IMAGE_EXTENSIONS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_KEY_DIGITS = 8
_FORMAT = "webdataset"


def _meta_path(root: Path, split: str) -> Path:
    return root / f"{split}.json"


def _shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def _extension(source: SampleSource, i: int) -> str:
    extension = Path(source.describe(i)).suffix.lower().lstrip(".")
    if extension == "jpeg" or extension not in _IMAGE_EXTENSIONS:
        return "jpg"
    return extension


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def pack_folder(
    source: SampleSource,
    out: str | Path,
    *,
    split: str = "train",
    samples_per_shard: int = 1000,
    seed: int = 0,
) -> list[Path]:
    """Write ``source`` (e.g. an :func:`index_image_folder` index) as WebDataset shards.

    Each shard is written under a temporary name and renamed when complete; the
    ``<split>.json`` listing written last marks the set complete.

    Args:
        source: The samples; each file's bytes are stored unchanged.
        out: Output folder (created). It must not hold shards of ``split`` already.
        split: Split name, the shards' prefix (``train-000000.tar``).
        samples_per_shard: Samples per tar file (WebDataset suggests shards of 100 MB or
            more: about 1,000 ImageNet JPEGs).
        seed: Seed of the order the samples are written in.

    Returns:
        The shard paths, in order.

    Raises:
        ValueError: ``samples_per_shard`` below 1, or an empty source.
        FileExistsError: ``out`` already holds ``<split>.json`` or ``<split>-*.tar``.
        CorruptDatasetError, MissingDatasetError: From ``source.read``.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if len(source) == 0:
        raise ValueError(f"{source.name} has no samples to pack")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    meta_path = _meta_path(root, split)
    existing = [meta_path] if meta_path.exists() else sorted(root.glob(f"{split}-*.tar"))
    if existing:
        raise FileExistsError(
            f"{existing[0]}: {root} already holds {split} shards; remove them or pick another "
            "output folder"
        )
    order = torch.randperm(len(source), generator=seeded_generator(seed)).tolist()
    digits = max(_KEY_DIGITS, len(str(len(source) - 1)))
    paths = []
    for number, start in enumerate(range(0, len(order), samples_per_shard)):
        path = root / _shard_name(split, number)
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in order[start : start + samples_per_shard]:
                key = f"{i:0{digits}d}"
                _add_member(tar, f"{key}.{_extension(source, i)}", source.read(i))
                _add_member(tar, f"{key}.{LABEL_EXTENSION}", str(source.label(i)).encode())
        os.replace(partial, path)
        paths.append(path)
    meta = {
        "format": _FORMAT,
        "classes": list(source.classes),
        "samples": len(source),
        "shards": [p.name for p in paths],
    }
    partial_meta = meta_path.with_name(meta_path.name + ".partial")
    partial_meta.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(partial_meta, meta_path)
    return paths


@dataclass(frozen=True)
class _Sample:
    """One sample found in a shard: its key, image member, data offset and size, label."""

    key: str
    member: str
    offset: int
    size: int
    label: int


def _shard_error(path: Path, member: str | None, problem: str) -> CorruptDatasetError:
    """The one-line error about ``member`` of shard ``path`` (the shard itself for None)."""
    where = f"member {member!r}: " if member is not None else ""
    return CorruptDatasetError(
        path, where + problem, "Re-pack the shard with `normlab data pack`"
    )


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's (key, extension) of a member name: split at the first dot of the file
    name (the folder part belongs to the key)."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _read_label(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> int:
    handle = tar.extractfile(member)
    text = handle.read().decode("ascii", "replace").strip() if handle is not None else ""
    if not text.isdigit():
        raise _shard_error(path, member.name, f"label {text[:20]!r} is not a class index")
    return int(text)


class _Group:
    """The consecutive members of one key while a shard is scanned."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.images: list[tarfile.TarInfo] = []
        self.label: int | None = None

    def sample(self, path: Path) -> _Sample:
        """The group's sample: exactly one image and one label member."""
        if len(self.images) != 1:
            found = ", ".join(m.name for m in self.images) or "no image member"
            raise _shard_error(path, self.key, f"needs one image member, found {found}")
        image = self.images[0]
        if self.label is None:
            raise _shard_error(
                path, image.name, f"has no {self.key}.{LABEL_EXTENSION} label member"
            )
        return _Sample(self.key, image.name, image.offset_data, image.size, self.label)


def _check_end(tar: tarfile.TarFile, path: Path, file_size: int, last: str | None) -> None:
    """Refuse a tar cut inside a header: tarfile stops there silently, where a complete
    archive has its end-of-archive zero block."""
    assert tar.fileobj is not None
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(end) < tarfile.BLOCKSIZE or any(end):
        raise _shard_error(
            path, last, f"truncated: the file ends {file_size - tar.offset} bytes after it"
        )


def _scan_shard(path: Path) -> Iterator[_Sample]:
    """The samples of one shard in member order, read from its tar headers.

    Raises:
        CorruptDatasetError: A truncated or unreadable tar, a sample without exactly one
            image and one ``.cls`` member, a label that is not a number.
    """
    file_size = path.stat().st_size
    last: str | None = None
    group: _Group | None = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                last = member.name
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_size:
                    raise _shard_error(path, member.name, "truncated: the file ends inside it")
                key, extension = _split_name(member.name)
                if group is not None and key != group.key:
                    yield group.sample(path)
                    group = None
                group = group or _Group(key)
                if extension in _IMAGE_EXTENSIONS:
                    group.images.append(member)
                elif extension == LABEL_EXTENSION:
                    group.label = _read_label(tar, member, path)
            _check_end(tar, path, file_size, last)
    except tarfile.TarError as error:
        problem = f"not a tar file ({error})" if last is None else f"unreadable after it ({error})"
        raise _shard_error(path, last, problem) from error
    if group is not None:
        yield group.sample(path)


class ShardIndex:
    """The samples of a split's WebDataset shards (a :class:`SampleSource`).

    Per sample, compact arrays hold the shard number, the byte offset and size of the
    image member's data, the label and the member's name; samples are ordered by key.

    Attributes:
        name: ``webdataset:<folder>/<split>``.
        classes: Class names (from ``<split>.json``; ``"0"``, ``"1"`` ... without it).
        root: The shards' folder.
        shards: Shard file names, by shard number.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        shards: tuple[str, ...],
        classes: tuple[str, ...],
        arrays: dict[str, np.ndarray],
    ) -> None:
        self.root = root
        self.name = f"{_FORMAT}:{root.name}/{split}"
        self.shards = shards
        self.classes = classes
        self._shard = arrays["shard"]
        self._offset = arrays["offset"]
        self._size = arrays["size"]
        self._label = arrays["label"]
        self._member = arrays["member"]

    def __len__(self) -> int:
        return len(self._label)

    def __repr__(self) -> str:
        return (
            f"ShardIndex({self.name!r}, {len(self)} samples in {len(self.shards)} shards, "
            f"{len(self.classes)} classes)"
        )

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) labels of all samples (read-only)."""
        view = self._label.view()
        view.flags.writeable = False
        return view

    def label(self, i: int) -> int:
        """The class index of sample ``i``."""
        return int(self._label[i])

    def describe(self, i: int) -> str:
        """``<shard path>:<member name>`` of sample ``i``'s image."""
        return f"{self.root / self.shards[self._shard[i]]}:{self._member[i].decode()}"

    def read(self, i: int) -> bytes:
        """The image file's bytes of sample ``i`` (one seek and one read).

        Raises:
            MissingDatasetError: The shard is gone.
            CorruptDatasetError: The shard ends before the member's data do.
        """
        path = self.root / self.shards[self._shard[i]]
        size = int(self._size[i])
        try:
            with open(path, "rb") as f:
                f.seek(int(self._offset[i]))
                data = f.read(size)
        except FileNotFoundError as error:
            raise MissingDatasetError(
                path, "shard disappeared after it was indexed", "Restore it or re-pack"
            ) from error
        if len(data) != size:
            raise _shard_error(path, self._member[i].decode(), "truncated since it was indexed")
        return data


def _shard_files(
    root: Path, split: str
) -> tuple[tuple[str, ...], tuple[str, ...] | None, int | None]:
    """The shard names, the classes and sample count of ``<split>.json`` (None without)."""
    meta_path = _meta_path(root, split)
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            shards, classes = tuple(meta["shards"]), tuple(meta["classes"])
            count = int(meta["samples"])
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptDatasetError(
                meta_path, f"not a shard listing ({type(error).__name__}: {error})",
                "Re-pack, or delete it to index every <split>-*.tar",
            ) from error
        return shards, classes, count
    shards = tuple(p.name for p in sorted(root.glob(f"{split}-*.tar")))
    if not shards:
        raise MissingDatasetError(
            root, f"no {split} shards ({split}-*.tar or {split}.json)",
            f"Write them with `normlab data pack FOLDER {root} --split {split}`",
        )
    return shards, None, None


def _scan(root: Path, shards: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Index arrays of every sample of the shards, ordered by key."""
    names = ("shard", "offset", "size", "label", "key", "member")
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for number, name in enumerate(shards):
        samples = list(_scan_shard(root / name))
        columns["shard"].append(np.full(len(samples), number, dtype=np.int32))
        columns["offset"].append(np.array([s.offset for s in samples], dtype=np.int64))
        columns["size"].append(np.array([s.size for s in samples], dtype=np.int64))
        columns["label"].append(np.array([s.label for s in samples], dtype=np.int64))
        columns["key"].append(np.array([s.key.encode() for s in samples], dtype=np.bytes_))
        columns["member"].append(np.array([s.member.encode() for s in samples], dtype=np.bytes_))
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    order = np.argsort(arrays["key"], kind="stable")
    arrays = {k: v[order] for k, v in arrays.items()}
    repeated = np.flatnonzero(arrays["key"][1:] == arrays["key"][:-1])
    if len(repeated):
        first, second = int(repeated[0]), int(repeated[0]) + 1
        path = root / shards[arrays["shard"][second]]
        raise _shard_error(
            path, arrays["member"][second].decode(),
            f"key repeats {root / shards[arrays['shard'][first]]}:"
            f"{arrays['member'][first].decode()}",
        )
    del arrays["key"]
    return arrays


def _signature(root: Path, shards: tuple[str, ...]) -> list[list[Any]]:
    """Name, size and modification time of every shard: what invalidates the cached index."""
    stats = [os.stat(root / name) for name in shards]
    return [[name, st.st_size, st.st_mtime_ns] for name, st in zip(shards, stats)]


def index_shards(
    root: str | Path, split: str = "train", *, cache_dir: str | Path | None = None
) -> ShardIndex:
    """Index the WebDataset shards of ``split`` in ``root`` (see the module docstring).

    The shards are ``<split>.json``'s list when it exists, else every ``<split>-*.tar``
    in name order. Their headers are read once; the index is cached under ``cache_dir``
    and re-read while no shard changes (size, modification time).

    Args:
        root: Folder of the shards.
        split: Split name (the shards' prefix).
        cache_dir: Index cache folder (default as for :func:`index_image_folder`).

    Raises:
        MissingDatasetError: No shards of ``split``, or a listed shard is missing.
        CorruptDatasetError: A truncated or unreadable shard, a sample without exactly
            one image and one ``.cls`` member, a repeated key, a label outside the
            classes, a sample count differing from ``<split>.json``.
    """
    root = Path(root).absolute()
    shards, classes, count = _shard_files(root, split)
    missing = [name for name in shards if not (root / name).is_file()]
    if missing:
        raise MissingDatasetError(
            root / missing[0], "shard listed but missing", "Restore it or re-pack the split"
        )
    key = {"root": str(root), "split": split, "signature": _signature(root, shards)}
    file = cache_file(cache_dir, "shards", key)
    loaded = load_index(file, key)
    if loaded is None:
        arrays = _scan(root, shards)
        store_index(file, key, {}, arrays)
    else:
        arrays = loaded[1]
    labels = arrays["label"]
    if classes is None:
        classes = tuple(str(c) for c in range(int(labels.max(initial=-1)) + 1))
    if len(labels) and (labels.max() >= len(classes)):
        i = int(np.argmax(labels))
        raise _shard_error(
            root / shards[arrays["shard"][i]], arrays["member"][i].decode(),
            f"label {int(labels[i])} is outside the {len(classes)} classes",
        )
    if count is not None and count != len(labels):
        raise CorruptDatasetError(
            _meta_path(root, split), f"lists {count} samples but its shards hold {len(labels)}",
            "Re-pack the split",
        )
    return ShardIndex(root, split, shards=shards, classes=classes, arrays=arrays)


def read_shards(
    root: str | Path,
    split: str = "train",
    *,
    size: int = 32,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cache_dir: str | Path | None = None,
) -> ImageData:
    """Read a split's shards into memory (small data sets; stream large ones).

    Every image is decoded and fitted to ``size`` x ``size`` by the ``eval_center`` preset
    (shorter side resized to ``size`` with antialiasing, centre crop).

    Args:
        root: Folder of the shards.
        split: Split name.
        size: Output height and width.
        channels: 3 (RGB) or 1 (grey).
        mean: Normalization mean per channel; default ImageNet's (its average for grey).
        std: Normalization std per channel; default as for ``mean``.
        cache_dir: Index cache folder.

    Raises:
        MissingDatasetError, CorruptDatasetError: As :func:`index_shards`, and for an image
            that cannot be decoded.
    """
    index = index_shards(root, split, cache_dir=cache_dir)
    fit = transform_preset("eval_center", size=size)
    images = torch.empty((len(index), channels, size, size), dtype=torch.uint8)
    for i in range(len(index)):
        image = decode_image(
            index.read(i), channels=channels, min_size=fit.min_size, name=index.describe(i)
        )
        images[i] = fit(image)
    mean, std = normalization_stats(channels, mean, std)
    return ImageData(
        images=images,
        labels=torch.from_numpy(index.labels.astype(np.int64)),
        num_classes=len(index.classes),
        classes=list(index.classes),
        mean=mean,
        std=std,
        name=index.name,
    )
