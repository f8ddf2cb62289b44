import os

import numpy as np
import pytest

from normlab.data import FolderIndex, create_source, index_image_folder, read_image_folder
from normlab.data.folder_index import CACHE_DIR_ENV, index_memory, write_empty_folder

from .formats import age_folders, write_jpeg_folder


@pytest.fixture
def listings(monkeypatch):
    """Counts the class-folder listings (os.scandir calls) of the indexer."""
    calls = []
    scandir = os.scandir

    def counting(path):
        calls.append(path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    return calls


def _index(root, split="all", **options):
    return index_image_folder(root, split, cache_dir=root.parent / "cache", **options)


def test_same_files_labels_and_order_as_the_in_memory_reader(tmp_path):
    root = tmp_path / "data"
    files = write_jpeg_folder(root, ["cat", "ant", "bee"], per_class=3)
    index = _index(root)
    data = read_image_folder(root, size=4)
    assert index.classes == tuple(data.classes) == ("ant", "bee", "cat")
    assert index.labels.tolist() == data.labels.tolist()
    expected = sorted(files, key=lambda p: (p.parent.name, p.name))
    assert [index.path(i) for i in range(len(index))] == expected
    assert index.read(4) == expected[4].read_bytes() and index.describe(4) == str(expected[4])
    assert index.label(8) == 2 and index.name == data.name == "imagefolder:data"


def test_arrays_are_compact(tmp_path):
    root = tmp_path / "data"
    write_jpeg_folder(root, ["a", "b"], per_class=5)
    index = _index(root)
    names = sum(len(f"img{i}.JPEG") for i in range(5)) * 2
    assert index.nbytes == names + 8 * 11 + 4 * 10  # name buffer + int64 offsets + int32 labels
    with pytest.raises(ValueError, match="read-only"):
        index.labels[0] = 1
    with pytest.raises(IndexError, match="image 10 out of range for 10 images"):
        index.path(10)


def test_split_domain_and_training_split_classes(tmp_path):
    root = tmp_path / "data"
    write_jpeg_folder(root / "Art" / "train", ["ant", "bee", "cat"], per_class=1)
    write_jpeg_folder(root / "Art" / "val", ["ant", "cat"], per_class=2)
    index = _index(root, "val", domain="Art")
    assert index.classes == ("ant", "bee", "cat") and index.labels.tolist() == [0, 0, 2, 2]
    assert index.name == "imagefolder:data/Art/val"
    fixed = _index(root, "val", domain="Art", classes=["cat", "ant"])
    assert fixed.labels.tolist() == [0, 0, 1, 1]


def test_cache_is_reused_without_listing_the_folder(tmp_path, listings):
    root = tmp_path / "data"
    write_jpeg_folder(root, ["a", "b"], per_class=2)
    listings.clear()
    first = _index(root)
    (cache,) = (tmp_path / "cache").iterdir()
    stamp = cache.stat()
    assert len(listings) == 2  # one listing per class folder
    second = _index(root)
    assert len(listings) == 2 and cache.stat().st_mtime_ns == stamp.st_mtime_ns
    assert isinstance(second, FolderIndex) and second.classes == first.classes
    assert [second.path(i) for i in range(4)] == [first.path(i) for i in range(4)]


@pytest.mark.parametrize("change", ["add file", "remove file", "add class", "rename file"])
def test_cache_is_invalidated_when_the_folder_changes(tmp_path, change):
    root = tmp_path / "data"
    files = write_jpeg_folder(root, ["a", "b"], per_class=2)
    assert len(_index(root)) == 4
    if change == "add file":
        (root / "b" / "new.JPEG").write_bytes(files[0].read_bytes())
    elif change == "remove file":
        files[0].unlink()
    elif change == "add class":
        write_jpeg_folder(root, ["c"], per_class=1)
    else:
        files[0].rename(root / "a" / "zz.JPEG")
    age_folders(root, seconds=30)  # changed, and old enough to be trusted again
    index = _index(root)
    expected = {"add file": 5, "remove file": 3, "add class": 5, "rename file": 4}[change]
    assert len(index) == expected
    assert index.classes == (("a", "b", "c") if change == "add class" else ("a", "b"))
    assert all(index.path(i).is_file() for i in range(len(index)))


def test_freshly_changed_folders_are_listed_again(tmp_path, listings):
    root = tmp_path / "data"
    write_jpeg_folder(root, ["a"], per_class=1)
    os.utime(root / "a")  # modified now: the same clock tick could hide a later change
    listings.clear()
    _index(root)
    _index(root)
    assert len(listings) == 2


def test_cache_keys_and_a_broken_cache_file(tmp_path, listings):
    root = tmp_path / "data"
    write_jpeg_folder(root / "train", ["a", "b"], per_class=1)
    write_jpeg_folder(root / "val", ["a", "b"], per_class=1)
    listings.clear()
    _index(root, "train")
    _index(root, "val")
    _index(root, "train", on_bad_file="skip")
    assert len(listings) == 6
    caches = sorted((tmp_path / "cache").iterdir())
    assert len(caches) == 3 and not list((tmp_path / "cache").glob("*.tmp"))
    for cache, broken in zip(caches, [b"not a zip file", b"", caches[0].read_bytes()[:500]]):
        cache.write_bytes(broken)
    listings.clear()
    for split, on_bad_file in [("train", "stop"), ("val", "stop"), ("train", "skip")]:
        assert len(_index(root, split, on_bad_file=on_bad_file)) == 2
    assert len(listings) == 6


def test_default_cache_dir_from_the_environment(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_jpeg_folder(root, ["a"], per_class=1)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env-cache"))
    index_image_folder(root)
    assert len(list((tmp_path / "env-cache").glob("folder-*.npz"))) == 1


def test_create_source_builds_the_index(tmp_path):
    root = tmp_path / "data"
    write_jpeg_folder(root / "train", ["a", "b"], per_class=1)
    source = create_source("imagefolder", root, "train", cache_dir=tmp_path / "cache")
    assert isinstance(source, FolderIndex) and len(source) == 2
    with pytest.raises(ValueError, match=r"unknown imagefolder source option\(s\) \['size'\]"):
        create_source("imagefolder", root, "train", size=32)
    with pytest.raises(ValueError, match="'cifar10' is read into memory only; streamable: "):
        create_source("cifar10", root)
    with pytest.raises(ValueError, match="pass root="):
        create_source("imagefolder")


def test_index_memory_of_empty_files(tmp_path):
    root = write_empty_folder(tmp_path / "empty", classes=3, per_class=4)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["c0000", "c0001", "c0002"]
    report = index_memory(root)
    name = len("n0000_0000000.JPEG")
    assert report["images"] == 12 and report["index_bytes"] == 12 * (name + 8 + 4) + 8
    assert report["peak_increase"] >= report["rss_increase"]
    assert np.all(_index(root, "train").labels == np.repeat([0, 1, 2], 4))
