"""Streaming batches from data on disk: :class:`SampleSource` and :class:`StreamingLoader`.

For data sets too large for memory (ImageNet): a source knows its samples' labels and
encoded bytes (an image folder, :func:`~normlab.data.folder_index.index_image_folder`, or
WebDataset shards); the loader reads, decodes and augments each sample in
``torch.utils.data.DataLoader`` worker processes, and normalizes whole batches on the device.

Determinism: epoch ``e``'s order is a permutation drawn from
``seeded_generator(seed, e)``, and every sample's augmentation runs under
torch's CPU generator seeded from ``(seed, e, index)`` (through that epoch's
generator), so a batch does not depend on the number of workers, on the number of training
processes, or on where in the epoch a pass started.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from .decode import decode_image
from .errors import CorruptDatasetError, DatasetError
from .folder_index import SKIP_HINT
from .loader import Batch, EpochLoader, Normalizer
from .seeding import seeded_generator

__all__ = ["BadSample", "SampleSource", "StreamingLoader", "Transform", "WorkerLoader"]

_EPOCH_KEYS = 2**62


class SampleSource(Protocol):
    """A streamed data set: labels and encoded files of samples ``0 .. len - 1``.

    Implementations keep paths and labels in compact arrays (a few bytes per sample, never
    a Python object per sample), since worker processes hold a copy.

    Attributes:
        name: Data set name.
        classes: Class names; label ``k`` is ``classes[k]``.
    """

    name: str
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def label(self, i: int) -> int:
        """Class index of sample ``i``."""
        ...

    def read(self, i: int) -> bytes:
        """The encoded file of sample ``i`` (JPEG, PNG, ...); raises a
        :class:`~normlab.data.errors.DatasetError` or ``OSError`` if it cannot be read."""
        ...

    def describe(self, i: int) -> str:
        """Where sample ``i`` lives, for messages (a path, or ``shard.tar:member``)."""
        ...


class Transform(Protocol):
    """A per-sample transform: uint8 (C, H, W) -> uint8 (C, h, w), random from torch's
    global generator, with the decode-size hint ``min_size`` (the shorter side the decoded
    image must keep, or ``None``); the presets of :mod:`normlab.data.presets` are ones."""

    min_size: int | None

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


class BadSample(NamedTuple):
    """A sample that could not be read or decoded, as a worker reports it."""

    path: str
    problem: str
    hint: str


_Sample = tuple[torch.Tensor, int] | BadSample
_Collated = tuple[torch.Tensor | None, torch.Tensor, list[BadSample]]


class _Samples(Dataset[_Sample]):
    """Decodes and transforms one sample per key ``(epoch key, index)``; never raises for a
    bad file (a worker traceback would end the run without naming it), returns a marker."""

    def __init__(self, source: SampleSource, transform: Transform | None, channels: int) -> None:
        self.source = source
        self.transform = transform
        self.channels = channels
        self.min_size = getattr(transform, "min_size", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> _Sample:
        epoch_key, index = key
        try:
            image = decode_image(
                self.source.read(index),
                channels=self.channels,
                min_size=self.min_size,
                name=self.source.describe(index),
            )
        except DatasetError as error:
            return BadSample(str(error.path), error.problem, error.hint)
        except OSError as error:
            problem = f"cannot read the file ({error.strerror or error})"
            return BadSample(self.source.describe(index), problem, "Check the file and its disk")
        if self.transform is not None:
            # transforms draw from the CPU default generator; seeding only it is ~100x
            # cheaper than torch.manual_seed (which also queues the CUDA seeding), and its
            # state is restored for a caller decoding in its own process (workers=0)
            state = torch.get_rng_state()
            torch.default_generator.manual_seed(seeded_generator(epoch_key, index).initial_seed())
            try:
                image = self.transform(image)
            finally:
                torch.set_rng_state(state)
        return image, self.source.label(index)


class _Collate:
    """Stacks a worker's good samples into one uint8 batch in the loader's memory format
    (so normalizing it on the device writes in order) and lists the bad ones."""

    def __init__(self, channels_last: bool) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, samples: list[_Sample]) -> _Collated:
        good = [s for s in samples if not isinstance(s, BadSample)]
        bad = [s for s in samples if isinstance(s, BadSample)]
        labels = torch.tensor([label for _, label in good], dtype=torch.int64)
        if not good:
            return None, labels, bad
        first = good[0][0]
        images = torch.empty(
            (len(good), *first.shape), dtype=first.dtype, memory_format=self.memory_format
        )
        for row, (image, _) in zip(images, good):
            row.copy_(image)
        return images, labels, bad


class _Shares:
    """Batch sampler: this process's contiguous share of each global batch of the epoch,
    from batch ``start`` on, as keys ``(epoch key, index)``."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.batches: list[torch.Tensor] = []
        self.epoch_key = 0
        self.start = 0

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches[self.start :]:
            share = batch.tensor_split(self.world_size)[self.rank]
            yield [(self.epoch_key, i) for i in share.tolist()]


