"""``normlab bench data``: the streaming image pipeline against torchvision's ImageFolder.

On a folder of JPEGs at ImageNet-like sizes (generated: random crops of the built-in photos
at ~500x375 with noise, a few classes; or a user's folder), one run measures side by side:

- ``streaming``: :class:`~normlab.data.StreamingLoader` over
  :func:`~normlab.data.index_image_folder` with a transform preset (decoded with Pillow,
  at reduced size where the preset's ``min_size`` allows; uint8 batches normalized in the
  main process, on the device);
- ``torchvision``: ``torchvision.datasets.ImageFolder`` (Pillow decoding) +
  ``torch.utils.data.DataLoader``, with the same preset on the uint8 tensor
  (``PILToTensor`` first: torchvision's tensor kernels are faster than its PIL ones here),
  then ``ToDtype(float32, scale=True)`` and ``Normalize`` in the workers, as torchvision's
  reference scripts do;

with the same worker count, batch size, prefetching and pinning (CUDA only). Each
pipeline lives in its own fresh process (with its persistent DataLoader workers), so
their memory is measured apart; they take turns: one epoch's batches in ``rounds``
segments each, alternating which goes first, the waiting one paused (``SIGSTOP``, workers
included) so that it neither competes for the CPU nor prefetches batches for its next
turn. The throughput ratio is the median of per-round ratios (paired, so a slow stretch
of the machine hits both). Peak memory is sampled from ``/proc`` over the process and its
DataLoader workers: RSS summed (counts pages shared by the forked workers once per
process) and PSS summed (shares them out: the group's real footprint).

The index's memory is measured on a folder of 200,000 empty files
(:func:`~normlab.data.folder_index.index_memory`), next to ImageFolder's list of paths.

Measured on the 2-core CPU machine (5,000 generated JPEGs, median 485x384, 66 KiB;
batch 64, 2 workers, ``imagenet_train`` at 224, 12 turns): 1.35x torchvision with the
streaming side decoding JPEGs through ``torchvision.io.decode_jpeg`` (paired-ratio spread
14 %, the machine busy with other work), 0.98x (spread 6 %, quiet) when both sides decoded
with Pillow; at 112, where Pillow's draft decodes at half size, 1.23-1.31x. Index of
200,000 empty files: 5.7 MiB of arrays, +11.4-12.0 MiB resident (ImageFolder: +36.7-39.7
MiB).
"""

from __future__ import annotations

import io
import mmap
import multiprocessing
import os
import queue
import shutil
import signal
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlab.bench.measure import Timing
from normlab.data.folder_index import index_image_folder, index_memory, write_empty_folder
from normlab.data.image_folder import IMAGENET_STATS
from normlab.data.photos import BUILTIN_CONTENT, load_photo
from normlab.data.presets import transform_preset
from normlab.data.streaming import StreamingLoader

__all__ = [
    "DataBenchResult",
    "IndexMemory",
    "PipelineResult",
    "bench_data",
    "write_bench_folder",
]

STREAMING = "streaming"
FULL_DECODE = "streaming, full-size decode"
TORCHVISION = "torchvision"
_SAMPLE_SECONDS = 0.02
_PSS_SECONDS = 0.25
_MIB = 2**20


@dataclass
class PipelineResult:
    """One pipeline's medians over the rounds.

    Attributes:
        pipeline: ``streaming``, ``streaming, full-size decode`` or ``torchvision``.
        images_per_s: Median images per second over the rounds (after the first batch).
        spread: Relative inter-quartile spread of the per-round ratios.
        ratio: Median per-round throughput ratio to torchvision (1.0 for torchvision).
        peak_rss_mib: Highest RSS summed over the process and its workers.
        peak_pss_mib: Highest PSS summed likewise (None where /proc lacks smaps_rollup).
        data_wait_s: Seconds the main process spent blocked on the loader, all rounds.
        first_batch_s: Seconds to the first batch (workers starting included).
        images: Images timed, all rounds.
        round_ratios: The per-round throughput ratios to torchvision, in round order.
    """

    pipeline: str
    images_per_s: float
    spread: float
    ratio: float
    peak_rss_mib: float
    peak_pss_mib: float | None
    data_wait_s: float
    first_batch_s: float
    images: int
    round_ratios: list[float]


