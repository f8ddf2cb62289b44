"""Run an experiment's grid: one ordinary run folder per (cell, seed), resumable and skippable.

Layout under the output folder::

    OUT/<experiment>/<scale>/<row>--<column>/seed<k>/   a normlab run folder (config.yaml,
                                                         metrics.jsonl, summary.json, *.pt)

A sweep looks at each folder before it trains: a completed run is skipped, a run that has a
checkpoint is resumed from it (so a crashed or interrupted sweep continues where it stopped),
a run that stopped on a non-finite loss is left as it is (it would diverge again), and a
folder with only the files of an unfinished first epoch is started afresh (a folder that
holds a checkpoint is never deleted). A folder made with a different config (other than
its data roots) is an error, never overwritten.

A sweep holds the lock of its folder ``OUT/<experiment>/<scale>`` from planning to its last
run, so a second sweep of the same experiment into the same ``--out`` stops at once with
one line naming the first one's process, instead of deleting or training over its cells.

Cells of one experiment may read different data sets (a CIFAR-10 and a CIFAR-100 column, or
a mix of CIFAR-100 and MNIST): ``data_roots`` gives one local root per data set name
(``normlab experiment run NAME --data cifar10=PATH cifar100=PATH``), which every cell that
reads that data set (as ``data.name`` or as ``data.mix.dataset``) takes as its root.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normlab.data.registry import dataset_info, list_datasets
from normlab.experiments.registry import Experiment, label_slug
from normlab.train import (
    Builders,
    Config,
    ConfigError,
    NonFiniteLossError,
    config_to_dict,
    load_config,
    resume,
    train,
)
from normlab.train.errors import RunDirError
from normlab.train.records import differences
from normlab.train.run_folder import BEST, CONFIG, LAST, LOCK, PREV, FolderLock, RunFolder
from normlab.train.validation import unknown_name

__all__ = [
    "PlannedRun",
    "check_data_roots",
    "plan_runs",
    "run_experiment",
    "run_status",
    "sweep_folder",
    "with_data_roots",
]

COMPLETED, DIVERGED, RESUMABLE, NEW = "completed", "diverged", "resumable", "new"


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a sweep: a table cell at one seed."""

    cell: tuple[str, str]
    seed: int
    folder: Path
    config: Config


def cell_folder(out: str | Path, experiment: Experiment, scale: str, cell: tuple[str, str]) -> Path:
    """The folder that holds one cell's seeds."""
    return sweep_folder(out, experiment, scale) / f"{label_slug(cell[0])}--{label_slug(cell[1])}"


def sweep_folder(out: str | Path, experiment: Experiment, scale: str) -> Path:
    """The folder of one sweep (an experiment at one scale): its cells, report and lock."""
    return Path(out) / experiment.name / scale


def with_data_roots(config: Config, data_roots: Mapping[str, str]) -> Config:
    """``config`` with ``data.root`` (and ``data.mix.root``) taken from ``data_roots`` for
    the data sets it names there; the others keep theirs."""
    data = config.data
    mix = data.mix
    if mix is not None and mix.dataset in data_roots:
        mix = dataclasses.replace(mix, root=data_roots[mix.dataset])
    root = data_roots.get(data.name, data.root)
    if root == data.root and mix is data.mix:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(data, root=root, mix=mix))


def _datasets(config: Config) -> list[str]:
    """The data sets a run reads: ``data.name``, then ``data.mix.dataset``."""
    mix = config.data.mix
    return [config.data.name, *([mix.dataset] if mix is not None else [])]


def plan_runs(
    experiment: Experiment,
    *,
    scale: str,
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    data_roots: Mapping[str, str] | None = None,
) -> list[PlannedRun]:
    """Every run of the sweep, cell by cell (reading order), each with its resolved config.

    ``overrides`` apply to every cell after the cell's own (e.g. ``train.epochs=1``);
    each run's ``train.seed`` is its seed. ``data_roots`` maps data set names to local
    roots (:func:`with_data_roots`); every name must be a data set some cell reads.

    Raises:
        ConfigError: A cell's config does not resolve (the message names the cell), or a
            name of ``data_roots`` is no data set or one that no cell reads.
    """
    roots = dict(data_roots or {})
    for name in roots:
        if name not in list_datasets():
            raise unknown_name(f"--data {name}", name, "data set", list_datasets(),
                               "normlab list datasets")
    planned = []
    for cell, config_name, cell_overrides in experiment.runs(scale):
        for seed in seeds:
            items = [*cell_overrides, *overrides, f"train.seed={seed}"]
            try:
                config = with_data_roots(load_config(config_name, items), roots)
            except ConfigError as exc:
                raise ConfigError(f"{experiment.name} cell {cell}: {exc}") from exc
            folder = cell_folder(out, experiment, scale, cell) / f"seed{seed}"
            planned.append(PlannedRun(cell, seed, folder, config))
    read = sorted({name for run in planned for name in _datasets(run.config)})
    unused = [name for name in roots if name not in read]
    if unused:
        raise ConfigError(
            f"--data {unused[0]}: no cell of {experiment.name} at scale {scale} reads "
            f"{unused[0]!r}; its cells read {', '.join(read)}"
        )
    return planned


def check_data_roots(planned: Sequence[PlannedRun]) -> None:
    """Every local data set the runs read has a root that exists.

    Raises:
        ConfigError: One line naming the first cell whose data set has no root or a root
            that does not exist, and the ``--data NAME=PATH`` that fixes it.
    """
    for run in planned:
        data, mix = run.config.data, run.config.data.mix
        pairs = [(data.name, data.root), *([(mix.dataset, mix.root)] if mix else [])]
        for name, root in pairs:
            if not dataset_info(name).needs_root or (root is not None and Path(root).exists()):
                continue
            where = "no root" if root is None else f"root {root!r}, which does not exist"
            sample = (" (`normlab data sample OUT` writes a small ImageNet-format folder)"
                      if name == "imagefolder" else "")
            raise ConfigError(
                f"cell {run.cell[0]} / {run.cell[1]} reads data set {name!r} with {where}; "
                f"give its folder with --data {name}=PATH{sample}"
            )


