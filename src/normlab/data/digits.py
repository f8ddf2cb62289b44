"""Built-in data set: the handwritten digits bundled with scikit-learn, no download.

The 1 797 real 8×8 digit scans of ``sklearn.datasets.load_digits`` are upsampled (bicubic)
to ``size`` × ``size`` and returned as 3-channel images.

Splits (fixed, stratified, seed-independent: 75 % / 25 % of each class):

- ``"train"``: 1 347 images, plain (white on black) or, with ``style=True``, painted with
  seen styles (:data:`~normlab.data.styles.SEEN_STYLES`);
- ``"test"``: the other 450 images, plain or painted with seen styles (fresh draws);
- ``"test_unseen_styles"``: the same 450 test images painted with unseen styles
  (:data:`~normlab.data.styles.UNSEEN_STYLES`: other hues, other textures), whatever
  ``style`` is — the test of style invariance.

Normalization statistics are those of the ``"train"`` split of the same configuration.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .image_data import ImageData, channel_stats
from .seeding import seeded_generator
from .styles import SEEN_STYLES, UNSEEN_STYLES, render_styles
from .textures import resolve_texture_source

__all__ = ["load_digits_data", "digits_split_indices", "DIGITS_SPLITS"]

DIGITS_SPLITS = ("train", "test", "test_unseen_styles")
"""Valid ``split`` arguments of :func:`load_digits_data`."""

_TEST_FRACTION = 0.25
_SPLIT_SEED = 1797


@functools.lru_cache(maxsize=1)
def _load_scans() -> tuple[np.ndarray, np.ndarray]:
    # optional dependency at import time: scikit-learn takes seconds to import, and only
    # reading the digits needs it (not `import normlab` or `normlab --help`)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scans, labels = bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    scans.flags.writeable = labels.flags.writeable = False
    return scans, labels


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified train/test split of the digits, as sorted index arrays.

    Each class's indices are permuted with a fixed seed and its first 25 % (rounded) go to
    the test split.
    """
    rng = np.random.default_rng(_SPLIT_SEED)
    test = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[: round(_TEST_FRACTION * members.size)])
    test_index = np.sort(np.concatenate(test))
    train_index = np.setdiff1d(np.arange(labels.size), test_index)
    return train_index, test_index


def _masks(scans: np.ndarray, size: int) -> torch.Tensor:
    upsampled = F.interpolate(
        torch.from_numpy(scans)[:, None],
        size=(size, size),
        mode="bicubic",
        align_corners=False,
    )
    return upsampled[:, 0].clamp_(0.0, 1.0)


def _render(split: str, style: bool, textures: str, size: int, seed: int) -> ImageData:
    scans, labels = _load_scans()
    train_index, test_index = digits_split_indices(labels)
    index = train_index if split == "train" else test_index
    masks = _masks(scans[index], size)
    split_key = DIGITS_SPLITS.index(split)
    if split == "test_unseen_styles":
        images = render_styles(masks, UNSEEN_STYLES, seeded_generator(seed, split_key), textures)
    elif style:
        images = render_styles(masks, SEEN_STYLES, seeded_generator(seed, split_key), textures)
    else:
        images = (masks * 255.0).round_().to(torch.uint8)[:, None].expand(-1, 3, -1, -1)
    return ImageData(
        images=images.contiguous(),
        labels=torch.from_numpy(labels[index]),
        num_classes=10,
        classes=[str(d) for d in range(10)],
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        name=f"digits{'-styled' if style else ''}/{split}",
    )


def load_digits_data(
    split: str = "train",
    *,
    style: bool = False,
    textures: str = "auto",
    size: int = 32,
    seed: int = 0,
) -> ImageData:
    """The scikit-learn handwritten digits as 3×``size``×``size`` images.

    Deterministic: the same arguments always give identical tensors (for a given texture
    source; ``textures="auto"`` uses scikit-image's sample images when it is installed).

    Args:
        split: One of :data:`DIGITS_SPLITS` (see the module docstring).
        style: Paint ``"train"`` and ``"test"`` with random seen styles (colours, textures,
            contrast) instead of white on black.
        textures: ``"auto"``, ``"skimage"`` or ``"procedural"``, see
            :func:`normlab.data.textures.resolve_texture_source`.
        size: Output height and width (at most 256).
        seed: Seed of the style draws; the train/test split does not depend on it.

    Returns:
        10 classes, normalized with the statistics of this configuration's train split.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid: {', '.join(DIGITS_SPLITS)}")
    if not 8 <= size <= 256:
        raise ValueError(f"digits size must lie in [8, 256], got {size}")
    styled = style or split == "test_unseen_styles"
    source = resolve_texture_source(textures) if styled else textures
    data = _render(split, style, source, size, seed)
    train = data if split == "train" else _render("train", style, source, size, seed)
    mean, std = channel_stats(train.images)
    return replace(data, mean=mean, std=std)
