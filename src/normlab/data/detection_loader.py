"""Batches of detection samples streamed from disk: :class:`DetectionLoader`.

Images of a detection batch differ in size (the detector's ``GeneralizedRCNNTransform``
resizes, normalizes and pads them, and maps its predictions back to the original size), so
a batch is a list of images with a list of targets. Each sample is read, decoded, given its
target (boxes, labels, masks) and flipped in a ``torch.utils.data.DataLoader`` worker; the
main process moves it to the device as float32 in [0, 1].

Determinism (as :class:`~normlab.data.streaming.StreamingLoader`): epoch ``e``'s order,
aspect-ratio groups and sample keys come from ``seeded_generator(seed, e)``, and each
sample's flip and seed from a generator seeded with (that epoch's key, its index), so a
batch does not depend on the number of workers or processes, nor on where a pass started.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .coco import CocoSource
from .decode import decode_image
from .detection_transforms import hflip_sample
from .errors import DatasetError
from .seeding import seeded_generator
from .streaming import BadSample, WorkerLoader

__all__ = ["DetectionBatch", "DetectionLoader", "aspect_grouped_batches"]

DetectionBatch = tuple[list[torch.Tensor], list[dict[str, Any]]]
"""``(images, targets)``: float32 (3, H, W) images and their target dicts."""
_EPOCH_KEYS = 2**62
_SEEDS = 2**62

_Sample = tuple[torch.Tensor, dict[str, Any]] | BadSample


class _Samples(Dataset[_Sample]):
    """Decodes one image and its target per key ``(epoch key, index)``; never raises for a
    bad file (a worker traceback would end the run without naming it), returns a marker."""

    def __init__(self, source: CocoSource, masks: bool, flip_prob: float) -> None:
        self.source = source
        self.masks = masks
        self.flip_prob = flip_prob

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> _Sample:
        epoch_key, index = key
        generator = seeded_generator(epoch_key, index)
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        seed = int(torch.randint(_SEEDS, (1,), generator=generator))
        name = self.source.describe(index)
        try:
            image = decode_image(self.source.read(index), channels=3, name=name)
        except DatasetError as error:
            return BadSample(str(error.path), error.problem, error.hint)
        except OSError as error:
            problem = f"cannot read the file ({error.strerror or error})"
            return BadSample(name, problem, "Check the file and its disk")
        height, width = self.source.size(index)
        if tuple(image.shape[-2:]) != (height, width):
            return BadSample(
                name,
                f"the image is {image.shape[-2]}x{image.shape[-1]} (height x width) but "
                f"{self.source.annotation_file.name} says {height}x{width}",
                "Fix the image's size in the annotation file",
            )
        target = {
            k: torch.from_numpy(v) for k, v in self.source.target(index, masks=self.masks).items()
        }
        image = image.contiguous()
        if flip:
            image, target = hflip_sample(image, target)
        return image, {**target, "image_id": self.source.image_id(index), "seed": seed}


def _collate(samples: list[_Sample]) -> tuple[list[_Sample], list[BadSample]]:
    """The good samples as they are (images differ in size) and the bad ones."""
    return (
        [s for s in samples if not isinstance(s, BadSample)],
        [s for s in samples if isinstance(s, BadSample)],
    )


def aspect_grouped_batches(
    order: torch.Tensor, groups: np.ndarray, batch_size: int, drop_last: bool
) -> list[torch.Tensor]:
    """Batches of ``order`` whose samples share a group (torchvision's
    ``GroupedBatchSampler``): walking ``order``, a sample joins its group's open batch,
    which is emitted when full; with ``drop_last`` the incomplete batches left at the end
    are dropped, else they follow, by group.

    Args:
        order: int64 (N,) sample indices in visiting order.
        groups: (number of samples,) group of every sample.
        batch_size: Samples per batch.
        drop_last: Drop each group's incomplete last batch.
    """
    open_batches: dict[int, list[int]] = {}
    batches = []
    for index in order.tolist():
        batch = open_batches.setdefault(int(groups[index]), [])
        batch.append(index)
        if len(batch) == batch_size:
            batches.append(torch.tensor(batch, dtype=torch.int64))
            batch.clear()
    if not drop_last:
        left = (b for _, b in sorted(open_batches.items()) if b)
        batches += [torch.tensor(b, dtype=torch.int64) for b in left]
    return batches


class DetectionLoader(WorkerLoader):
    """Detection batches (images of their own sizes, targets) from a :class:`CocoSource`.

    Training visits the images in a seeded random order, in batches of one aspect-ratio
    group (landscape: width >= height, or portrait; :func:`aspect_grouped_batches`), so a
    padded batch wastes little; evaluation visits them in order, ungrouped, keeping the
    last incomplete batch.

    With :meth:`shard`, process ``rank`` of ``world_size`` gets the contiguous share
    (``tensor_split`` order) of each global batch and decodes only that share; ``len()``
    is the number of global batches either way.

    Bad files (unreadable, corrupt, or of another size than the annotation file says)
    never raise inside a worker. With ``on_bad_file="stop"`` the main process raises a
    one-line :class:`CorruptDatasetError` naming the file; with ``"skip"`` the sample is
    dropped from its batch and counted (:meth:`epoch_stats`).

    Args:
        source: The indexed split (:func:`~normlab.data.coco.index_coco`).
        batch_size: Images per global batch.
        train: Training (shuffled, grouped, flipped) or evaluation (in order).
        seed: Seed of order, groups, flips and sample seeds.
        device: Device of the images and targets.
        masks: Whether targets carry instance masks.
        flip_prob: Probability of a horizontal flip per training image.
        workers: DataLoader worker processes (0: decode in this process); they persist
            across epochs.
        drop_last: In training, drop the incomplete last batch (of each group).
        group_aspect: In training, batch images of one aspect-ratio group.
        on_bad_file: ``"stop"`` or ``"skip"`` (see above).

    Yields:
        ``(images, targets)``: lists of float32 (3, H, W) images in [0, 1] on ``device``
        (original size, flipped or not) and of dicts ``boxes`` (R, 4) float32 xyxy in
        pixels, ``labels`` (R,) int64 in 1..K, ``masks`` (R, H, W) uint8 (with
        ``masks``), ``image_id`` (int) and ``seed`` (int, of the sample's RoI sampling:
        a function of ``(seed, epoch, index)``).
    """

    def __init__(
        self,
        source: CocoSource,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        device: torch.device | str,
        masks: bool,
        flip_prob: float = 0.5,
        workers: int = 4,
        drop_last: bool = True,
        group_aspect: bool = True,
        on_bad_file: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__(seed, channels_last=False, batch_size=batch_size, device=device,
                         workers=workers, on_bad_file=on_bad_file)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.source = source
        self.train = train
        self.masks = masks
        self.flip_prob = flip_prob if train else 0.0
        self.drop_last = drop_last and train
        self.group_aspect = group_aspect and train
        self.groups = (source.aspect_ratios() >= 1.0).astype(np.int8)
        if self.drop_last and len(self) == 0:
            raise ValueError(
                f"{source.name} has {len(source)} images, fewer than one batch of "
                f"{batch_size} (per aspect-ratio group when grouped), and drop_last is set: "
                "no batch would be produced"
            )
        self._start_workers()

    def __len__(self) -> int:
        if self.group_aspect:
            counts = np.bincount(self.groups, minlength=2)
        else:
            counts = np.array([len(self.source)])
        if self.drop_last:
            return int((counts // self.batch_size).sum())
        return int((-(-counts // self.batch_size)).sum())

    def _data_loader(self) -> DataLoader[_Sample]:
        return DataLoader(
            _Samples(self.source, self.masks, self.flip_prob),
            batch_sampler=self._shares,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            prefetch_factor=2 if self.workers else None,
            persistent_workers=self.workers > 0,
            generator=torch.Generator(),  # its draws (worker base seeds) spare the global one
        )

    def _epoch(self, generator: torch.Generator) -> list[torch.Tensor]:
        """The epoch's global batches (sample indices)."""
        n = len(self.source)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if self.group_aspect:
            return aspect_grouped_batches(order, self.groups, self.batch_size, self.drop_last)
        return list(order[: len(self) * self.batch_size].split(self.batch_size))

    def _to_device(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[
        torch.Tensor, dict[str, Any]
    ]:
        moved = {
            k: v.to(self.device, non_blocking=self.pin_memory) if isinstance(v, torch.Tensor)
            else v
            for k, v in target.items()
        }
        pixels = image.to(self.device, non_blocking=self.pin_memory).to(torch.float32)
        return pixels.div_(255.0), moved

    def _batches(self, generator: torch.Generator, start: int) -> Iterator[Any]:
        batches = self._epoch(generator)
        epoch_key = int(torch.randint(_EPOCH_KEYS, (1,), generator=generator))
        for (samples,) in self._worker_batches(batches, epoch_key, start):
            moved = [self._to_device(image, target) for image, target in samples]
            yield [image for image, _ in moved], [target for _, target in moved]
