import gzip

import numpy as np
import pytest
import torch

from normlab.data import (
    FASHION_MNIST_STATS,
    MNIST_STATS,
    CorruptDatasetError,
    MissingDatasetError,
    read_fashion_mnist,
    read_idx,
    read_mnist,
)

from .formats import idx_bytes, write_idx, write_mnist_folder


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_round_trip(tmp_path, compress):
    arrays = write_mnist_folder(tmp_path, compress)
    for split in ("train", "test"):
        data = read_mnist(tmp_path, split)
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert torch.equal(data.images[:, 0], torch.from_numpy(arrays[f"{split}_images"]))
        assert torch.equal(data.labels, torch.from_numpy(arrays[f"{split}_labels"]).long())
        assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert (data.mean, data.std) == MNIST_STATS


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    arrays = write_mnist_folder(tmp_path / "FashionMNIST" / "raw", compress=True)
    data = read_fashion_mnist(tmp_path, "test")
    assert torch.equal(data.images[:, 0], torch.from_numpy(arrays["test_images"]))
    assert data.classes[0] == "T-shirt/top" and data.classes[-1] == "Ankle boot"
    assert (data.mean, data.std) == FASHION_MNIST_STATS


def test_dotted_file_names_are_found(tmp_path):
    arrays = write_mnist_folder(tmp_path, compress=False)
    for path in tmp_path.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    labels = read_mnist(tmp_path).labels
    assert torch.equal(labels, torch.from_numpy(arrays["train_labels"]).long())


def test_resize_and_channels_for_mixing(tmp_path):
    arrays = write_mnist_folder(tmp_path, compress=True)
    arrays["train_images"][:] = 200
    write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train_images"], compress=True)
    data = read_mnist(tmp_path, size=32, channels=3)
    assert data.image_shape == (3, 32, 32)
    assert data.mean == MNIST_STATS[0] * 3 and data.std == MNIST_STATS[1] * 3
    assert torch.all(data.images == 200)


def test_resized_content_follows_the_source(tmp_path):
    arrays = write_mnist_folder(tmp_path, compress=False)
    data = read_mnist(tmp_path, size=56, channels=3)
    doubled = torch.from_numpy(arrays["train_images"]).float()
    pooled = torch.nn.functional.avg_pool2d(data.images[:, :1].float(), 2)[:, 0]
    assert (pooled - doubled).abs().mean() < 40
    assert torch.equal(data.images[:, 0], data.images[:, 2])


def test_missing_file_names_it_and_the_source(tmp_path):
    write_mnist_folder(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MissingDatasetError) as error:
        read_mnist(tmp_path, "test")
    assert "t10k-labels-idx1-ubyte" in str(error.value) and "LeCun" in str(error.value)


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    with pytest.raises(CorruptDatasetError, match=r"labels: wrong magic number 0x00000803"):
        read_idx(path, ndim=1)


def test_truncated_file(tmp_path):
    write_mnist_folder(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptDatasetError, match="train-images-idx3-ubyte.*truncated"):
        read_mnist(tmp_path)
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(CorruptDatasetError, match="too short"):
        read_mnist(tmp_path)


def test_corrupt_gzip(tmp_path):
    write_mnist_folder(tmp_path, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(6, np.uint8)))[:-12])
    with pytest.raises(CorruptDatasetError, match="train-labels-idx1-ubyte.gz: corrupt gzip"):
        read_mnist(tmp_path)


def test_label_count_mismatch(tmp_path):
    write_mnist_folder(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), compress=False)
    with pytest.raises(CorruptDatasetError, match="5 labels but train-images-idx3-ubyte"):
        read_mnist(tmp_path)
