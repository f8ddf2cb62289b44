"""Procedural class-conditional images of any size, deterministic from a seed.

Each class has a prototype: a sum of four random plane waves per channel (random frequency
of 1-3 cycles per image, orientation, phase and amplitude). A sample is its class
prototype, cyclically shifted by a random offset, scaled by a random contrast (0.5-1),
shifted by a random brightness (±0.1), plus Gaussian pixel noise. Classes are told apart by
their frequency content, which shifting does not change, so the task is learnable by a
convolutional network and made harder by ``noise``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .image_data import ImageData, channel_stats
from .seeding import seeded_generator

__all__ = ["make_synthetic", "SYNTHETIC_SPLITS"]

SYNTHETIC_SPLITS = ("train", "test")
"""Valid ``split`` arguments of :func:`make_synthetic`."""

_WAVES = 4
_CHUNK = 2048


def _prototypes(num_classes: int, channels: int, size: int, seed: int) -> torch.Tensor:
    generator = seeded_generator(seed, len(SYNTHETIC_SPLITS))
    shape = (num_classes, channels, _WAVES)
    frequency = 1.0 + 2.0 * torch.rand(shape, generator=generator)
    angle = 2 * math.pi * torch.rand(shape, generator=generator)
    phase = 2 * math.pi * torch.rand(shape, generator=generator)
    amplitude = torch.rand(shape, generator=generator)
    grid = torch.arange(size, dtype=torch.float32) / size
    y, x = grid[:, None], grid[None, :]
    fy = (frequency * torch.sin(angle))[..., None, None]
    fx = (frequency * torch.cos(angle))[..., None, None]
    waves = torch.cos(2 * math.pi * (fy * y + fx * x) + phase[..., None, None])
    patterns = (amplitude[..., None, None] * waves).sum(2)
    peak = patterns.abs().flatten(1).amax(1).clamp_min(1e-6)
    return patterns / peak[:, None, None, None]


def _samples(
    prototypes: torch.Tensor, labels: torch.Tensor, noise: float, generator: torch.Generator
) -> torch.Tensor:
    n = labels.numel()
    _, channels, size, _ = prototypes.shape
    shifts = torch.randint(size, (2, n), generator=generator)
    contrast = 0.5 + 0.5 * torch.rand(n, generator=generator)
    brightness = 0.2 * torch.rand(n, generator=generator) - 0.1
    axis = torch.arange(size)
    images = torch.empty((n, channels, size, size), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        rows = ((shifts[0, part, None] + axis) % size)[:, :, None]
        cols = ((shifts[1, part, None] + axis) % size)[:, None, :]
        shifted = prototypes[labels[part]].permute(0, 2, 3, 1)
        shifted = shifted[torch.arange(rows.shape[0])[:, None, None], rows, cols].permute(
            0, 3, 1, 2
        )
        pixels = (
            0.5
            + brightness[part, None, None, None]
            + 0.35 * contrast[part, None, None, None] * shifted
        )
        pixels += noise * torch.randn(shifted.shape, generator=generator)
        images[part] = pixels.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return images


def _generate(
    split: str, num_classes: int, size: int, channels: int, count: int, noise: float, seed: int
) -> ImageData:
    generator = seeded_generator(seed, SYNTHETIC_SPLITS.index(split))
    labels = torch.arange(count) % num_classes
    labels = labels[torch.randperm(count, generator=generator)]
    prototypes = _prototypes(num_classes, channels, size, seed)
    return ImageData(
        images=_samples(prototypes, labels, noise, generator),
        labels=labels,
        num_classes=num_classes,
        classes=[f"class_{k}" for k in range(num_classes)],
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        name=f"synthetic/{split}",
    )


def make_synthetic(
    split: str = "train",
    *,
    num_classes: int = 10,
    size: int = 32,
    channels: int = 3,
    train_size: int = 5000,
    test_size: int = 1000,
    noise: float = 0.1,
    seed: int = 0,
) -> ImageData:
    """Generate a class-conditional image data set.

    Deterministic: the same arguments give identical tensors. Prototypes depend only on
    ``(num_classes, channels, size, seed)``, so both splits share them; samples of each split
    come from their own random stream. Classes are balanced (counts differ by at most one).

    Args:
        split: ``"train"`` or ``"test"``.
        num_classes: Number of classes.
        size: Image height and width.
        channels: Number of channels.
        train_size: Number of training images.
        test_size: Number of test images.
        noise: Standard deviation of the Gaussian pixel noise, in [0, 1] units.
        seed: Seed of prototypes and samples.

    Returns:
        uint8 images normalized with the statistics of the train split.
    """
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; valid: train, test")
    for name, value in [("num_classes", num_classes), ("size", size), ("channels", channels)]:
        if value < 1:
            raise ValueError(f"synthetic {name} must be positive, got {value}")
    if train_size < 0 or test_size < 0 or noise < 0:
        raise ValueError("synthetic train_size, test_size and noise must be non-negative")
    args = (num_classes, size, channels)
    count = train_size if split == "train" else test_size
    data = _generate(split, *args, count, noise, seed)
    train = data if split == "train" else _generate("train", *args, train_size, noise, seed)
    mean, std = channel_stats(train.images)
    return replace(data, mean=mean, std=std)
