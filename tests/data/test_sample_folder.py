import pytest

from normlab.data import decode_image, index_image_folder, write_sample_folder
from normlab.data import sample_folder as sample_module

from .formats import age_folders


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_imagenet_layout_of_decodable_jpegs(tmp_path):
    out = write_sample_folder(tmp_path / "sample", per_class=2, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no temporary left
    files = _files(out)
    assert len(files) == 40 and str(files[0]) == "train/n00000000/n00000000_0.JPEG"
    assert str(files[20]) == "val/n00000000/ILSVRC2012_val_00000001.JPEG"
    image = decode_image((out / files[0]).read_bytes(), name=str(files[0]))
    assert image.shape == (3, 16, 21)
    age_folders(out)
    train = index_image_folder(out, "train", cache_dir=tmp_path / "cache")
    val = index_image_folder(out, "val", cache_dir=tmp_path / "cache")
    assert train.classes == val.classes == tuple(f"n{k:08d}" for k in range(10))
    assert train.labels.tolist() == val.labels.tolist() == [k // 2 for k in range(20)]


def test_deterministic_per_seed(tmp_path):
    first = write_sample_folder(tmp_path / "a", per_class=1, size=16, splits=("val",))
    again = write_sample_folder(tmp_path / "b", per_class=1, size=16, splits=("val",))
    other = write_sample_folder(tmp_path / "c", per_class=1, size=16, splits=("val",), seed=1)
    assert _files(first) == _files(again) == _files(other)
    read = [[(root / f).read_bytes() for f in _files(first)] for root in (first, again, other)]
    assert read[0] == read[1] and read[0] != read[2]


def test_existing_folder_is_kept_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full: exists and is not an empty folder"):
        write_sample_folder(tmp_path / "full", per_class=1, size=16)
    assert [str(f) for f in _files(tmp_path / "full")] == ["keep.txt"]
    calls = []

    def fail_second(folder, split, *args):
        calls.append(split)
        if len(calls) == 2:
            raise OSError("disk full")
        folder.mkdir()

    monkeypatch.setattr(sample_module, "_write_split", fail_second)
    with pytest.raises(OSError, match="disk full"):
        write_sample_folder(tmp_path / "new", per_class=1, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with pytest.raises(ValueError, match="splits must be some of"):
        write_sample_folder(tmp_path / "x", splits=("test",))
