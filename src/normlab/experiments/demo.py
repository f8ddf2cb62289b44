"""``normlab demo``: what IEBN, SN and BIN do that BN, IN, LN and GN do not, in minutes on a CPU.

A small CIFAR-style ResNet is trained on the built-in ``digits`` data (scikit-learn's real
handwritten digits rendered at 32×32 with random colours, contrast and textures — no
download) with every normalizer, in the settings where the papers say they differ:

1. ``clean``: plain training, tested on held-out digits in the training styles;
2. ``small_batch``: BN statistics over 2 samples (a virtual batch), as in the SN paper's
   batch-size table ((8, 2) and smaller);
3. ``noise``: the IEBN paper's constant-noise attack (Na, Nb) = (0.8, 0.8) on every norm
   (Eqn. 11, Table 2);
4. ``unseen_styles``: the ``clean`` models tested on colour/texture styles never seen in
   training (BIN's style-invariance claim).

Every (setting, norm, seed) cell is written atomically to ``cells/`` under the output
folder as soon as it finishes, so a re-run skips finished cells (a crashed run resumes).
The report (``report.md`` and PNG figures, :mod:`normlab.report.demo`) is rebuilt from
those files alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from normlab.data import DeviceLoader, create_dataset
from normlab.errors import ConfigError
from normlab.models import CifarResNet
from normlab.models.resnet_blocks import BasicBlock
from normlab.norms import (
    list_norms,
    norm_summary,
    param_groups,
    post_step,
    set_noise,
    set_virtual_batch_size,
)
from normlab.tasks.classification import ClassificationTask
from normlab.train.engine import Trainer
from normlab.train.factory import Loaders
from normlab.train.records import pin_settings
from normlab.train.run_folder import FolderLock, write_json_atomic
from normlab.train.schedule import LRSchedule
from normlab.train.seed import seed_everything

__all__ = [
    "DESCRIPTION",
    "SETTINGS",
    "SETTING_TITLES",
    "DemoSettings",
    "accuracy_cells",
    "add_arguments",
    "read_cells",
    "run_demo",
    "settings_from_args",
]

SETTINGS = ("clean", "small_batch", "noise", "unseen_styles")
TRAINED_SETTINGS = ("clean", "small_batch", "noise")
EVAL_BATCH = 256
SETTING_TITLES = {
    "clean": "clean",
    "small_batch": "BN stats over 2 samples",
    "noise": "noise (0.8, 0.8)",
    "unseen_styles": "unseen styles",
}


@dataclass(frozen=True)
class DemoSettings:
    """Everything that fixes the demo's numbers (written to ``settings.json``).

    Attributes:
        norms: registry names to compare.
        seeds: seeds per cell (the table reports mean ± std over them).
        epochs: training epochs per cell.
        batch_size: training batch size.
        image_size: side of the rendered digits (the scans are 8×8; 16 keeps the demo
            fast on a CPU, 32 is the CIFAR size).
        blocks: residual units per stage of the CIFAR ResNet (1 gives an 8-layer net).
        widths: channels per stage.
        padding: zero padding per side of the training images' random crop (0: no
            augmentation).
        lr: peak learning rate (cosine schedule after a linear warm-up of one epoch, or a
            quarter of the epochs if fewer), SGD with Nesterov momentum 0.9.
        weight_decay: weight decay (BIN gates get none and 10× lr, as in the BIN paper).
        virtual_batch_size: samples per BN statistics group in ``small_batch``.
        noise: (Na, Nb) of the ``noise`` setting.
        device: training device.
        workers: cells trained at once, each in its own process with one torch thread
            (1: in this process, with torch's default threads).
    """

    norms: tuple[str, ...] = ("bn", "in", "ln", "gn", "sn", "iebn", "bin")
    seeds: int = 2
    epochs: int = 30
    batch_size: int = 64
    image_size: int = 16
    blocks: int = 1
    widths: tuple[int, int, int] = (16, 32, 64)
    padding: int = 4
    lr: float = 0.1
    weight_decay: float = 5e-4
    virtual_batch_size: int = 2
    noise: tuple[float, float] = (0.8, 0.8)
    device: str = "cpu"
    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"demo workers must be >= 1, got {self.workers}")
        if self.padding < 0:
            raise ConfigError(f"demo padding must be >= 0, got {self.padding}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoSettings:
        """The ``--quick`` preset: one seed, 5 epochs of batches of 128 at lr 0.4 on 12×12
        images without crop augmentation, cells trained by 2 worker processes.

        Sized to run in about half a minute on 2 CPU cores. A step at batch 128 is
        compute-bound, so the preset takes few steps on smaller images: the digits are 8×8
        scans, so 12×12 loses little, and without the random crop (4 pixels of a 12-pixel
        image) 5 epochs reach most of the full demo's clean accuracy. Two single-threaded
        processes use the cores better than one process with two threads. The short
        training keeps the settings' effects visible (BN statistics over 2 samples cost BN
        about 10 points) but leaves every norm except IEBN at chance under the noise attack.
        """
        preset = cls(seeds=1, epochs=5, batch_size=128, image_size=12, padding=0, lr=0.4,
                     workers=2)
        return replace(preset, **overrides)


@dataclass
class Cell:
    """One trained model: a setting, a norm and a seed, with its test accuracies."""

    setting: str
    norm: str
    seed: int
    test_acc: float
    unseen_styles_acc: float | None
    train_acc: float
    seconds: float
    norm_summary: list[dict[str, Any]] = field(default_factory=list)

    def path(self, root: Path) -> Path:
        return cell_path(root, self.setting, self.norm, self.seed)


def cell_path(root: Path, setting: str, norm: str, seed: int) -> Path:
    return root / "cells" / f"{setting}-{norm}-seed{seed}.json"


def _model(settings: DemoSettings, norm: str, setting: str) -> torch.nn.Module:
    model = CifarResNet(
        BasicBlock, settings.blocks, settings.widths, stem_width=settings.widths[0],
        num_classes=10, norm=norm,
    )
    if setting == "small_batch":
        set_virtual_batch_size(model, settings.virtual_batch_size)
    if setting == "noise":
        set_noise(model, settings.noise)
    return model


def demo_loaders(settings: DemoSettings, seed: int, data: dict[str, Any]) -> Loaders:
    """The cell's loaders: shuffled training digits (no flips: digits are not symmetric)
    and the held-out digits in the training styles."""
    device = torch.device(settings.device)
    train = DeviceLoader(data["train"], settings.batch_size, train=True, seed=seed,
                         device=device, augment=settings.padding > 0,
                         padding=settings.padding, flip=False)
    test = DeviceLoader(data["test"], EVAL_BATCH, train=False, device=device)
    return Loaders(train, test, num_classes=10, in_chans=3)


def train_cell(
    settings: DemoSettings, setting: str, norm: str, seed: int, data: dict[str, Any]
) -> Cell:
    """Train and evaluate one cell (see the module docstring for the settings).

    The classification task on the engine (:class:`~normlab.train.engine.Trainer`): SGD
    with Nesterov momentum over :func:`normlab.norms.param_groups`, a cosine schedule after
    a linear warm-up, :func:`normlab.norms.post_step` after every update, the engine's NaN
    stops; the test split is evaluated after the last epoch.

    Raises:
        NonFiniteLossError: The cell diverged (nothing is written for it).
    """
    start = time.perf_counter()
    device = torch.device(settings.device)
    seed_everything(seed)
    model = _model(settings, norm, setting).to(device)
    optimizer = torch.optim.SGD(
        param_groups(model, settings.lr, settings.weight_decay),
        lr=settings.lr, momentum=0.9, nesterov=True,
    )
    schedule = LRSchedule("cosine", float(settings.epochs),
                          warmup_epochs=min(1.0, settings.epochs / 4), warmup_start_factor=0.1)
    task = ClassificationTask()
    trainer = Trainer(model, optimizer, schedule, task=task, device=device,
                      post_step=post_step, progress=False)
    loaders = demo_loaders(settings, seed, data)
    row: dict[str, Any] = {}
    for epoch in range(settings.epochs):
        row = trainer.run_epoch(loaders, epoch, evaluate=epoch == settings.epochs - 1)
    unseen = None
    summary: list[dict[str, Any]] = []
    if setting == "clean":
        unseen_loader = DeviceLoader(data["test_unseen_styles"], EVAL_BATCH, train=False,
                                     device=device)
        unseen = trainer.evaluate(unseen_loader, task.eval_metric(loaders, device))["test_acc"]
        probe = next(iter(loaders.test))[0]
        summary = norm_summary(model.eval(), inputs=probe)
    return Cell(setting, norm, seed, row["test_acc"], unseen, row["train_acc"],
                time.perf_counter() - start, summary)


def load_demo_data(image_size: int) -> dict[str, Any]:
    """The styled digits: training styles (train, test) and unseen styles (test)."""
    return {
        split: create_dataset("digits", split=split, style=True, size=image_size)
        for split in ("train", "test", "test_unseen_styles")
    }


CellKey = tuple[str, str, int]
_WORKER_DATA: dict[str, Any] = {}


def _start_worker(image_size: int) -> None:
    """A demo worker process: one torch thread (the workers share the cores), its data."""
    torch.set_num_threads(1)
    _WORKER_DATA.update(load_demo_data(image_size))


def _train_in_worker(settings: DemoSettings, key: CellKey) -> Cell:
    setting, norm, seed = key
    return train_cell(settings, setting, norm, seed, _WORKER_DATA)


def train_cells(settings: DemoSettings, todo: Sequence[CellKey]) -> Iterator[Cell]:
    """Train the cells ``todo``, yielding each as it finishes: in this process, or with
    ``settings.workers > 1`` in that many ``spawn``-ed worker processes of one torch thread
    each (each cell seeds itself, so the order in which they run does not matter)."""
    if settings.workers == 1:
        data = load_demo_data(settings.image_size)
        for setting, norm, seed in todo:
            yield train_cell(settings, setting, norm, seed, data)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_start_worker,
                             initargs=(settings.image_size,)) as pool:
        futures = [pool.submit(_train_in_worker, settings, key) for key in todo]
        for future in as_completed(futures):
            yield future.result()


def run_demo(settings: DemoSettings, out: str | Path, *, progress: bool = True) -> Path:
    """Train every missing cell of ``out``; returns ``out`` (its report:
    :func:`normlab.report.demo.build_report`).

    The folder is locked while the demo runs (a second ``normlab demo --out`` of the same
    folder stops with a message naming this process); each cell is written as it finishes.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "demo folder"):
        pin_settings(asdict(settings), out / "settings.json", "a demo run")
        (out / "cells").mkdir(exist_ok=True)
        todo = [
            (setting, norm, seed)
            for seed in range(settings.seeds)
            for setting in TRAINED_SETTINGS
            for norm in settings.norms
            if not cell_path(out, setting, norm, seed).exists()
        ]
        total = len(TRAINED_SETTINGS) * len(settings.norms) * settings.seeds
        with _bar(todo, total, progress) as bar:
            for cell in train_cells(settings, todo):
                bar.set_postfix_str(f"{cell.setting} {cell.norm} seed {cell.seed}")
                bar.update()
                write_json_atomic(asdict(cell), cell.path(out))
    return out


