import sys

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.data import (
    IMAGENET_STATS,
    CorruptDatasetError,
    MissingDatasetError,
    read_image_folder,
)


def _write_images(folder, classes, per_class=2, size=(8, 8), seed=0):
    """Write random PNGs to folder/<class>/; return {class: [HxWx3 arrays in file order]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in classes:
        (folder / name).mkdir(parents=True)
        written[name] = []
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"img{i}.png")
            written[name].append(pixels)
    return written


def _expected(written, classes):
    images = [torch.from_numpy(p).permute(2, 0, 1) for c in classes for p in written[c]]
    labels = [k for k, c in enumerate(classes) for _ in written[c]]
    return torch.stack(images), torch.tensor(labels)


def test_round_trip_at_native_size(tmp_path):
    written = _write_images(tmp_path, ["cat", "ant", "bee"])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    data = read_image_folder(tmp_path, size=8)
    images, labels = _expected(written, ["ant", "bee", "cat"])
    assert data.classes == ["ant", "bee", "cat"] and data.num_classes == 3
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    assert (data.mean, data.std) == IMAGENET_STATS


def test_split_and_domain_layouts(tmp_path):
    written = _write_images(tmp_path / "Art" / "val", ["chair", "desk"], seed=1)
    _write_images(tmp_path / "Clipart", ["chair", "desk"], seed=2)
    data = read_image_folder(tmp_path, "val", domain="Art", size=8)
    images, labels = _expected(written, ["chair", "desk"])
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    assert read_image_folder(tmp_path, domain="Clipart", size=8).num_classes == 2


def test_fixed_class_list_keeps_labels_across_domains(tmp_path):
    _write_images(tmp_path / "Product", ["desk"], per_class=1)
    data = read_image_folder(tmp_path, domain="Product", classes=["chair", "desk"], size=8)
    assert data.num_classes == 2 and data.labels.tolist() == [1]
    with pytest.raises(ValueError, match="desk"):
        read_image_folder(tmp_path, domain="Product", classes=["chair"], size=8)


def test_other_splits_take_the_training_split_classes(tmp_path):
    _write_images(tmp_path / "train", ["ant", "bee", "cat"], per_class=1)
    _write_images(tmp_path / "test", ["ant", "cat"], per_class=1)
    data = read_image_folder(tmp_path, "test", size=8)
    assert data.classes == ["ant", "bee", "cat"] and data.labels.tolist() == [0, 2]
    assert read_image_folder(tmp_path / "test", size=8).labels.tolist() == [0, 1]


def test_class_folder_missing_from_training_split_is_named(tmp_path):
    _write_images(tmp_path / "train", ["ant", "bee"], per_class=1)
    _write_images(tmp_path / "test", ["ant", "bee", "cat"], per_class=1)
    with pytest.raises(CorruptDatasetError) as info:
        read_image_folder(tmp_path, "test", size=8)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'test' / 'cat'}: class folder 'cat' is not one")
    assert str(tmp_path / "train") in message and "\n" not in message


@pytest.mark.parametrize("pixels", [3000, 1500])  # > 2x the limit: error; > 1x: warning
def test_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch, pixels):
    _write_images(tmp_path, ["ant"], per_class=1)
    bomb = tmp_path / "ant" / "bomb.png"
    Image.new("RGB", (pixels // 30, 30)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(CorruptDatasetError, match="decompression bomb") as info:
        read_image_folder(tmp_path, size=8)
    assert str(info.value).startswith(f"{bomb}: ") and "\n" not in str(info.value)


def test_resize_crops_the_centre_square(tmp_path):
    (tmp_path / "a").mkdir()
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    data = read_image_folder(tmp_path, size=5)
    assert data.images.shape == (1, 3, 5, 5)
    assert torch.all(data.images[0, :, :, 1:4] == 255)


def test_grey_channel(tmp_path):
    _write_images(tmp_path, ["a"], per_class=1)
    data = read_image_folder(tmp_path, size=8, channels=1, mean=[0.5], std=[0.25])
    assert data.image_shape == (1, 8, 8) and data.mean == (0.5,) and data.std == (0.25,)


def test_corrupt_image_is_named(tmp_path):
    _write_images(tmp_path, ["a"], per_class=1)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(CorruptDatasetError, match="broken.jpg"):
        read_image_folder(tmp_path, size=8)


def test_missing_folders(tmp_path):
    _write_images(tmp_path / "Art", ["a"], per_class=1)
    with pytest.raises(MissingDatasetError, match="Paint.*Art"):
        read_image_folder(tmp_path, domain="Paint")
    with pytest.raises(MissingDatasetError, match="split='all'"):
        read_image_folder(tmp_path, "train", domain="Art")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(MissingDatasetError, match="no images"):
        read_image_folder(tmp_path / "empty")


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    _write_images(tmp_path, ["a"], per_class=1)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"normlab\[images\]"):
        read_image_folder(tmp_path, size=8)
