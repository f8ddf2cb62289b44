"""Mix-datasets batches of the IEBN paper (Table 3, "Mix-Datasets Attack").

Each training batch holds ``primary_batch`` images of the primary data set (the paper:
100 CIFAR-100 images) followed by ``k * secondary_per_k`` images of a secondary data set
(the paper: 120·k MNIST or Fashion-MNIST images resized to 32×32×3, k ∈ {2, 3}). The
secondary images disturb the batch statistics that BN-style layers compute.

Decisions (the paper does not state them):

- **Labels.** Both data sets are trained on: secondary labels are offset by the primary's
  number of classes, so the network has ``primary.num_classes + secondary.num_classes``
  outputs (:func:`mixed_num_classes`).
- **Test metric.** Accuracy on the primary test set alone, loaded with a plain
  :class:`~normlab.data.loader.DeviceLoader`, with the argmax taken over the primary
  classes only (:func:`count_primary_correct`), so a score is comparable to training on
  the primary data alone.
- **Epochs** are passes over the primary data (incomplete last batch dropped). Secondary
  samples are drawn from fresh random permutations, concatenated as needed.
- **Normalization.** By default both parts are normalized with the primary's mean/std:
  one input pipeline, the secondary images being foreign inputs to it (pass
  ``normalize_secondary="own"`` to use the secondary's statistics). Crop/flip augmentation
  applies to the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .augment import crop_flip, draw_crop_flip
from .image_data import ImageData
from .loader import Batch, EpochLoader, Normalizer

__all__ = ["MixedLoader", "mixed_num_classes", "primary_logits", "count_primary_correct"]


def mixed_num_classes(primary: ImageData, secondary: ImageData) -> int:
    """Number of network outputs for mixed training: primary plus secondary classes."""
    return primary.num_classes + secondary.num_classes


def primary_logits(logits: torch.Tensor, num_primary_classes: int) -> torch.Tensor:
    """The logits of the primary classes, the first ``num_primary_classes`` columns.

    Shape:
        logits: (B, K_total) → (B, num_primary_classes).
    """
    if logits.shape[1] < num_primary_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} columns, fewer than the {num_primary_classes} "
            "primary classes"
        )
    return logits[:, :num_primary_classes]


def count_primary_correct(
    logits: torch.Tensor, labels: torch.Tensor, num_primary_classes: int
) -> int:
    """How many predictions are right when the argmax runs over the primary classes only.

    Args:
        logits: Network outputs for primary test images.
        labels: Primary labels, in ``[0, num_primary_classes)``.
        num_primary_classes: Number of primary classes.

    Shape:
        logits: (B, K_total); labels: (B,).
    """
    predictions = primary_logits(logits, num_primary_classes).argmax(dim=1)
    return int((predictions == labels).sum())


class MixedLoader(EpochLoader):
    """Training batches mixing a primary and a secondary data set.

    Args:
        primary: The data set under test (the paper: CIFAR-100 train).
        secondary: The disturbing data set, with the primary's image shape (the paper:
            MNIST or Fashion-MNIST read with ``size=32, channels=3``).
        k: Multiplier of the secondary count; 0 gives primary-only batches.
        primary_batch: Primary images per batch (paper: 100).
        secondary_per_k: Secondary images per batch per unit of ``k`` (paper: 120).
        augment: Apply random crop (``padding``) and horizontal flip to every image.
        seed: Seed of shuffling and augmentation; with the epoch it fixes every batch.
        device: Device holding the data and the batches.
        channels_last: Return batches in channels-last memory format.
        padding: Zero padding of the random crop.
        normalize_secondary: ``"primary"`` (default) or ``"own"`` statistics for the
            secondary images.

    Yields:
        ``(x, y)``: float32 images (B, C, H, W) with B = primary_batch + k·secondary_per_k,
        primary images first; int64 labels, secondary ones offset by
        ``primary.num_classes``.
    """

    def __init__(
        self,
        primary: ImageData,
        secondary: ImageData,
        k: int = 2,
        *,
        primary_batch: int = 100,
        secondary_per_k: int = 120,
        augment: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        padding: int = 4,
        normalize_secondary: str = "primary",
    ) -> None:
        super().__init__(seed, channels_last)
        if primary.image_shape != secondary.image_shape:
            raise ValueError(
                f"mixed data sets need equal image shapes: {primary.name} has "
                f"{primary.image_shape}, {secondary.name} has {secondary.image_shape} "
                "(read MNIST-family data with size=32, channels=3 to mix with CIFAR)"
            )
        if normalize_secondary not in ("primary", "own"):
            raise ValueError(
                f"normalize_secondary must be 'primary' or 'own', got {normalize_secondary!r}"
            )
        if k < 0 or primary_batch < 1 or secondary_per_k < 0:
            raise ValueError("need k >= 0, primary_batch >= 1 and secondary_per_k >= 0")
        if len(primary) < primary_batch:
            raise ValueError(
                f"{primary.name} has {len(primary)} samples, fewer than primary_batch="
                f"{primary_batch}"
            )
        self.primary, self.secondary = primary, secondary
        self.primary_batch = primary_batch
        self.secondary_batch = k * secondary_per_k
        if self.secondary_batch and len(secondary) == 0:
            raise ValueError(f"{secondary.name} is empty but k={k} asks for secondary images")
        self.augment, self.padding = augment, padding
        self.device = torch.device(device)
        self.images = torch.cat([primary.images, secondary.images]).to(self.device)
        self.labels = torch.cat([primary.labels, secondary.labels + primary.num_classes])
        self.labels = self.labels.to(self.device)
        stats = primary if normalize_secondary == "primary" else secondary
        self.normalize_primary = Normalizer(primary.mean, primary.std, self.device)
        self.normalize_secondary = Normalizer(stats.mean, stats.std, self.device)

    @property
    def num_classes(self) -> int:
        """Number of network outputs: primary plus secondary classes."""
        return mixed_num_classes(self.primary, self.secondary)

    @property
    def num_primary_classes(self) -> int:
        """Number of primary classes, the columns the test metric reads."""
        return self.primary.num_classes

    def __len__(self) -> int:
        return len(self.primary) // self.primary_batch

    def _secondary_stream(self, generator: torch.Generator) -> torch.Tensor:
        needed = len(self) * self.secondary_batch
        n = len(self.secondary)
        passes = -(-needed // n) if needed else 0
        stream = [torch.randperm(n, generator=generator) for _ in range(passes)]
        return torch.cat(stream)[:needed] if stream else torch.empty(0, dtype=torch.int64)

    def _batches(self, generator: torch.Generator, start: int) -> Iterator[Batch]:
        steps, p = len(self), self.primary_batch
        primary = torch.randperm(len(self.primary), generator=generator)[: steps * p]
        secondary = self._secondary_stream(generator) + len(self.primary)
        plan = torch.cat([primary.view(steps, p), secondary.view(steps, self.secondary_batch)], 1)
        offsets, flips = draw_crop_flip(plan.numel(), self.padding, generator)
        offsets, flips = offsets.view(*plan.shape, 2), flips.view(plan.shape)
        plan, offsets, flips = (t.to(self.device) for t in (plan, offsets, flips))
        for step in range(start, steps):
            index = plan[step]
            images = self.images[index]
            if self.augment:
                images = crop_flip(images, offsets[step], flips[step], self.padding)
            x = torch.cat(
                [self.normalize_primary(images[:p]), self.normalize_secondary(images[p:])]
            )
            yield self._layout(x), self.labels[index]