def _bar(todo: Sequence[CellKey], total: int, progress: bool) -> Any:
    return tqdm(total=len(todo), initial=0, desc=f"demo ({total - len(todo)}/{total} "
                "cells already done)", unit="cell", disable=not progress, dynamic_ncols=True)


def read_cells(out: Path) -> list[dict[str, Any]]:
    """Every finished cell of a demo folder."""
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def accuracy_cells(cells: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """setting -> norm -> test accuracies over seeds (``unseen_styles`` from clean cells)."""
    table: dict[str, dict[str, list[float]]] = {s: {} for s in SETTINGS}
    for cell in sorted(cells, key=lambda c: c["seed"]):
        table[cell["setting"]].setdefault(cell["norm"], []).append(cell["test_acc"])
        if cell["unseen_styles_acc"] is not None:
            table["unseen_styles"].setdefault(cell["norm"], []).append(cell["unseen_styles_acc"])
    return table


DESCRIPTION = (
    "Train a small ResNet on built-in digits with every normalizer in four settings and "
    "write a report (no download; about half an hour on 2 CPU cores, --quick about half a "
    "minute)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``normlab demo``'s options to ``parser`` (a command of the ``normlab`` tree)."""
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 5 epochs at 12×12, 2 worker processes (about half a "
                             "minute)")
    parser.add_argument("--out", default="normlab-demo", help="report folder (%(default)s)")
    parser.add_argument("--seeds", type=int, help="seeds per cell (default 2; --quick 1)")
    parser.add_argument("--epochs", type=int, help="epochs per cell (default 30; --quick 5)")
    parser.add_argument("--workers", type=int,
                        help="cells trained at once, one process each (default 1; --quick 2)")
    parser.add_argument("--norms", nargs="+", choices=list_norms(), help="norms to compare")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The demo's settings from ``args`` (from :func:`add_arguments`): ``--quick``'s preset
    or the defaults, with the options given."""
    overrides: dict[str, Any] = {"device": args.device}
    for key in ("seeds", "epochs", "workers"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.norms:
        overrides["norms"] = tuple(args.norms)
    if args.quick:
        return DemoSettings.quick(**overrides)
    return replace(DemoSettings(), **overrides)
