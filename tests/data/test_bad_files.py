"""Every bad input of the streaming pipeline ends in one line naming the file (stop), or is
skipped and counted (skip); none crashes a worker process with a traceback."""

import pytest
import torch
from PIL import Image

from normlab.data import CorruptDatasetError, StreamingLoader, decode_image, index_image_folder
from normlab.data.folder_index import SKIP_HINT

from .formats import age_folders, write_jpeg_folder

ENDINGS = ".jpg, .jpeg, .png, .bmp, .ppm, .pgm, .tif, .tiff, .webp"


def _index(root, split="all", **options):
    return index_image_folder(root, split, cache_dir=root.parent / "cache", **options)


def _loader(source, workers, on_bad_file="stop"):
    return StreamingLoader(
        source, 4, train=False, transform=None, mean=(0.5,) * 3, std=(0.5,) * 3,
        workers=workers, on_bad_file=on_bad_file,
    )


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_non_image_file_in_a_class_folder(tmp_path):
    root = tmp_path / "data"
    write_jpeg_folder(root, ["a", "b"], per_class=2)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    with pytest.raises(CorruptDatasetError) as error:
        _index(root)
    assert _one_line(error) == (
        f"{root / 'a' / 'notes.txt'}: not an image file (known endings: {ENDINGS}). "
        f"Remove it from the class folder, {SKIP_HINT}"
    )
    skipped = _index(root, on_bad_file="skip")
    assert len(skipped) == 4 and skipped.bad_entries == 1


def test_empty_class_folder(tmp_path):
    root = tmp_path / "data"
    write_jpeg_folder(root, ["a", "c"], per_class=2)
    (root / "b").mkdir()
    age_folders(root)
    with pytest.raises(CorruptDatasetError) as error:
        _index(root)
    assert _one_line(error) == (
        f"{root / 'b'}: class folder 'b' holds no images. Add its images or remove the folder, "
        f"{SKIP_HINT}"
    )
    skipped = _index(root, on_bad_file="skip")
    assert skipped.classes == ("a", "b", "c") and skipped.labels.tolist() == [0, 0, 2, 2]
    assert skipped.bad_entries == 1


def test_classes_differ_between_train_and_val(tmp_path):
    root = tmp_path / "data"
    write_jpeg_folder(root / "train", ["ant", "bee"], per_class=1)
    write_jpeg_folder(root / "val", ["ant", "bee", "cat"], per_class=1)
    with pytest.raises(CorruptDatasetError) as error:
        _index(root, "val")
    assert _one_line(error) == (
        f"{root / 'val' / 'cat'}: class folder 'cat' is not one of the 2 classes of the "
        f"training split {root / 'train'} (ant, bee). Remove the folder, or add the class to "
        "the training split"
    )


@pytest.fixture
def bad_folder(tmp_path):
    """10 JPEGs in 2 classes; three of them broken in different ways."""
    root = tmp_path / "data"
    files = write_jpeg_folder(root, ["a", "b"], per_class=5)
    files[1].write_bytes(b"\xff\xd8 definitely not a jpeg")
    good = files[0].read_bytes()
    files[6].write_bytes(good[: len(good) // 2])
    files[8].write_text("a text file named like an image")
    return _index(root), files


PROBLEMS = {
    1: "cannot decode the image (not a format Pillow reads)",
    6: "cannot decode the image (Truncated File Read)",
    8: "cannot decode the image (not a format Pillow reads)",
}


@pytest.mark.parametrize("bad", sorted(PROBLEMS))
def test_decode_names_the_bad_file_in_one_line(bad_folder, bad):
    source, files = bad_folder
    with pytest.raises(CorruptDatasetError) as error:
        decode_image(source.read(bad), name=source.describe(bad))
    assert _one_line(error) == f"{files[bad]}: {PROBLEMS[bad]}. Remove or replace the file"


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_raises_in_the_main_process_naming_the_file(bad_folder, workers):
    source, files = bad_folder
    loader = _loader(source, workers)
    batches = iter(loader)
    with pytest.raises(CorruptDatasetError) as error:
        next(batches)
    assert _one_line(error) == (
        f"{files[1]}: {PROBLEMS[1]}. Remove or replace the file, {SKIP_HINT}"
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_drops_and_counts_bad_files(bad_folder, workers):
    source, _ = bad_folder
    loader = _loader(source, workers, on_bad_file="skip")
    labels = [y for _, y in loader]
    assert [len(y) for y in labels] == [3, 3, 1]  # batches of 4, 4, 2 less one bad file each
    assert torch.cat(labels).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert loader.bad_files == 3 and loader.epoch_stats() == {"bad_files": 3}
    list(loader)
    assert loader.bad_files == 6  # a running total


def test_a_share_left_without_samples_is_an_empty_batch(bad_folder):
    source, files = bad_folder
    for i in (4, 5):
        files[i].write_bytes(b"")
    x = [x for x, _ in _loader(source, 0, on_bad_file="skip").shard(0, 2)]  # shares 0-1, 4-5, 8
    assert [tuple(t.shape) for t in x] == [(1, 3, 12, 16), (0, 3, 12, 16), (0, 3, 12, 16)]


def test_file_removed_after_indexing(bad_folder):
    source, files = bad_folder
    files[0].unlink()
    with pytest.raises(CorruptDatasetError) as error:
        next(iter(_loader(source, 0)))
    assert _one_line(error).startswith(
        f"{files[0]}: cannot read the file (No such file or directory). Restore it"
    )


@pytest.mark.parametrize("pixels", [3000, 1500])  # > 2x the limit: error; > 1x: warning
def test_decompression_bomb_is_refused(monkeypatch, pixels, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (pixels // 30, 30)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(CorruptDatasetError, match="decompression bomb") as error:
        decode_image(bomb.read_bytes(), name=str(bomb))
    assert _one_line(error).startswith(f"{bomb}: refused a possible decompression bomb (")


def test_a_read_error_of_any_source_is_a_bad_file(bad_folder):
    source, files = bad_folder

    class Failing:
        name, classes = source.name, source.classes

        def __len__(self):
            return len(source)

        def label(self, i):
            return source.label(i)

        def describe(self, i):
            return f"shard-000000.tar:{i:06d}.jpg"

        def read(self, i):
            raise OSError(5, "Input/output error")

    with pytest.raises(CorruptDatasetError) as error:
        next(iter(_loader(Failing(), 2)))
    assert _one_line(error) == (
        f"shard-000000.tar:000000.jpg: cannot read the file (Input/output error). Check the "
        f"file and its disk, {SKIP_HINT}"
    )
