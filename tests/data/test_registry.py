import pytest
import torch

from normlab.data import (
    MissingDatasetError,
    create_dataset,
    dataset_info,
    list_datasets,
    read_mnist,
)

from .formats import write_mnist_folder

NAMES = [
    "cifar10", "cifar100", "coco", "coco_sample", "digits", "fashion_mnist", "imagefolder",
    "mnist", "synthetic", "webdataset",
]


def test_names():
    assert list_datasets() == NAMES
    assert dataset_info("Fashion-MNIST").name == "fashion_mnist"
    assert dataset_info("digits").splits == ("train", "test", "test_unseen_styles")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown data set 'svhn'; valid: cifar10, cifar100"):
        create_dataset("svhn")


def test_built_in_data_through_the_registry():
    data = create_dataset("synthetic", split="test", num_classes=3, test_size=9, train_size=9)
    assert len(data) == 9 and data.num_classes == 3
    assert create_dataset("digits", split="test_unseen_styles").images.shape == (450, 3, 32, 32)


def test_reader_options_pass_through(tmp_path):
    write_mnist_folder(tmp_path, compress=True)
    data = create_dataset("mnist", tmp_path, split="test", size=32, channels=3)
    assert data.image_shape == (3, 32, 32)
    plain = read_mnist(tmp_path, "test")
    assert torch.equal(create_dataset("mnist", tmp_path, "test").images, plain.images)


def test_bad_requests_are_explained(tmp_path):
    with pytest.raises(ValueError, match="valid: train, test, test_unseen_styles"):
        create_dataset("digits", split="val")
    with pytest.raises(ValueError, match=r"unknown digits option\(s\) \['colour'\]; valid: style"):
        create_dataset("digits", colour=True)
    with pytest.raises(ValueError, match="takes no root"):
        create_dataset("digits", tmp_path)
    with pytest.raises(ValueError, match="pass root"):
        create_dataset("cifar10")
    with pytest.raises(MissingDatasetError):
        create_dataset("fashion_mnist", tmp_path)
