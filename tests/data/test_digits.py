import colorsys

import numpy as np
import pytest
import torch

from normlab.data import (
    SEEN_STYLES,
    UNSEEN_STYLES,
    channel_stats,
    digits_split_indices,
    load_digits_data,
    render_styles,
)
from normlab.data.seeding import seeded_generator
from normlab.data.textures import texture_bank


def test_plain_digits_shapes_and_stats():
    train, test = load_digits_data("train"), load_digits_data("test")
    assert train.images.shape == (1347, 3, 32, 32) and test.images.shape == (450, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.num_classes == 10 and train.classes == [str(d) for d in range(10)]
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    assert train.mean == test.mean == channel_stats(train.images)[0]
    assert 0.1 < train.mean[0] < 0.6


def test_split_is_stratified_disjoint_and_fixed():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train_index, test_index = digits_split_indices(labels)
    assert np.intersect1d(train_index, test_index).size == 0
    assert np.union1d(train_index, test_index).size == labels.size
    test_share = np.bincount(labels[test_index]) / np.bincount(labels)
    assert np.all(np.abs(test_share - 0.25) < 0.01)
    assert np.array_equal(digits_split_indices(labels)[1], test_index)
    assert torch.equal(load_digits_data("test").labels, torch.from_numpy(labels[test_index]))


def test_digit_scans_are_rendered_smoothly():
    from sklearn.datasets import load_digits

    scans = load_digits().images
    train_index, _ = digits_split_indices(load_digits().target)
    image = load_digits_data("train").images[0, 0].float()
    block_means = image.view(8, 4, 8, 4).mean(dim=(1, 3)) / 255
    assert np.corrcoef(block_means.flatten(), scans[train_index[0]].flatten())[0, 1] > 0.9
    assert len(torch.unique(image)) > 16


@pytest.mark.parametrize("split", ["train", "test_unseen_styles"])
def test_deterministic(split):
    first = load_digits_data(split, style=True)
    second = load_digits_data(split, style=True)
    assert torch.equal(first.images, second.images) and first.mean == second.mean
    other_seed = load_digits_data(split, style=True, seed=1)
    assert not torch.equal(first.images, other_seed.images)
    assert torch.equal(first.labels, other_seed.labels)


def test_styled_splits_share_digits_but_not_styles():
    test = load_digits_data("test", style=True)
    unseen = load_digits_data("test_unseen_styles", style=True)
    plain_unseen = load_digits_data("test_unseen_styles")
    assert torch.equal(test.labels, unseen.labels)
    assert torch.equal(unseen.images, plain_unseen.images)
    assert not torch.equal(test.images, unseen.images)
    assert test.mean == unseen.mean != load_digits_data("test").mean
    assert not torch.equal(test.images[:, 0], test.images[:, 1])


def _median_hues(images):
    medians = images.flatten(2).float().median(dim=2).values / 255
    hsv = [colorsys.rgb_to_hsv(*rgb) for rgb in medians.tolist()]
    return np.array([h for h, s, v in hsv if s > 0.2 and v > 0.3])


@pytest.mark.parametrize("textures", ["skimage", "procedural"])
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_seen_and_unseen_styles_use_disjoint_hues(textures, fill):
    masks = torch.full((64, 16, 16), fill)
    for styles in (SEEN_STYLES, UNSEEN_STYLES):
        hues = _median_hues(render_styles(masks, styles, seeded_generator(5), textures))
        low, high = styles.hue_range
        assert hues.size > 20
        assert np.mean((hues >= low) & (hues < high)) > 0.95


@pytest.mark.parametrize("source", ["skimage", "procedural"])
def test_texture_banks_are_disjoint(source):
    seen, unseen = texture_bank("seen", source), texture_bank("unseen", source)
    assert seen.shape[1:] == unseen.shape[1:]
    distance = torch.cdist(seen.flatten(1), unseen.flatten(1))
    assert distance.min() > 1.0


def test_styles_keep_digits_legible():
    styled = load_digits_data("train", style=True).images.float()
    masks = load_digits_data("train").images[:, :1].float() / 255
    stroke, ground = (masks > 0.7).float(), (masks < 0.1).float()
    stroke_colour = (styled * stroke).sum((2, 3)) / stroke.sum((2, 3))
    ground_colour = (styled * ground).sum((2, 3)) / ground.sum((2, 3))
    assert torch.all((stroke_colour - ground_colour).norm(dim=1) > 40)


def test_bad_arguments():
    with pytest.raises(ValueError, match="test_unseen_styles"):
        load_digits_data("validation")
    with pytest.raises(ValueError, match="texture source"):
        load_digits_data(style=True, textures="photos")
