"""Data-parallel training over several processes (one per device), as started by torchrun.

``torchrun --nproc-per-node K -m normlab train -c CONFIG`` starts K processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; any
launcher that sets them works. Each process then:

- joins the default process group (NCCL on CUDA, gloo on CPU) and uses ``cuda:LOCAL_RANK``;
- builds the same data, model and optimizer from the same seed, and takes its contiguous
  share of every global batch (``data.batch_size`` stays the *global* batch, so a config
  trains the same way on any number of processes);
- pools the batch statistics of BN, IEBN, SN and BIN over all processes
  (:func:`normlab.to_sync`, unless ``train.sync_stats`` is false) and averages gradients
  with ``DistributedDataParallel``;
- sums its training and test counts with the others, so every process sees the metrics
  of the whole batch and the whole test set.

The process group stays joined when :func:`~normlab.train.train` returns (a script may
train again); ``normlab train`` leaves it at the end, and scripts should call
:func:`leave_process_group` before exiting. Only the first process (rank 0) writes the run
folder. With synced statistics, K
processes train like one process with the whole batch (up to float summation order).

A process whose share of a batch is empty (a last test batch smaller than K) still takes
part in synced statistics, with zero samples (see ``BatchStatistics.empty_forward``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["SINGLE", "Parallel", "ShardedLoader", "from_environment", "leave_process_group"]


@dataclass(frozen=True)
class Parallel:
    """This process's place among the training processes.

    Attributes:
        rank: Index of this process (0 writes the run folder).
        world_size: Number of processes.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a global batch (first axis)."""
        if not self.enabled:
            return batch
        return batch.tensor_split(self.world_size)[self.rank]

    def sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor summed over the processes (one collective for all of them)."""
        if not self.enabled:
            return list(tensors)
        flat = torch.stack([t.to(torch.float64) for t in tensors])
        dist.all_reduce(flat)
        return [v.to(t.dtype) for v, t in zip(flat, tensors)]

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` holds on every process (the same answer everywhere)."""
        if not self.enabled:
            return bool(flag)
        (count,) = self.sum(flag.to(torch.int64))
        return int(count) == self.world_size

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. until rank 0 has written its files)."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Parallel()


def from_environment(device: torch.device) -> tuple[Parallel, torch.device]:
    """Join the process group described by the launcher's environment variables.

    Returns ``(SINGLE, device)`` when ``WORLD_SIZE`` is unset or 1. Otherwise initializes
    the default process group (unless already initialized) with NCCL for CUDA and gloo
    for CPU, and returns this process's :class:`Parallel` and its device (``cuda:LOCAL_RANK``
    for CUDA).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Parallel(rank=dist.get_rank(), world_size=dist.get_world_size()), device


def leave_process_group() -> bool:
    """Destroy the default process group if there is one; return whether this process was
    rank 0 (True without a group), i.e. whether it should print the run's result."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    main = dist.get_rank() == 0
    dist.destroy_process_group()
    return main


class ShardedLoader:
    """A loader of global batches that yields this process's share of each.

    ``len()``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` are the wrapped
    loader's, so epochs, resumption and augmentation stay exactly those of one process.
    """

    def __init__(self, loader: Any, parallel: Parallel) -> None:
        self.loader = loader
        self.parallel = parallel

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield self.parallel.shard(x), self.parallel.shard(y)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "parallel"):
            raise AttributeError(name)
        return getattr(self.loader, name)