@dataclass
class IndexMemory:
    """Memory of indexing a folder of empty files: ours against ImageFolder's list.

    Attributes:
        files: Files in the folder.
        index_mib: Bytes held by the index's arrays.
        rss_increase_mib: Resident memory the index keeps.
        peak_increase_mib: Peak resident memory while indexing.
        imagefolder_rss_increase_mib: Resident memory ``torchvision.datasets.ImageFolder``
            keeps for the same folder.
    """

    files: int
    index_mib: float
    rss_increase_mib: float
    peak_increase_mib: float
    imagefolder_rss_increase_mib: float


@dataclass
class DataBenchResult:
    """Everything ``normlab bench data`` measured."""

    folder: str
    images: int
    mean_file_kib: float
    median_image: str
    preset: str
    size: int
    workers: int
    batch_size: int
    device: str
    rounds: int
    pipelines: list[PipelineResult] = field(default_factory=list)
    index: IndexMemory | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _photos() -> list[np.ndarray]:
    """The built-in photos as uint8 (H, W, 3) arrays; random noise when scikit-image's
    samples are not installed."""
    photos = []
    for name in BUILTIN_CONTENT:
        try:
            pixels = load_photo(name)
        except Exception:  # noqa: BLE001 - no scikit-image: fall back to noise images
            continue
        photos.append(pixels.mul(255).round().byte().permute(1, 2, 0).numpy())
    if not photos:
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
        photos = [np.kron(p, np.ones((8, 8, 1), dtype=np.uint8)) for p in small]
    return photos


