import json
import os
import time

import numpy as np
import pycocotools.mask as mask_api
import pytest
from PIL import Image
from pycocotools.coco import COCO

from normlab.cli import main as cli_main
from normlab.data import (
    CorruptDatasetError,
    MissingDatasetError,
    coco_sample_root,
    create_dataset,
    create_detection_source,
    create_source,
    dataset_info,
    index_coco,
    write_coco_sample,
)
from normlab.data import coco as coco_module
from normlab.data.coco_sample import COCO_SAMPLE_CATEGORIES


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "default-cache"))


CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 9, "name": "box"}]


def _rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_coco(root, images, annotations, split="s", categories=CATEGORIES):
    """A COCO instances split: random JPEGs of the listed sizes, the json as given."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for image in images:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / image["file_name"])
    content = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))


def _image(image_id, height=12, width=16):
    return {"id": image_id, "file_name": f"{image_id:04d}.jpg", "height": height, "width": width}


def _annotation(ann_id, image_id, category=5, bbox=(2, 3, 4, 5), **extra):
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": list(bbox),
            "area": w * h, "iscrowd": 0, "segmentation": _rect(x, y, w, h), **extra}


@pytest.fixture
def masks():
    """Three random masks of a 12 x 16 image, RLE-encoded (compressed and not)."""
    rng = np.random.default_rng(1)
    return [(rng.random((12, 16)) < 0.4).astype(np.uint8) for _ in range(3)]


def _uncompressed(mask):
    """COCO's uncompressed RLE: lengths of alternating runs of 0 and 1, column by column."""
    counts, value, run = [], 0, 0
    for pixel in mask.ravel(order="F").tolist():
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    return {"size": list(mask.shape), "counts": [*counts, run]}


def test_boxes_labels_and_masks_written_are_read_back(tmp_path, masks):
    compressed = mask_api.encode(np.asfortranarray(masks[0]))
    annotations = [
        _annotation(1, 7, category=9, segmentation={
            "size": [12, 16], "counts": compressed["counts"].decode()}),
        _annotation(2, 7, category=2, bbox=(10.5, 0, 20, 4), segmentation=_uncompressed(masks[1])),
        _annotation(3, 7, category=5, bbox=(1, 1, 3, 2)),
        _annotation(4, 7, iscrowd=1, segmentation=_uncompressed(masks[2])),
        _annotation(5, 3, category=2),
    ]
    write_coco(tmp_path, [_image(7), _image(3, 20, 10), _image(4)], annotations)
    source = index_coco(tmp_path, "s")
    assert source.classes == ("dog", "cat", "box") and source.category_ids == (2, 5, 9)
    assert [source.image_id(i) for i in range(len(source))] == [3, 4, 7]  # sorted by id
    assert source.size(0) == (20, 10) and source.describe(2).endswith("s/0007.jpg (image id 7)")
    assert source.read(2) == (tmp_path / "s" / "0007.jpg").read_bytes()
    target = source.target(2, masks=True)
    # the crowd annotation is left out; a box reaching past the image is clipped to it
    np.testing.assert_array_equal(target["labels"], [3, 1, 2])
    np.testing.assert_array_equal(
        target["boxes"], np.array([[2, 3, 6, 8], [10.5, 0, 16, 4], [1, 1, 4, 3]], np.float32)
    )
    assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int64
    assert target["masks"].shape == (3, 12, 16) and target["masks"].dtype == np.uint8
    np.testing.assert_array_equal(target["masks"][0], masks[0])
    np.testing.assert_array_equal(target["masks"][1], masks[1])
    rectangle = np.zeros((12, 16), np.uint8)
    rectangle[1:3, 1:4] = 1
    np.testing.assert_array_equal(target["masks"][2], rectangle)
    assert "masks" not in source.target(2, masks=False)
    assert source.target(1, masks=True)["masks"].shape == (0, 12, 16)


def _age(file, seconds=10):
    """Date a file's modification back (a file modified just now is not cached)."""
    past = time.time() - seconds
    os.utime(file, (past, past))


@pytest.mark.filterwarnings("ignore:.*dropped 1 bad annotation")
def test_the_index_is_cached_until_the_annotation_file_changes(tmp_path, monkeypatch, masks):
    segmentation = mask_api.encode(np.asfortranarray(masks[0]))
    segmentation["counts"] = segmentation["counts"].decode()
    write_coco(tmp_path, [_image(1), _image(2)],
               [_annotation(1, 1), _annotation(2, 2, segmentation=segmentation),
                _annotation(3, 2, bbox=(1, 1, 0, 0), iscrowd=1)])
    file = tmp_path / "annotations" / "instances_s.json"
    cache = tmp_path / "cache"

    def index(**options):
        return index_coco(tmp_path, "s", cache_dir=cache, on_bad_annotation="skip", **options)

    index()
    assert not cache.exists()  # the file was written just now
    _age(file)
    built = index()
    assert len(list(cache.iterdir())) == 1

    def unread(file):
        raise AssertionError("read the annotation file")

    monkeypatch.setattr(coco_module, "_load_json", unread)
    with pytest.warns(UserWarning, match="dropped 1 bad annotation"):  # told from the cache too
        cached = index()
    assert cached.classes == built.classes and cached.category_ids == built.category_ids
    for i in range(2):
        assert cached.image_id(i) == built.image_id(i) and cached.size(i) == built.size(i)
        for key, value in built.target(i, masks=True).items():
            np.testing.assert_array_equal(cached.target(i, masks=True)[key], value)
    np.testing.assert_array_equal(cached.target(1, masks=True)["masks"][0], masks[0])
    (tmp_path / "s" / "0002.jpg").unlink()
    with pytest.raises(MissingDatasetError, match="image file of image id 2"):
        index()  # checked on a cache hit too
    with pytest.raises(AssertionError, match="read the annotation file"):
        index(masks=False)  # another index
    content = json.loads(file.read_text())
    content["categories"][0]["name"] = "lion"
    file.write_text(json.dumps(content))
    _age(file, 5)
    with pytest.raises(AssertionError, match="read the annotation file"):
        index()


def test_an_index_without_masks_gives_no_masks(tmp_path):
    write_coco(tmp_path, [_image(1)], [_annotation(1, 1)])
    source = index_coco(tmp_path, "s", masks=False)
    assert source.target(0, masks=False)["labels"].tolist() == [2]
    with pytest.raises(ValueError, match="indexed without masks"):
        source.target(0, masks=True)


def test_train_drops_images_without_a_usable_annotation(tmp_path):
    annotations = [_annotation(1, 1), _annotation(2, 2, iscrowd=1)]
    write_coco(tmp_path, [_image(1), _image(2), _image(3)], annotations)
    assert len(index_coco(tmp_path, "s")) == 3
    train = index_coco(tmp_path, "s", train=True)
    assert len(train) == 1 and train.image_id(0) == 1


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (_annotation(12, 1, category=3),
         r"annotation 12 \(image id 1\) has category id 3, which is not in 'categories'"),
        (_annotation(13, 1, bbox=(2, 3, 0, 5)), r"annotation 13 \(image id 1\) has a zero-area"),
        (_annotation(14, 1, bbox=(2, 3, 4, -1)), r"annotation 14 \(image id 1\) has a zero-area"),
        (_annotation(15, 8), r"annotation 15 \(image id 8\) refers to an image id not in"),
        (_annotation(16, 1, bbox=(30, 3, 4, 5)), r"annotation 16 \(image id 1\) has a box .* "
         "outside its 16x12 image"),
        (_annotation(17, 1, segmentation=[[1, 2, 3, 4]]),
         r"annotation 17 \(image id 1\) has a polygon with fewer than 3 points"),
        (_annotation(18, 1, segmentation={"size": [3, 3], "counts": [9]}),
         r"annotation 18 \(image id 1\) has an RLE of size \[3, 3\], not the image's \[12, 16\]"),
    ],
)
def test_a_bad_annotation_is_named_in_one_line(tmp_path, annotation, message):
    write_coco(tmp_path, [_image(1)], [_annotation(1, 1), annotation])
    with pytest.raises(CorruptDatasetError, match=message) as error:
        index_coco(tmp_path, "s")
    assert "\n" not in str(error.value) and "instances_s.json" in str(error.value)


def test_bad_boxes_and_segmentations_can_be_skipped_with_a_warning(tmp_path):
    annotations = [_annotation(1, 1), _annotation(2, 1, bbox=(2, 3, 4, 0)),
                   _annotation(3, 1, segmentation=[[1, 2]]), _annotation(4, 1, category=9)]
    write_coco(tmp_path, [_image(1)], annotations)
    with pytest.raises(CorruptDatasetError, match="on_bad_annotation='skip'"):
        index_coco(tmp_path, "s")
    with pytest.warns(UserWarning, match=r"dropped 2 bad annotation\(s\) .*; the first: "
                      r"annotation 2 \(image id 1\) has a zero-area"):
        source = index_coco(tmp_path, "s", on_bad_annotation="skip")
    assert source.target(0, masks=True)["labels"].tolist() == [2, 3]
    annotations.append(_annotation(5, 1, category=4))
    write_coco(tmp_path, [_image(1)], annotations)
    with pytest.raises(CorruptDatasetError, match="category id 4, which is not in"):
        index_coco(tmp_path, "s", on_bad_annotation="skip")


def test_segmentations_are_only_checked_for_masks(tmp_path):
    write_coco(tmp_path, [_image(1)], [_annotation(1, 1, segmentation=[])])
    with pytest.raises(CorruptDatasetError, match="polygon with fewer than 3 points"):
        index_coco(tmp_path, "s")
    assert len(index_coco(tmp_path, "s", masks=False)) == 1