_Loader = TypeVar("_Loader", bound="WorkerLoader")


class WorkerLoader(EpochLoader):
    """Base of the loaders that decode samples in DataLoader worker processes: each pass
    gives process ``rank`` of ``world_size`` its contiguous share (``tensor_split`` order)
    of every global batch, and applies the bad-file policy.

    A subclass ends its constructor with :meth:`_start_workers`; its ``_data_loader``
    builds a DataLoader whose batch sampler is ``self._shares`` and whose collate function
    returns a tuple whose last item lists the batch's :class:`BadSample` markers; its
    ``_batches`` iterates :meth:`_worker_batches`.

    Args:
        seed: Seed of the loader's randomness.
        channels_last: Whether batches come in channels-last memory format.
        batch_size: Samples per global batch.
        device: Device of the batches.
        workers: DataLoader worker processes (0: decode in this process).
        on_bad_file: ``"stop"`` or ``"skip"``.
        pin_memory: Pin batches for the copy to the device. Default: whether ``device``
            is CUDA.
        rank: This process's index among ``world_size`` training processes.
        world_size: Number of training processes sharing each global batch.
    """

    _shares: _Shares
    _loader: DataLoader[Any]

    def __init__(
        self,
        seed: int,
        channels_last: bool,
        *,
        batch_size: int,
        device: torch.device | str,
        workers: int,
        on_bad_file: Literal["stop", "skip"],
        pin_memory: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, channels_last)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be non-negative, got {workers}")
        if on_bad_file not in ("stop", "skip"):
            raise ValueError(f"on_bad_file must be 'stop' or 'skip', got {on_bad_file!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.workers = workers
        self.on_bad_file = on_bad_file
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.rank, self.world_size = rank, world_size
        self.bad_files = 0
        """Bad files skipped so far (``on_bad_file="skip"``)."""

    def _data_loader(self) -> DataLoader[Any]:
        raise NotImplementedError

    def _start_workers(self) -> None:
        """Make this process's batch sampler and DataLoader (workers start on a pass)."""
        self._shares = _Shares(self.rank, self.world_size)
        self._loader = self._data_loader()

    def close(self) -> None:
        """Stop this loader's worker processes now; a later pass starts new ones.

        Workers that outlive their loader stop when Python's cycle collector finds them,
        and then only after torch's 5-second join timeout each (measured here), stalling
        whatever code happens to run at that moment; a finished run closes its loaders.
        """
        workers = self._loader._iterator  # the persistent workers, once a pass started them
        if isinstance(workers, _MultiProcessingDataLoaderIter):
            workers._shutdown_workers()
        self._loader = self._data_loader()

    def shard(self: _Loader, rank: int, world_size: int) -> _Loader:
        """The loader of process ``rank`` of ``world_size``, at this loader's position.

        Raises:
            ValueError: If this loader is itself a shard, or ``rank`` is out of range.
        """
        if self.world_size != 1:
            raise ValueError(f"this loader is already shard {self.rank} of {self.world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        loader = copy.copy(self)  # same settings and position; its own sampler and workers
        loader.rank, loader.world_size, loader.bad_files = rank, world_size, 0
        loader._start_workers()
        return loader

    def epoch_stats(self) -> dict[str, int]:
        """``{"bad_files": n}``: bad files skipped so far."""
        return {"bad_files": self.bad_files}

    def _worker_batches(
        self, batches: list[torch.Tensor], epoch_key: int, start: int
    ) -> Iterator[tuple[Any, ...]]:
        """The collated shares of ``batches[start:]`` (global batches of sample indices)
        without their bad-sample lists: with ``on_bad_file="stop"`` a bad sample raises a
        one-line :class:`CorruptDatasetError` naming it, with ``"skip"`` it is counted."""
        self._shares.batches, self._shares.epoch_key, self._shares.start = (
            batches, epoch_key, start
        )
        collated = iter(self._loader)
        for *batch, bad in collated:
            if bad and self.on_bad_file == "stop":
                # the error's traceback holds this frame: drop the workers now, not when a
                # garbage collection finds the cycle (the next pass starts new ones)
                del collated
                self._loader = self._data_loader()
                first = bad[0]
                raise CorruptDatasetError(first.path, first.problem, f"{first.hint}, {SKIP_HINT}")
            self.bad_files += len(bad)
            yield tuple(batch)


class StreamingLoader(WorkerLoader):
    """Batches decoded from a :class:`SampleSource` in DataLoader worker processes.

    Each sample is read and decoded (:func:`~normlab.data.decode.decode_image`, at reduced
    size when ``transform.min_size`` allows), transformed as uint8, and batched in a
    worker; the uint8 batch is pinned (CUDA), copied to ``device`` and normalized there.

    With ``world_size`` K > 1, every pass yields the contiguous share (``tensor_split``
    order) of each global batch for process ``rank`` — the samples
    :class:`~normlab.train.parallel.ShardedLoader` would give it — decoding only that share.
    ``len()`` is the number of global batches either way.

    Bad files (unreadable, corrupt, truncated, not an image, a decompression bomb) never
    raise inside a worker. With ``on_bad_file="stop"`` the main process raises a one-line
    :class:`CorruptDatasetError` naming the file; with ``"skip"`` the sample is dropped from
    its batch (which is then smaller) and counted in :attr:`bad_files`. A share left
    without samples (all bad, or a last global batch smaller than K) is an empty batch
    (0, C, h, w) with the previous batch's image size.

    Memory: the source's arrays and one epoch's order (8 bytes per sample), plus
    ``workers * prefetch_factor`` batches in flight; nothing grows with the data set beyond
    that.

    Args:
        source: The samples.
        batch_size: Samples per global batch.
        train: Training mode; sets the defaults of ``shuffle`` and ``drop_last``.
        transform: Per-sample uint8 transform with ``min_size`` (a preset), or ``None``
            (images must then share one size).
        mean: Per-channel normalization mean in [0, 1] units.
        std: Per-channel normalization std in [0, 1] units.
        shuffle: Visit samples in a random order. Default: ``train``.
        drop_last: Drop the last incomplete global batch. Default: ``train``.
        seed: Seed of order and augmentation; with the epoch it fixes every batch.
        device: Device of the batches.
        workers: DataLoader worker processes (0: decode in this process). Workers persist
            across epochs.
        pin_memory: Pin the uint8 batches for the copy to the device. Default: whether
            ``device`` is CUDA.
        prefetch_factor: Batches each worker prepares ahead.
        on_bad_file: ``"stop"`` or ``"skip"`` (see above).
        channels_last: Return batches in channels-last memory format.
        rank: This process's index among ``world_size`` training processes.
        world_size: Number of training processes sharing each global batch.

    Yields:
        ``(x, y)``: normalized float32 images (B, C, H, W) and int64 labels (B,) on
        ``device``; B is this process's share, less skipped bad files.
    """

    def __init__(
        self,
        source: SampleSource,
        batch_size: int,
        *,
        train: bool,
        transform: Transform | None,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        workers: int = 4,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
        on_bad_file: Literal["stop", "skip"] = "stop",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, channels_last, batch_size=batch_size, device=device,
                         workers=workers, on_bad_file=on_bad_file, pin_memory=pin_memory,
                         rank=rank, world_size=world_size)
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 channels each, got {mean} and {std}")
        self.source = source
        self.transform = transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(source) < batch_size:
            raise ValueError(
                f"{source.name} has {len(source)} samples, fewer than one batch of "
                f"{batch_size}, and drop_last is set: no batch would be produced"
            )
        self.prefetch_factor = prefetch_factor
        self.normalize = Normalizer(self.mean, self.std, self.device)
        self._image_shape: tuple[int, ...] = (len(self.mean), 0, 0)
        self._start_workers()

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _data_loader(self) -> DataLoader[_Sample]:
        return DataLoader(
            _Samples(self.source, self.transform, len(self.mean)),
            batch_sampler=self._shares,
            num_workers=self.workers,
            collate_fn=_Collate(self.channels_last),
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.workers else None,
            persistent_workers=self.workers > 0,
            generator=torch.Generator(),  # its draws (worker base seeds) spare the global one
        )

    def _batches(self, generator: torch.Generator, start: int) -> Iterator[Batch]:
        n = len(self.source)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        epoch_key = int(torch.randint(_EPOCH_KEYS, (1,), generator=generator))
        batches = list(order[: len(self) * self.batch_size].split(self.batch_size))
        for images, labels in self._worker_batches(batches, epoch_key, start):
            if images is None:
                images = torch.empty((0, *self._image_shape), dtype=torch.uint8)
            self._image_shape = tuple(images.shape[1:])
            x = images.to(self.device, non_blocking=self.pin_memory)
            y = labels.to(self.device, non_blocking=self.pin_memory)
            yield self._layout(self.normalize(x)), y