def _comparable(config: Config) -> dict[str, Any]:
    """What must agree between a folder's run and the planned one: everything but where
    it writes and where its data lie (a data set moved to another folder is the same)."""
    data = config_to_dict(config)
    data.pop("run", None)
    data.pop("description", None)
    data["data"].pop("root", None)
    if data["data"].get("mix"):
        data["data"]["mix"].pop("root", None)
    return data


def run_status(run: PlannedRun) -> str:
    """What a sweep would do with ``run``'s folder: ``completed`` or ``diverged`` (skip),
    ``resumable`` (continue from its checkpoint) or ``new`` (train from the start).

    Raises:
        ConfigError: The folder holds a run with a different config.
    """
    folder = run.folder
    if not (folder / CONFIG).is_file():
        return NEW
    found = differences(_comparable(run.config), _comparable(load_config(folder / CONFIG)))
    if found:
        shown = "; ".join(f"{key}: {stored!r} in the folder, {asked!r} asked"
                          for key, stored, asked in found[:5])
        raise ConfigError(
            f"{folder} holds a run with another config ({shown}); "
            "give the sweep another --out, or delete that folder to train it again"
        )
    summary = RunFolder(folder).read_summary()
    if summary.get("status") == "completed":
        return COMPLETED
    if summary.get("status") == "stopped_nonfinite_loss":
        return DIVERGED
    if (folder / LAST).is_file() or (folder / PREV).is_file():
        return RESUMABLE
    return NEW


def _clear_unfinished(folder: Path) -> None:
    """Empty a run folder that holds only the files of an unfinished first epoch.

    Raises:
        RunDirError: Another process writes the folder, or it holds a checkpoint.
    """
    with FolderLock(folder):
        kept = [name for name in (LAST, PREV, BEST) if (folder / name).is_file()]
        if kept:
            raise RunDirError(
                f"{folder} holds {', '.join(kept)}; a sweep never deletes a checkpoint "
                f"(resume it with `normlab train --resume {folder}`)"
            )
        for child in folder.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_experiment(
    experiment: Experiment,
    *,
    scale: str = "tiny",
    seeds: Sequence[int] = (0,),
    out: str | Path = "experiments",
    overrides: Sequence[str] = (),
    data_roots: Mapping[str, str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    builders: Builders | None = None,
) -> dict[str, int]:
    """Train every run of ``experiment`` that is not finished yet.

    Prints one line per run (with the sweep's ETA from the runs trained so far) and, with
    ``progress``, each run's epoch bar. A run that stops on a non-finite loss is recorded
    as diverged and the sweep goes on. ``data_roots`` gives each data set's root
    (:func:`plan_runs`). ``builders`` replace the registries' (for tests).

    Returns:
        How many runs were ``trained``, ``resumed``, ``skipped`` and ``diverged``.

    Raises:
        ConfigError: A cell's config does not resolve, a local data set has no root or a
            missing one (:func:`check_data_roots`), or a folder holds another config
            (checked for every run before anything trains).
        RunDirError: Another process runs this sweep (the message names it).
    """
    planned = plan_runs(experiment, scale=scale, seeds=seeds, out=out, overrides=overrides,
                        data_roots=data_roots)
    check_data_roots(planned)
    folder = sweep_folder(out, experiment, scale)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    with FolderLock(folder, "sweep folder"):
        return _sweep(planned, experiment, progress=progress, log=log, builders=builders)


def _sweep(
    planned: list[PlannedRun],
    experiment: Experiment,
    *,
    progress: bool,
    log: Callable[[str], None],
    builders: Builders | None,
) -> dict[str, int]:
    """The body of :func:`run_experiment`, under the sweep's lock; each finished run's
    line shows its top-1 accuracy, or the first of the experiment's metrics."""
    shown = next(iter(experiment.metrics.values()), "final_acc")
    statuses = [run_status(run) for run in planned]
    todo = sum(status in (NEW, RESUMABLE) for status in statuses)
    counts = {"trained": 0, "resumed": 0, "skipped": 0, "diverged": 0}
    spent: list[float] = []
    for index, (run, status) in enumerate(zip(planned, statuses), start=1):
        label = f"[{index}/{len(planned)}] {experiment.cell_label(run.cell)}, seed {run.seed}"
        if status in (COMPLETED, DIVERGED):
            counts["skipped" if status == COMPLETED else "diverged"] += 1
            log(f"{label}: {status}, skipped")
            continue
        left = todo - len(spent)
        eta = f" (sweep ETA {_eta(left * sum(spent) / len(spent))})" if spent else ""
        log(f"{label}: {'resuming' if status == RESUMABLE else 'training'}{eta}")
        start = time.perf_counter()
        status = run_status(run)  # again: nothing finished may be trained over
        try:
            if status == RESUMABLE:
                summary = resume(run.folder, progress=progress, log=None, builders=builders)
                counts["resumed"] += 1
            elif status == NEW:
                if run.folder.exists():
                    _clear_unfinished(run.folder)
                summary = train(run.config, run_dir=run.folder, progress=progress, log=None,
                                builders=builders)
                counts["trained"] += 1
        except NonFiniteLossError as exc:
            counts["diverged"] += 1
            log(f"{label}: diverged ({exc})")
        else:
            log(f"{label}: {shown.replace('_', ' ')} {summary[shown]:.2f}")
        spent.append(time.perf_counter() - start)
    return counts
