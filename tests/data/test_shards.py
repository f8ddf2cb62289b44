"""WebDataset shards: packing an image folder, indexing and reading the shards, bad shards."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.cli import main as cli_main
from normlab.data import shards as shards_module
from normlab.data.decode import decode_image
from normlab.data.errors import CorruptDatasetError, MissingDatasetError
from normlab.data.folder_index import index_image_folder
from normlab.data.image_folder import IMAGENET_STATS
from normlab.data.presets import transform_preset
from normlab.data.registry import create_dataset, create_source
from normlab.data.shards import ShardIndex, index_shards, pack_folder, read_shards
from normlab.data.streaming import StreamingLoader


def _encoded(rng: np.random.Generator, fmt: str) -> bytes:
    pixels = rng.integers(0, 256, (int(rng.integers(6, 20)), int(rng.integers(6, 20)), 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def _folder(root: Path, per_class: int = 4) -> Path:
    """root/train/<class>/*: JPEGs (.JPEG and .jpg) and one PNG per class."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "emu"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for j in range(per_class):
            suffix, fmt = [(".JPEG", "JPEG"), (".jpg", "JPEG"), (".png", "PNG")][j % 3]
            (folder / f"{name}_{j}{suffix}").write_bytes(_encoded(rng, fmt))
    return root


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def packed(tmp_path):
    folder = index_image_folder(_folder(tmp_path / "images"), "train", cache_dir=tmp_path / "c")
    paths = pack_folder(folder, tmp_path / "shards", split="train", samples_per_shard=5)
    return folder, paths, tmp_path


def test_every_sample_comes_back_with_its_bytes_and_label(packed):
    folder, paths, tmp = packed
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    index = index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    assert len(index) == len(folder) == 12
    assert index.classes == folder.classes == ("cat", "dog", "emu")
    for i in range(len(folder)):
        assert index.read(i) == folder.read(i)
        assert index.label(i) == folder.label(i)
        shard, _, member = index.describe(i).rpartition(":")
        assert Path(shard).name.startswith("train-") and member.startswith(f"{i:08d}.")
    assert index.name.startswith("webdataset:")


def test_shards_are_plain_tar_files_in_webdataset_layout(packed):
    folder, paths, tmp = packed
    seen = {}
    for path in paths:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) % 2 == 0
            for image, label in zip(names[0::2], names[1::2]):
                key, _, extension = image.partition(".")
                assert label == f"{key}.cls" and extension in {"jpg", "png"}
                data = tar.extractfile(image).read()
                seen[int(key)] = (data, int(tar.extractfile(label).read().decode("ascii")))
    assert sorted(seen) == list(range(len(folder)))
    assert all(seen[i] == (folder.read(i), folder.label(i)) for i in seen)
    meta = json.loads((tmp / "shards" / "train.json").read_text())
    assert meta == {
        "format": "webdataset", "classes": ["cat", "dog", "emu"], "samples": 12,
        "shards": [p.name for p in paths],
    }
    labels = [seen[i][1] for i in sorted(seen)][:5]
    first_shard_keys = [int(n.partition(".")[0]) for n in tarfile.open(paths[0]).getnames()[::2]]
    assert first_shard_keys != sorted(first_shard_keys) or labels != sorted(labels)


def test_packing_is_deterministic_and_the_order_does_not_depend_on_the_shard_size(packed):
    folder, paths, tmp = packed
    again = pack_folder(folder, tmp / "again", split="train", samples_per_shard=5)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    pack_folder(folder, tmp / "one", split="train", samples_per_shard=100)
    one = index_shards(tmp / "one", "train", cache_dir=tmp / "c")
    five = index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    assert [one.read(i) for i in range(len(one))] == [five.read(i) for i in range(len(five))]


def test_packing_refuses_to_overwrite_shards(packed):
    folder, _, tmp = packed
    with pytest.raises(FileExistsError, match="already holds train shards"):
        pack_folder(folder, tmp / "shards", split="train")
    with pytest.raises(ValueError, match="samples_per_shard"):
        pack_folder(folder, tmp / "other", samples_per_shard=0)


def test_the_index_is_cached_and_invalidated_when_a_shard_changes(packed, monkeypatch):
    folder, paths, tmp = packed
    index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    calls = []
    real = shards_module._scan_shard
    monkeypatch.setattr(
        shards_module, "_scan_shard", lambda path: calls.append(path) or real(path)
    )
    assert len(index_shards(tmp / "shards", "train", cache_dir=tmp / "c")) == 12
    assert calls == []
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    index = index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    assert len(calls) == 3 and [index.read(i) for i in range(12)] == [
        folder.read(i) for i in range(12)
    ]


def _one_line_error(excinfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("cut", [512 * 3 + 100, 512 * 4, -512 * 30])
def test_a_truncated_shard_names_the_shard_and_member(packed, cut):
    _, paths, tmp = packed
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:cut])
    with pytest.raises(CorruptDatasetError) as excinfo:
        index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    _one_line_error(excinfo, str(paths[1]), "truncated")
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert any(f"member {name!r}" in str(excinfo.value) for name in names)


def test_a_garbage_shard_is_a_corrupt_data_set_error(tmp_path):
    (tmp_path / "train-000000.tar").write_bytes(b"not a tar file " * 100)
    with pytest.raises(CorruptDatasetError) as excinfo:
        index_shards(tmp_path, "train", cache_dir=tmp_path / "c")
    _one_line_error(excinfo, "train-000000.tar", "not a tar file")


def test_a_sample_without_its_label_member_names_it(tmp_path):
    jpeg = _encoded(np.random.default_rng(1), "JPEG")
    _write_tar(
        tmp_path / "train-000000.tar",
        [("a.jpg", jpeg), ("a.cls", b"0"), ("b.jpg", jpeg), ("c.jpg", jpeg), ("c.cls", b"1")],
    )
    with pytest.raises(CorruptDatasetError) as excinfo:
        index_shards(tmp_path, "train", cache_dir=tmp_path / "c")
    _one_line_error(excinfo, "train-000000.tar", "'b.jpg'", "no b.cls label member")


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([("a.jpg", b"x"), ("a.cls", b"cat")], "'a.cls': label 'cat' is not a class index"),
        ([("a.cls", b"1")], "'a': needs one image member"),
        ([("a.jpg", b"x"), ("a.png", b"x"), ("a.cls", b"0")], "found a.jpg, a.png"),
    ],
)
def test_malformed_samples_are_refused(tmp_path, members, expected):
    _write_tar(tmp_path / "val-000000.tar", members)
    with pytest.raises(CorruptDatasetError, match=expected):
        index_shards(tmp_path, "val", cache_dir=tmp_path / "c")


def test_foreign_shards_without_a_listing_and_their_errors(tmp_path):
    jpeg = _encoded(np.random.default_rng(2), "JPEG")
    _write_tar(tmp_path / "train-000000.tar", [("x/k1.jpg", jpeg), ("x/k1.cls", b"2"),
                                               ("x/k0.jpeg", jpeg), ("x/k0.cls", b"0")])
    index = index_shards(tmp_path, "train", cache_dir=tmp_path / "c")
    assert index.classes == ("0", "1", "2") and [index.label(i) for i in (0, 1)] == [0, 2]
    assert index.describe(0).endswith("train-000000.tar:x/k0.jpeg") and index.read(0) == jpeg
    _write_tar(tmp_path / "train-000001.tar", [("x/k1.jpg", jpeg), ("x/k1.cls", b"1")])
    with pytest.raises(CorruptDatasetError, match="key repeats"):
        index_shards(tmp_path, "train", cache_dir=tmp_path / "c")
    with pytest.raises(MissingDatasetError, match="no test shards"):
        index_shards(tmp_path, "test", cache_dir=tmp_path / "c")


def test_a_listed_shard_that_is_missing_or_a_label_outside_the_classes(packed):
    _, paths, tmp = packed
    meta_path = tmp / "shards" / "train.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "classes": ["cat"]}))
    with pytest.raises(CorruptDatasetError, match="outside the 1 classes"):
        index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    meta_path.write_text(json.dumps({**meta, "samples": 13}))
    with pytest.raises(CorruptDatasetError, match="lists 13 samples but its shards hold 12"):
        index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    paths[2].unlink()
    with pytest.raises(MissingDatasetError, match="train-000002.tar: shard listed but missing"):
        index_shards(tmp / "shards", "train", cache_dir=tmp / "c")


def test_the_streaming_loader_gives_the_same_batches_over_shards_as_over_the_folder(packed):
    folder, _, tmp = packed
    index = index_shards(tmp / "shards", "train", cache_dir=tmp / "c")
    transform = transform_preset("imagenet_train", size=8)
    loaders = [
        StreamingLoader(
            source, 4, train=True, transform=transform, mean=(0.5,) * 3, std=(0.25,) * 3,
            seed=3, workers=workers,
        )
        for source, workers in ((folder, 0), (index, 1))
    ]
    for _ in range(2):
        batches = [list(loader) for loader in loaders]
        assert len(batches[0]) == len(batches[1]) == 3
        for (x, y), (xs, ys) in zip(*batches):
            assert torch.equal(x, xs) and torch.equal(y, ys)


def test_the_data_commands_pack_a_sample_folder_and_report_errors_in_one_line(tmp_path, capsys):
    sample = tmp_path / "sample"
    assert cli_main(["data", "sample", str(sample), "--per-class", "2", "--size", "16"]) == 0
    assert cli_main([
        "data", "pack", str(sample), str(tmp_path / "shards"), "--split", "val",
        "--samples-per-shard", "8",
    ]) == 0
    assert "20 images of 10 classes -> 3 shards" in capsys.readouterr().out
    folder = index_image_folder(sample, "val", cache_dir=tmp_path / "c")
    index = index_shards(tmp_path / "shards", "val", cache_dir=tmp_path / "c")
    assert [index.read(i) for i in range(20)] == [folder.read(i) for i in range(20)]
    assert cli_main(["data", "pack", str(sample), str(tmp_path / "shards"), "--split", "val"]) == 1
    assert cli_main(["data", "pack", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(e.startswith("normlab data: error: ") for e in errors)
    assert "already holds val shards" in errors[0] and "nowhere" in errors[1]


def test_the_registry_streams_and_reads_shards(packed):
    folder, _, tmp = packed
    source = create_source("webdataset", tmp / "shards", "train", cache_dir=tmp / "c")
    assert isinstance(source, ShardIndex) and len(source) == 12
    data = create_dataset("webdataset", tmp / "shards", "train", size=8, cache_dir=tmp / "c")
    assert data.images.shape == (12, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [folder.label(i) for i in range(12)]
    assert data.classes == ["cat", "dog", "emu"] and data.mean == IMAGENET_STATS[0]
    fit = transform_preset("eval_center", size=8)
    image = decode_image(folder.read(5), min_size=8, name="x")
    assert torch.equal(data.images[5], fit(image))
    grey = read_shards(tmp / "shards", "train", size=8, channels=1, cache_dir=tmp / "c")
    assert grey.images.shape == (12, 1, 8, 8) and len(grey.mean) == 1
