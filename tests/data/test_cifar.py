import os
import pickle

import numpy as np
import pytest
import torch

from normlab.data import (
    CIFAR10_STATS,
    CorruptDatasetError,
    MissingDatasetError,
    read_cifar10,
    read_cifar100,
)

from .formats import (
    cifar_images,
    cifar_record,
    tar_folder,
    write_cifar10_folder,
    write_cifar100_folder,
    write_pickle,
)


def _expected_train(records):
    names = [f"data_batch_{i}" for i in range(1, 6)]
    images = np.concatenate([cifar_images(records[n]) for n in names])
    labels = np.concatenate([records[n]["labels"] for n in names])
    return images, labels


@pytest.fixture
def cifar10(tmp_path):
    return tmp_path, write_cifar10_folder(tmp_path)


@pytest.mark.parametrize("where", ["parent", "folder"])
def test_cifar10_folder_round_trip(cifar10, where):
    root, records = cifar10
    path = root if where == "parent" else root / "cifar-10-batches-py"
    train = read_cifar10(path, "train")
    images, labels = _expected_train(records)
    assert train.images.dtype == torch.uint8 and train.images.shape == (15, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(images))
    assert torch.equal(train.labels, torch.from_numpy(labels))
    assert train.classes == [f"c{i}" for i in range(10)] and train.num_classes == 10
    assert (train.mean, train.std) == CIFAR10_STATS
    test = read_cifar10(path, "test")
    assert torch.equal(test.images, torch.from_numpy(cifar_images(records["test_batch"])))


@pytest.mark.parametrize("where", ["archive", "archive_folder"])
def test_cifar10_archive_round_trip(cifar10, tmp_path_factory, where):
    root, records = cifar10
    holder = tmp_path_factory.mktemp("archive")
    archive = tar_folder(root / "cifar-10-batches-py", holder / "cifar-10-python.tar.gz")
    train = read_cifar10(archive if where == "archive" else holder, "train")
    images, labels = _expected_train(records)
    assert torch.equal(train.images, torch.from_numpy(images))
    assert torch.equal(train.labels, torch.from_numpy(labels))


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_round_trip(tmp_path, labels):
    records = write_cifar100_folder(tmp_path)
    archive = tar_folder(tmp_path / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    for root in (tmp_path / "cifar-100-python", archive):
        test = read_cifar100(root, "test", labels=labels)
        assert torch.equal(test.images, torch.from_numpy(cifar_images(records["test"])))
        assert test.labels.tolist() == records["test"][f"{labels}_labels"]
        assert test.num_classes == (100 if labels == "fine" else 20)
        assert test.classes[0] == f"{labels}0"


def test_missing_data_names_expected_files_and_source(tmp_path):
    with pytest.raises(MissingDatasetError) as error:
        read_cifar10(tmp_path / "nowhere")
    message = str(error.value)
    assert "nowhere" in message and "cifar-10-python.tar.gz" in message
    assert "Krizhevsky" in message
    assert isinstance(error.value, FileNotFoundError)


def test_missing_batch_file_is_named(cifar10):
    root, _ = cifar10
    os.remove(root / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(MissingDatasetError, match="data_batch_3"):
        read_cifar10(root)


def test_truncated_pickle_is_named(cifar10):
    root, _ = cifar10
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptDatasetError, match="data_batch_2") as error:
        read_cifar10(root)
    assert isinstance(error.value, ValueError)


def test_truncated_archive_is_named(cifar10, tmp_path_factory):
    root, _ = cifar10
    holder = tmp_path_factory.mktemp("archive")
    archive = tar_folder(root / "cifar-10-batches-py", holder / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[:1000])
    with pytest.raises(CorruptDatasetError, match="cifar-10-python.tar.gz"):
        read_cifar10(holder)


def test_wrong_record_layout_is_rejected(cifar10):
    root, _ = cifar10
    path = root / "cifar-10-batches-py" / "data_batch_1"
    bad = cifar_record(np.random.default_rng(0), 3, {"labels": 10})
    bad["data"] = bad["data"][:, :100]
    write_pickle(path, bad)
    with pytest.raises(CorruptDatasetError, match=r"data_batch_1.*\(N, 3072\)"):
        read_cifar10(root)
    write_pickle(path, {"data": bad["data"]})
    with pytest.raises(CorruptDatasetError, match="labels"):
        read_cifar10(root)


@pytest.mark.parametrize("labels", [["1", "2", "3"], [1.0, 2.0, 3.0], [True, False, True]])
def test_labels_that_are_not_integers_name_the_file(cifar10, labels):
    root, records = cifar10
    path = root / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(path, {**records["data_batch_3"], "labels": labels})
    with pytest.raises(CorruptDatasetError, match=r"data_batch_3: 'labels' must be integer"):
        read_cifar10(root)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickle_with_foreign_classes_is_refused(cifar10):
    root, _ = cifar10
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": _Exploit(), "labels": []}))
    with pytest.raises(CorruptDatasetError, match="refusing to load"):
        read_cifar10(root, "test")


def test_unknown_split_and_label_kind(cifar10):
    root, _ = cifar10
    with pytest.raises(ValueError, match="valid: train, test"):
        read_cifar10(root, "val")
    with pytest.raises(ValueError, match="fine"):
        read_cifar100(root, labels="medium")
