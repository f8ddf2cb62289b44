"""Device-resident batch loader with seeded shuffling and batched augmentation.

The whole data set lives on the training device as uint8; each batch is gathered, augmented
and normalized there, as in airbench. An epoch's order and augmentation are a pure function
of ``(seed, epoch)``, so a run resumed at batch ``b`` of epoch ``e`` sees exactly the batches
it would have seen (:class:`EpochLoader`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .augment import crop_flip, draw_crop_flip
from .image_data import ImageData
from .seeding import seeded_generator

__all__ = ["DeviceLoader", "Normalizer", "EpochLoader"]

Batch = tuple[torch.Tensor, torch.Tensor]


class Normalizer:
    """Converts uint8 images to normalized float32: ``(x / 255 - mean) / std`` per channel.

    Args:
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel standard deviation in [0, 1] units.
        device: Device of the batches.

    Shape:
        (B, C, H, W) uint8 → (B, C, H, W) float32 (memory format kept).
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device | str
    ) -> None:
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # one new float tensor, normalized in place: a second full-size output costs page
        # faults on every batch (a 224² batch of 64 is 38 MB)
        x = images.to(torch.float32, copy=True)
        return torch.addcmul(self.shift, x, self.scale, out=x)


class EpochLoader:
    """Base of the loaders: the position (epoch, batch) shared by every loader.

    A pass over the loader starts at its position, batch ``b`` of epoch ``e``, and yields
    batches ``b, b + 1, ...`` of that epoch; every yielded batch moves the position on, so
    :meth:`state_dict` taken after ``k`` batches of epoch ``e`` (counted from its start) says
    ``(e, k)``, and after the epoch's last batch ``(e + 1, 0)``. A pass that is abandoned
    partway leaves the position inside the epoch; the next pass continues there.
    :meth:`set_epoch` moves to the start of an epoch (e.g. at every epoch of training) and
    :meth:`load_state_dict` to a saved position (a run resumed mid-epoch).

    An epoch draws all its randomness from a generator seeded with ``(seed, epoch)``, and
    subclasses implement :meth:`_batches`, which yields the epoch's batches from ``start``
    on without producing the skipped ones. So resuming at ``(e, k)`` yields exactly the
    batches ``k, k + 1, ...`` of the uninterrupted epoch ``e``.

    Args:
        seed: Seed of the loader's randomness.
        channels_last: Whether batches come in channels-last memory format.
    """

    def __init__(self, seed: int, channels_last: bool) -> None:
        self.seed = seed
        self.epoch = 0
        self.batch = 0
        self.channels_last = channels_last

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass produce the batches of ``epoch``, from its first batch."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch, self.batch = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """The loader's position: the next batch is batch ``batch`` of epoch ``epoch``."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict` (e.g. from a checkpoint).

        A state without ``"batch"`` (saved before positions inside an epoch existed)
        means the start of its epoch.

        Raises:
            ValueError: The state was saved with another seed, whose batches differ, or
                its batch lies beyond this loader's epoch (the data or batch size changed).
        """
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"loader state was saved with seed {state['seed']} but this loader has seed "
                f"{self.seed}; its batches would differ"
            )
        epoch, batch = int(state["epoch"]), int(state.get("batch", 0))
        if not 0 <= batch <= len(self):
            raise ValueError(
                f"loader state is at batch {batch} of epoch {epoch}, but an epoch of this "
                f"loader has {len(self)} batches; the data or the batch size changed"
            )
        self.set_epoch(epoch)
        if batch == len(self):
            self.set_epoch(epoch + 1)
        else:
            self.batch = batch

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self.batch
        return self._counted(epoch, start, self._batches(seeded_generator(self.seed, epoch), start))

    def _counted(self, epoch: int, start: int, batches: Iterator[Batch]) -> Iterator[Batch]:
        """``batches`` (of ``epoch``, from ``start``), moving the position on each one."""
        steps = len(self)
        done = start
        for batch in batches:
            done += 1
            self.epoch, self.batch = (epoch, done) if done < steps else (epoch + 1, 0)
            yield batch
        self.epoch, self.batch = epoch + 1, 0

    def _batches(self, generator: torch.Generator, start: int) -> Iterator[Batch]:
        """Batches ``start, start + 1, ...`` of the epoch whose randomness is ``generator``.

        Implementations draw the whole epoch's random numbers (so they do not depend on
        ``start``) but produce only the batches from ``start`` on.
        """
        raise NotImplementedError

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)


class DeviceLoader(EpochLoader):
    """Batches of an :class:`ImageData` kept on the training device.

    Args:
        data: The data set; its uint8 images are copied to ``device`` once.
        batch_size: Samples per batch.
        train: Training mode; sets the defaults of ``augment``, ``drop_last`` and ``shuffle``.
        augment: Random crop with ``padding`` zero pixels per side and, with ``flip``, a
            random horizontal flip, per sample. Default: ``train``.
        drop_last: Drop the last incomplete batch. Default: ``train``.
        shuffle: Visit samples in a random order. Default: ``train``.
        seed: Seed of shuffling and augmentation; with the epoch it fixes every batch.
        device: Device holding the data and the batches.
        channels_last: Return batches in channels-last memory format.
        padding: Zero padding of the random crop.
        flip: Whether augmentation includes the horizontal flip.

    Yields:
        ``(x, y)``: normalized float32 images (B, C, H, W) and int64 labels (B,), on
        ``device``.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        train: bool,
        augment: bool | None = None,
        drop_last: bool | None = None,
        shuffle: bool | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        padding: int = 4,
        flip: bool = True,
    ) -> None:
        super().__init__(seed, channels_last)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.padding = padding
        self.flip = flip
        if self.drop_last and len(data) < batch_size:
            raise ValueError(
                f"{data.name or 'the data set'} has {len(data)} samples, fewer than one batch of "
                f"{batch_size}, and drop_last is set: no batch would be produced"
            )
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.normalize = Normalizer(data.mean, data.std, self.device)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self, generator: torch.Generator, start: int) -> Iterator[Batch]:
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        offsets, flips = draw_crop_flip(n, self.padding, generator, self.flip)
        order, offsets, flips = (t.to(self.device) for t in (order, offsets, flips))
        size = self.batch_size
        for first in range(start * size, len(self) * size, size):
            index = order[first : first + size]
            images = self.images[index]
            if self.augment:
                images = crop_flip(images, offsets[index], flips[index], self.padding)
            yield self._layout(self.normalize(images)), self.labels[index]