def _bench_image(
    photo: np.ndarray, width: int, height: int, tint: np.ndarray, rng: np.random.Generator
) -> bytes:
    """A JPEG (quality 90) of a random crop of ``photo`` resized to ``width`` x ``height``,
    tinted per class, with pixel noise (so it compresses like a photograph)."""
    from PIL import Image  # optional dependency: Pillow

    h, w = photo.shape[:2]
    side = rng.uniform(0.4, 1.0)
    crop_w = max(8, int(min(w, h * width / height) * side))
    crop_h = max(8, int(crop_w * height / width))
    top = int(rng.integers(0, h - crop_h + 1))
    left = int(rng.integers(0, w - crop_w + 1))
    crop = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    pixels = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR), np.int16)
    noise = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    pixels = np.clip(pixels + tint + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_bench_folder(
    out: str | Path,
    images: int = 5000,
    *,
    classes: int = 5,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
) -> Path:
    """Write ``out/train/c<k>/<n>.JPEG``: ``images`` JPEGs of about ``size`` (width,
    height; one in four is portrait, sides vary by up to 10 %), ``classes`` classes.

    Written into a temporary folder renamed to ``out`` at the end.

    Raises:
        FileExistsError: If ``out`` exists.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; pass a new folder or reuse it with --folder")
    rng = np.random.default_rng(seed)
    photos = _photos()
    tints = rng.integers(-30, 31, (classes, 1, 1, 3), dtype=np.int16)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for k in range(classes):
        (partial / "train" / f"c{k}").mkdir(parents=True)
    for n in range(images):
        width, height = (np.array(size) * rng.uniform(0.9, 1.1)).astype(int)
        if rng.random() < 0.25:
            width, height = height, width
        photo = photos[int(rng.integers(len(photos)))]
        data = _bench_image(photo, int(width), int(height), tints[n % classes], rng)
        (partial / "train" / f"c{n % classes}" / f"{n:06d}.JPEG").write_bytes(data)
    os.replace(partial, out)
    return out


def _folder_stats(train: Path) -> tuple[int, float, str]:
    """Image count, mean file size (KiB) and median width x height of a training folder."""
    from PIL import Image  # optional dependency: Pillow

    files = sorted(p for p in train.glob("*/*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{train}: no images in class sub-folders")
    sizes = []
    for path in files[:: max(1, len(files) // 200)]:
        with Image.open(path) as image:
            sizes.append(image.size)
    widths, heights = zip(*sizes)
    median = f"{int(statistics.median(widths))}x{int(statistics.median(heights))}"
    return len(files), sum(p.stat().st_size for p in files) / len(files) / 1024, median


def _process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return pids


_PAGE_KIB = mmap.PAGESIZE // 1024


def _rss_kib(pid: int) -> int | None:
    """Resident KiB of one process (cheap: ``/proc/<pid>/statm``); None when it ended."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return None


def _pss_kib(pid: int) -> int | None:
    """Proportional KiB of one process (``/proc/<pid>/smaps_rollup``, which walks the
    process's page tables: ~5 ms for a process that imported torch); None when it cannot
    be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if line[:1].isalpha())
        return int(fields["Pss"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


class _PeakMemory:
    """The peak summed RSS and PSS (KiB) of a process tree, sampled from a thread while
    :attr:`active` is set: RSS every 20 ms, PSS (costly to read) every 0.25 s and once when
    sampling pauses. ``pss`` is None when a process's PSS cannot be read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss = 0
        self.pss: int | None = 0
        self.active = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        self.active.set()
        self._thread.join()

    def sample(self, pss: bool) -> None:
        """Take one reading of the tree (with PSS when ``pss``); processes that ended (no
        resident pages) do not count."""
        live = [(pid, rss) for pid in _process_tree(self.pid) if (rss := _rss_kib(pid))]
        self.rss = max(self.rss, sum(rss for _, rss in live))
        if pss and self.pss is not None and live:
            readings = [_pss_kib(pid) for pid, _ in live]
            if readings[0] is None:  # no smaps_rollup on this system
                self.pss = None
            else:
                self.pss = max(self.pss, sum(p for p in readings if p is not None))

    def _run(self) -> None:
        last_pss = 0.0
        while not self._stop.is_set():
            self.active.wait()
            now = time.monotonic()
            self.sample(pss=now - last_pss >= _PSS_SECONDS)
            last_pss = now if now - last_pss >= _PSS_SECONDS else last_pss
            self._stop.wait(_SAMPLE_SECONDS)


@dataclass(frozen=True)
class _Spec:
    pipeline: str
    folder: str
    preset: str
    size: int
    workers: int
    batch_size: int
    device: str
    cache_dir: str


def _torchvision_loader(spec: _Spec) -> torch.utils.data.DataLoader:
    from torchvision.datasets import ImageFolder  # optional dependency: torchvision
    from torchvision.transforms import v2  # optional dependency: torchvision

    mean, std = IMAGENET_STATS
    transform = v2.Compose([
        v2.PILToTensor(),
        transform_preset(spec.preset, size=spec.size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])
    torch.manual_seed(0)
    return torch.utils.data.DataLoader(
        ImageFolder(str(Path(spec.folder) / "train"), transform=transform),
        batch_size=spec.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=spec.workers,
        pin_memory=spec.device.startswith("cuda"),
        prefetch_factor=2 if spec.workers else None,
        persistent_workers=spec.workers > 0,
    )


def _streaming_loader(spec: _Spec) -> StreamingLoader:
    transform = transform_preset(spec.preset, size=spec.size)
    if spec.pipeline == FULL_DECODE:
        transform.min_size = None
    mean, std = IMAGENET_STATS
    return StreamingLoader(
        index_image_folder(spec.folder, "train", cache_dir=spec.cache_dir),
        spec.batch_size, train=True, transform=transform, mean=mean, std=std,
        device=spec.device, workers=spec.workers,
    )


def _segment(batches: Iterator[Any], count: int, device: torch.device) -> dict[str, float]:
    """Time the next ``count`` batches."""
    images, wait = 0, 0.0
    begin = time.perf_counter()
    for _ in range(count):
        asked = time.perf_counter()
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        wait += time.perf_counter() - asked
        images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"seconds": time.perf_counter() - begin, "images": images, "wait": wait}


class _Batches:
    """An endless iterator of a loader's batches, epoch after epoch."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.batches = iter(loader)

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)


def _child(start_method: str, spec: _Spec, commands: Any, results: Any) -> None:
    """A pipeline's process: builds the loader and reports ready, then times the number of
    batches each command asks for (``None`` ends it); the first command's time is the
    first batch (the workers starting)."""
    multiprocessing.set_start_method(start_method, force=True)
    try:
        device = torch.device(spec.device)
        loader: Any = (
            _torchvision_loader(spec) if spec.pipeline == TORCHVISION else _streaming_loader(spec)
        )
        batches = _Batches(loader)
        results.put(("ok", {}))
        while (count := commands.get()) is not None:
            results.put(("ok", _segment(batches, count, device)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", traceback.format_exc()))


def _child_index(start_method: str, root: str, commands: Any, results: Any) -> None:
    from torchvision.datasets import ImageFolder  # optional dependency: torchvision

    try:
        memory = index_memory(root, "train")
        before = _rss_kib(os.getpid()) or 0
        dataset = ImageFolder(str(Path(root) / "train"), allow_empty=True)
        memory["imagefolder_rss_increase"] = ((_rss_kib(os.getpid()) or 0) - before) * 1024
        del dataset
        results.put(("ok", memory))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", traceback.format_exc()))


class _Child:
    """A fresh (spawned) process running ``target(start_method, *args, commands, results)``,
    its memory sampled from start to end, paused (SIGSTOP, with its DataLoader workers)
    while it is not asked for anything.

    A spawned process would also spawn its DataLoader workers (each importing torch anew),
    so the target restores this process's start method (``fork`` on Linux) first.
    """

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.commands, self.results = context.Queue(), context.Queue()
        start_method = multiprocessing.get_start_method()
        self.process = context.Process(
            target=target, args=(start_method, *args, self.commands, self.results)
        )
        self.process.start()
        self.memory = _PeakMemory(self.process.pid or 0)
        self.memory.active.set()
        self.paused = False

    def _signal(self, signal_number: int) -> None:
        for pid in _process_tree(self.process.pid or 0):
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                continue

    def ask(self, command: Any) -> dict[str, Any]:
        """Resume the process, send ``command``, wait for its result, pause it again."""
        if self.paused:
            self.memory.active.set()
            self._signal(signal.SIGCONT)
        if command is not None:
            self.commands.put(command)
        while True:
            try:
                status, value = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(
                        f"the benchmark process died (exit status {self.process.exitcode})"
                    ) from None
        if status != "ok":
            self.close()
            raise RuntimeError(f"the benchmark process failed:\n{value}")
        self._signal(signal.SIGSTOP)
        self.memory.active.clear()
        self.memory.sample(pss=True)
        self.paused = True
        result: dict[str, Any] = value
        return result

    def close(self) -> None:
        """End the process (resumed first) and stop sampling its memory."""
        if self.paused:
            self._signal(signal.SIGCONT)
            self.paused = False
        if self.process.is_alive():
            self.commands.put(None)
            self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.memory.close()


def _summary(
    name: str, runs: list[dict[str, Any]], base: list[dict[str, Any]], child: _Child,
    first: float,
) -> PipelineResult:
    per_image = Timing([r["seconds"] / r["images"] for r in runs])
    ratio = Timing([b["seconds"] / b["images"] for b in base]).ratio_to(per_image)
    pss = child.memory.pss
    return PipelineResult(
        pipeline=name,
        images_per_s=1 / per_image.median,
        spread=ratio.spread,
        ratio=ratio.median,
        peak_rss_mib=child.memory.rss / 1024,
        peak_pss_mib=None if pss is None else pss / 1024,
        data_wait_s=sum(r["wait"] for r in runs),
        first_batch_s=first,
        images=sum(int(r["images"]) for r in runs),
        round_ratios=ratio.seconds,
    )


def _index_memory(files: int, scratch: Path) -> IndexMemory:
    classes = 100
    root = write_empty_folder(scratch / "empty", classes, max(1, files // classes))
    child = _Child(_child_index, str(root))
    memory = child.ask(None)
    child.close()
    shutil.rmtree(root)
    return IndexMemory(
        files=memory["images"],
        index_mib=memory["index_bytes"] / _MIB,
        rss_increase_mib=memory["rss_increase"] / _MIB,
        peak_increase_mib=memory["peak_increase"] / _MIB,
        imagefolder_rss_increase_mib=memory["imagefolder_rss_increase"] / _MIB,
    )


def bench_data(
    folder: str | Path | None = None,
    *,
    images: int = 5000,
    workers: int = 2,
    batch_size: int = 64,
    size: int = 224,
    preset: str = "imagenet_train",
    rounds: int = 6,
    device: str = "cpu",
    full_decode: bool = False,
    index_files: int = 200_000,
    image_size: tuple[int, int] = (500, 375),
    progress: Callable[[str], None] | None = None,
) -> DataBenchResult:
    """Measure the streaming pipeline against ImageFolder + DataLoader (module docstring).

    Args:
        folder: An image folder with a ``train`` split to reuse; when it has none (or for
            ``None``: a temporary folder, deleted afterwards), ``images`` JPEGs of about
            ``image_size`` are generated into it first.
        images: Images to generate.
        workers: DataLoader workers of each pipeline.
        batch_size: Batch size of each pipeline (the last incomplete batch is dropped).
        size: Output image side of the preset.
        preset: Transform preset both pipelines apply.
        rounds: Turns of each pipeline; together they take one epoch's batches.
        device: Where batches go (``cuda``: pinned memory and the copy included).
        full_decode: Also time the streaming pipeline without reduced-size decoding.
        index_files: Empty files for the index-memory measurement (0: skip it).
        image_size: (width, height) of the generated images.
        progress: Called with a line before each step.
    """
    say = progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="normlab-bench-data-") as scratch:
        root = Path(folder) if folder is not None else Path(scratch) / "images"
        if not (root / "train").is_dir():
            say(f"writing {images} JPEGs of about {image_size[0]}x{image_size[1]} to {root}")
            if root.exists() and not any(root.iterdir()):
                root.rmdir()
            write_bench_folder(root, images, size=image_size)
        count, kib, median = _folder_stats(root / "train")
        result = DataBenchResult(
            folder=str(root), images=count, mean_file_kib=kib, median_image=median,
            preset=preset, size=size, workers=workers, batch_size=batch_size, device=device,
            rounds=rounds,
        )
        names = [STREAMING, TORCHVISION] + ([FULL_DECODE] if full_decode else [])
        cache = str(Path(scratch) / "cache")
        children = {}
        try:
            for name in names:
                spec = _Spec(name, str(root), preset, size, workers, batch_size, device, cache)
                children[name] = _Child(_child, spec)
            for child in children.values():
                child.ask(None)
            say("starting the pipelines (first batch)")
            first = {name: children[name].ask(1)["seconds"] for name in names}
            per_round = max(1, count // batch_size // rounds)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    say(f"round {r + 1}/{rounds}: {name}, {per_round} batches")
                    runs[name].append(children[name].ask(per_round))
        finally:
            for child in children.values():
                child.close()
        result.pipelines = [
            _summary(name, runs[name], runs[TORCHVISION], children[name], first[name])
            for name in names
        ]
        if index_files:
            say(f"index memory: {index_files} empty files")
            result.index = _index_memory(index_files, Path(scratch))
    return result
