import pytest
import torch

from normlab.data import channel_stats, make_synthetic


def test_shapes_balance_and_stats():
    train = make_synthetic(num_classes=7, size=12, channels=2, train_size=70, test_size=15)
    test = make_synthetic("test", num_classes=7, size=12, channels=2, train_size=70, test_size=15)
    assert train.images.shape == (70, 2, 12, 12) and test.images.shape == (15, 2, 12, 12)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(train.labels.bincount(), torch.full((7,), 10))
    assert train.num_classes == 7 and len(train.classes) == 7
    assert test.mean == train.mean == channel_stats(train.images)[0]


def test_deterministic_from_the_seed():
    first, second = make_synthetic(train_size=64), make_synthetic(train_size=64)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert not torch.equal(first.images, make_synthetic(train_size=64, seed=1).images)
    test = make_synthetic("test", train_size=64, test_size=64)
    assert not torch.equal(first.images, test.images)


def test_classes_differ_more_than_samples_within_a_class():
    data = make_synthetic(num_classes=4, train_size=400, noise=0.0)
    spectra = torch.fft.fft2(data.images.float()).abs().flatten(1)
    centroids = torch.stack([spectra[data.labels == k].mean(0) for k in range(4)])
    nearest = torch.cdist(spectra, centroids).argmin(1)
    assert (nearest == data.labels).float().mean() > 0.9


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        make_synthetic("val")
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic(num_classes=0)
