import itertools

import pytest
import torch
import torch.nn.functional as F

from normlab.data import DeviceLoader, ImageData, Normalizer, crop_flip

MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)


def _indexed_data(n=10, size=6):
    """Random images whose labels are their indices, so batches reveal their order."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return ImageData(images, torch.arange(n), n, [str(i) for i in range(n)], MEAN, STD, "idx")


def _normalized(images):
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def _epoch(loader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_crop_at_known_offsets_equals_padded_slices():
    images = _indexed_data().images[:4]
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [4, 4]])
    out = crop_flip(images, offsets, torch.zeros(4, dtype=torch.bool), padding=4)
    padded = F.pad(images, (4, 4, 4, 4))
    for i, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, r : r + 6, c : c + 6])
    assert torch.equal(out[3], images[3])
    assert torch.all(out[0, :, :4, :] == 0) and torch.all(out[0, :, 4:, 4:] == images[0, :, :2, :2])


def test_flip_reverses_columns():
    images = _indexed_data().images[:3]
    centre = torch.full((3, 2), 4)
    flipped = crop_flip(images, centre, torch.tensor([True, False, True]), padding=4)
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])
    shifted = crop_flip(images, torch.tensor([[2, 1]] * 3), torch.ones(3, dtype=torch.bool), 4)
    padded = F.pad(images, (4, 4, 4, 4))
    assert torch.equal(shifted[2], padded[2, :, 2:8, 1:7].flip(-1))


def test_without_augmentation_batches_are_the_normalized_data_in_shuffled_order():
    data = _indexed_data()
    loader = DeviceLoader(data, 4, train=True, augment=False, seed=3)
    assert len(loader) == 2
    x, y = _epoch(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (8, 3, 6, 6)
    assert len(set(y.tolist())) == 8 and y.tolist() != sorted(y.tolist())
    torch.testing.assert_close(x, _normalized(data.images[y]))


def test_evaluation_is_in_order_complete_and_plain():
    data = _indexed_data()
    loader = DeviceLoader(data, 4, train=False)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    x, y = _epoch(loader)
    assert torch.equal(y, torch.arange(10))
    torch.testing.assert_close(x, _normalized(data.images))


def test_augmented_samples_are_crops_or_flips_of_their_source():
    data = _indexed_data()
    x, y = _epoch(DeviceLoader(data, 5, train=True, seed=1))
    padded = _normalized(F.pad(data.images, (4, 4, 4, 4)))
    used = set()
    for sample, label in zip(x, y.tolist(), strict=True):
        crops = {
            (r, c, flip): padded[label, :, r : r + 6, c : c + 6]
            for r, c, flip in itertools.product(range(9), range(9), (False, True))
        }
        matches = [
            key
            for key, crop in crops.items()
            if torch.allclose(sample, crop.flip(-1) if key[2] else crop, atol=1e-5)
        ]
        assert matches, f"sample {label} is no crop/flip of its source image"
        used.update(matches)
    assert len(used) > 3


def test_same_seed_and_epoch_give_the_same_batches():
    data = _indexed_data(n=32)
    first = DeviceLoader(data, 8, train=True, seed=7)
    second = DeviceLoader(data, 8, train=True, seed=7)
    epoch0, epoch1 = _epoch(first), _epoch(first)
    assert first.epoch == 2
    assert not torch.equal(epoch0[1], epoch1[1])
    second.set_epoch(1)
    resumed = _epoch(second)
    assert torch.equal(resumed[0], epoch1[0]) and torch.equal(resumed[1], epoch1[1])
    second.set_epoch(0)
    assert torch.equal(_epoch(second)[0], epoch0[0])
    other = DeviceLoader(data, 8, train=True, seed=8)
    assert not torch.equal(_epoch(other)[1], epoch0[1])


def test_state_dict_restores_the_position():
    data = _indexed_data(n=16)
    loader = DeviceLoader(data, 4, train=True, seed=5)
    _epoch(loader)
    state = loader.state_dict()
    expected = _epoch(loader)
    restored = DeviceLoader(data, 4, train=True, seed=5)
    restored.load_state_dict(state)
    assert torch.equal(_epoch(restored)[0], expected[0])
    with pytest.raises(ValueError, match="seed 5"):
        DeviceLoader(data, 4, train=True, seed=6).load_state_dict(state)


def test_channels_last_and_normalizer():
    data = _indexed_data()
    x, _ = next(iter(DeviceLoader(data, 4, train=True, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(iter(DeviceLoader(data, 4, train=True)))
    assert x.is_contiguous()
    normalize = Normalizer(MEAN, STD, "cpu")
    torch.testing.assert_close(normalize(data.images), _normalized(data.images))


def test_batch_larger_than_data_is_refused_when_dropping_last():
    with pytest.raises(ValueError, match="fewer than one batch"):
        DeviceLoader(_indexed_data(), 11, train=True)
    assert len(DeviceLoader(_indexed_data(), 11, train=False)) == 1
