import pytest
import torch

from normlab.data import (
    ImageData,
    MixedLoader,
    count_primary_correct,
    create_dataset,
    mixed_num_classes,
    primary_logits,
)


def _data(n, num_classes, value, mean, std, name):
    """Constant images (so each part is recognisable after normalization)."""
    images = torch.full((n, 3, 4, 4), value, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    classes = [f"{name}{k}" for k in range(num_classes)]
    return ImageData(images, labels, num_classes, classes, (mean,) * 3, (std,) * 3, name)


@pytest.fixture
def parts():
    primary = _data(20, 5, 255, 0.5, 0.5, "primary")
    secondary = _data(7, 3, 0, 0.1, 0.2, "secondary")
    return primary, secondary


def test_batch_counts_and_label_offsets(parts):
    primary, secondary = parts
    loader = MixedLoader(
        primary, secondary, 2, primary_batch=4, secondary_per_k=3, augment=False, seed=1
    )
    assert len(loader) == 5 and loader.num_classes == 8 == mixed_num_classes(primary, secondary)
    assert loader.num_primary_classes == 5
    seen_secondary = []
    for x, y in loader:
        assert x.shape == (10, 3, 4, 4) and y.shape == (10,)
        assert torch.all(y[:4] < 5) and torch.all(y[4:] >= 5)
        torch.testing.assert_close(x[:4], torch.ones(4, 3, 4, 4))
        torch.testing.assert_close(x[4:], torch.full((6, 3, 4, 4), -1.0))
        seen_secondary += (y[4:] - 5).tolist()
    assert len(seen_secondary) == 30 and set(seen_secondary) == {0, 1, 2}


def test_an_epoch_visits_each_primary_sample_once():
    primary = _data(12, 12, 9, 0.5, 0.5, "p")
    secondary = _data(5, 5, 1, 0.5, 0.5, "s")
    loader = MixedLoader(primary, secondary, 1, primary_batch=4, secondary_per_k=4, seed=2)
    labels = torch.cat([y[:4] for _, y in loader])
    assert sorted(labels.tolist()) == list(range(12))
    secondary_labels = torch.cat([y[4:] - 12 for _, y in loader])
    assert torch.equal(secondary_labels[:5].sort().values, torch.arange(5))
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y[:4] for _, y in loader]), labels)


def test_zero_k_gives_primary_only_batches(parts):
    primary, secondary = parts
    loader = MixedLoader(primary, secondary, 0, primary_batch=5)
    assert all(len(y) == 5 and torch.all(y < 5) for _, y in loader)


def test_secondary_can_keep_its_own_statistics(parts):
    primary, secondary = parts
    loader = MixedLoader(
        primary,
        secondary,
        1,
        primary_batch=4,
        secondary_per_k=2,
        augment=False,
        normalize_secondary="own",
    )
    x, _ = next(iter(loader))
    torch.testing.assert_close(x[4:], torch.full((2, 3, 4, 4), -0.5))
    torch.testing.assert_close(x[:4], torch.ones(4, 3, 4, 4))


def test_augmentation_pads_each_image_with_zeros(parts):
    primary, secondary = parts
    loader = MixedLoader(primary, secondary, 1, primary_batch=4, secondary_per_k=2, padding=2)
    x, _ = next(iter(loader))
    image, padding = x[:4].isclose(torch.tensor(1.0)), x[:4].isclose(torch.tensor(-1.0))
    assert torch.any(padding) and torch.all(image | padding)


def test_shapes_must_match(parts):
    primary, _ = parts
    grey = ImageData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3).long(), 1, ["a"],
                     (0.5,), (0.5,), "grey")  # fmt: skip
    with pytest.raises(ValueError, match="size=32, channels=3"):
        MixedLoader(primary, grey)


def test_primary_metric_ignores_secondary_outputs():
    logits = torch.tensor([[0.1, 0.9, 0.2, 5.0], [0.8, 0.1, 0.0, 3.0], [0.0, 0.1, 0.7, 0.0]])
    labels = torch.tensor([1, 0, 1])
    assert primary_logits(logits, 3).shape == (3, 3)
    assert count_primary_correct(logits, labels, 3) == 2
    with pytest.raises(ValueError, match="primary classes"):
        primary_logits(logits, 5)


def test_tiny_paper_setup_on_built_in_data():
    primary = create_dataset("digits", split="train", style=True)
    secondary = create_dataset("synthetic", num_classes=4, train_size=300)
    loader = MixedLoader(primary, secondary, 2, primary_batch=50, secondary_per_k=60)
    x, y = next(iter(loader))
    assert x.shape == (170, 3, 32, 32) and loader.num_classes == 14
    assert torch.all(y[50:] >= 10) and len(loader) == 1347 // 50