def test_missing_files_are_named_in_one_line(tmp_path):
    with pytest.raises(MissingDatasetError, match=r"instances_val2017.json: .*cocodataset.org"):
        index_coco(tmp_path, "val2017")
    write_coco(tmp_path, [_image(1), _image(2)], [_annotation(1, 1)])
    (tmp_path / "s" / "0002.jpg").unlink()
    with pytest.raises(MissingDatasetError, match=r"0002.jpg: image file of image id 2 .*missing"):
        index_coco(tmp_path, "s")
    assert len(index_coco(tmp_path, "s", train=True)) == 1  # image 2 is not kept
    (tmp_path / "annotations" / "instances_t.json").write_text("{}")
    with pytest.raises(MissingDatasetError, match="no image folder for split 't'"):
        index_coco(tmp_path, "t")
    (tmp_path / "t").mkdir()
    with pytest.raises(CorruptDatasetError, match="has no images, annotations, categories"):
        index_coco(tmp_path, "t")
    (tmp_path / "annotations" / "instances_t.json").write_text("[1]")
    with pytest.raises(CorruptDatasetError, match="not a COCO annotation file"):
        index_coco(tmp_path, "t")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_coco_sample(tmp_path_factory.mktemp("coco") / "sample", train_images=24,
                             val_images=6)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # annToMask
def test_the_sample_set_is_exact_coco(sample):
    coco = COCO(str(sample / "annotations" / "instances_train.json"))
    source = index_coco(sample, "train")
    assert len(source) == 24 and len(index_coco(sample, "val")) == 6
    assert source.category_ids == tuple(c for c, _ in COCO_SAMPLE_CATEGORIES)
    orientations = set()
    kinds = set()
    for i in range(len(source)):
        height, width = source.size(i)
        assert 128 <= min(height, width) and max(height, width) <= 192
        orientations.add(height > width)
        with Image.open(source.path(i)) as image:
            assert image.size == (width, height)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=source.image_id(i)))
        assert 3 <= len(annotations) <= 6
        kinds |= {type(a["segmentation"]).__name__ for a in annotations}
        target = source.target(i, masks=True)
        expected = [coco.annToMask(a) for a in annotations]
        np.testing.assert_array_equal(target["masks"], np.stack(expected))
        ids = [source.category_ids[k - 1] for k in target["labels"]]
        assert ids == [a["category_id"] for a in annotations]
        for mask, box, annotation in zip(target["masks"], target["boxes"], annotations):
            rows, columns = np.nonzero(mask)  # each box is its mask's tight box: no occlusion
            tight = [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]
            np.testing.assert_array_equal(box, tight)
            assert annotation["area"] == mask.sum()
        assert target["masks"].sum(0).max() == 1  # objects never overlap
    assert orientations == {True, False} and kinds == {"list", "dict"}


def test_the_sample_set_is_deterministic_and_the_command_writes_it(sample, tmp_path, capsys):
    assert cli_main(["data", "coco-sample", str(tmp_path / "again")]) == 0
    assert "COCO-format sample" in capsys.readouterr().out
    again = tmp_path / "again"
    written = json.loads((sample / "annotations" / "instances_val.json").read_text())
    full = json.loads((again / "annotations" / "instances_val.json").read_text())
    assert len(full["images"]) == 50 and full["images"][:6] == written["images"]
    assert full["annotations"][: len(written["annotations"])] == written["annotations"]
    for image in written["images"]:  # the first images do not depend on the split's size
        name = image["file_name"]
        assert (again / "val" / name).read_bytes() == (sample / "val" / name).read_bytes()
    assert cli_main(["data", "coco-sample", str(again)]) == 1
    assert "exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.slow
def test_the_built_in_set_is_written_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path))
    root = coco_sample_root()
    assert root.parent == tmp_path and root.name.startswith("coco_sample-v1-")
    stamp = (root / "annotations" / "instances_val.json").stat().st_mtime_ns
    assert coco_sample_root() == root
    assert (root / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    source = create_detection_source("coco_sample", split="train", train=True)
    assert len(source) == 200 and source.annotation_file.parent == root / "annotations"
    assert len(create_detection_source("coco_sample", split="val")) == 50


def test_the_registry_knows_the_detection_sets(sample):
    assert dataset_info("coco").task == dataset_info("coco_sample").task == "detection"
    assert dataset_info("mnist").task == "classification"
    assert dataset_info("coco_sample").splits == ("train", "val")
    assert dataset_info("coco").options == ("masks", "train", "on_bad_annotation", "cache_dir")
    source = create_detection_source("coco", sample, "val", masks=False)
    assert len(source) == 6
    with pytest.raises(ValueError, match="'coco' is a detection data set .*create_dataset"):
        create_dataset("coco", sample, "val")
    with pytest.raises(ValueError, match="'coco_sample' is a detection data set"):
        create_source("coco_sample", split="val")
    with pytest.raises(ValueError, match="'mnist' is not a detection data set; detection: coco"):
        create_detection_source("mnist", sample)
    with pytest.raises(ValueError, match="takes no root"):
        create_detection_source("coco_sample", sample, "val")
    with pytest.raises(ValueError, match="unknown coco_sample split 'test'; valid: train, val"):
        create_detection_source("coco_sample", split="test")
    with pytest.raises(ValueError, match="pass root"):
        create_detection_source("coco", split="val")
