"""Timing and memory measurements for the benchmarks.

Candidates are timed in interleaved rounds (one call of each per round) so that machine
noise hits all of them alike. Ratios are paired: each round's time is divided by the
baseline's time in the same round and the median of those ratios is reported, so a slow
stretch of the machine cancels out instead of landing on whichever candidate ran in it.
Results are medians with an inter-quartile spread.
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "Timing",
    "dram_gbps",
    "interleaved_times",
    "keep_freed_memory",
    "peak_bandwidth_gbps",
    "peak_bytes",
    "saved_bytes",
]


class Timing:
    """Median and relative inter-quartile spread of a list of seconds (or of ratios)."""

    def __init__(self, seconds: Sequence[float]) -> None:
        self.seconds = list(seconds)
        ordered = sorted(self.seconds)
        self.median = statistics.median(ordered)
        quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
        self.spread = (quartiles[2] - quartiles[0]) / self.median if self.median else 0.0

    def ratio_to(self, base: Timing) -> Timing:
        """The per-round ratios ``self / base`` of two interleaved timings, as a Timing."""
        pairs = zip(self.seconds, base.seconds, strict=True)
        return Timing([mine / theirs for mine, theirs in pairs])


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

K = TypeVar("K", bound=Hashable)  # what names the timed calls


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process; True if it agreed.

    By default glibc maps every buffer above a threshold afresh and unmaps it when freed,
    so each training step pays page faults for its activations and its time wanders by
    10-20 % from round to round. Raising the mmap threshold to its maximum (32 MiB) and
    the trim threshold to 2 GiB makes CPU timings steady; it changes nothing on CUDA or on
    other C libraries (returns False there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


def dram_gbps(memory_clock_khz: float, bus_width_bits: int) -> float:
    """Peak DRAM bandwidth in GB/s of a double-data-rate memory (GDDR and HBM alike):
    two transfers per clock over the whole bus."""
    return 2 * memory_clock_khz * 1e3 * bus_width_bits / 8 / 1e9


def peak_bandwidth_gbps(device: torch.device) -> float | None:
    """The CUDA device's peak memory bandwidth in GB/s, or None when it cannot be read.

    Uses the memory clock and bus width from torch's device properties where this torch
    exposes them, else from Triton's driver; None on CPU.
    """
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock = getattr(props, "memory_clock_rate", None)
    width = getattr(props, "memory_bus_width", None)
    if not (clock and width):
        try:
            from triton.runtime import driver  # optional dependency: triton

            index = device.index if device.index is not None else torch.cuda.current_device()
            info = driver.active.utils.get_device_properties(index)
            clock, width = info["mem_clock_rate"], info["mem_bus_width"]
        except Exception:  # no triton, or a driver without these fields
            return None
    return dram_gbps(clock, width)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    calls: Mapping[K, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[K, Timing]:
    """Time every call ``repeats`` times in interleaved rounds after ``warmup`` rounds."""
    seconds: dict[K, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            _synchronize(device)
            start = time.perf_counter()
            call()
            _synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in seconds.items()}


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward during ``forward()``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated beyond what was live before ``step()`` (forward + backward).

    CUDA uses the caching allocator's counters; the CPU replays the profiler's
    allocation events in time order.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage and not e.cpu_children),
        key=lambda e: e.time_range.start,
    )
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak
