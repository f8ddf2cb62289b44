"""A training run from a config to a complete run folder, and its exact resumption.

The run folder (:class:`~normlab.train.run_folder.RunFolder`) holds ``config.yaml``,
``metrics.jsonl``, ``summary.json`` and the checkpoints ``last.pt``, ``prev.pt``,
``best.pt``. A run creates its folder exclusively and holds the folder's lock for the whole
run (rank 0 under torchrun), so two runs never write one folder.

Epochs are counted as *finished epochs*: the checkpoint and the metrics row of epoch ``k``
hold the state after ``k`` epochs. An epoch is committed (checkpoint, best checkpoint,
metrics row, summary, in that order) only after its divergence checks pass: a NaN or
infinite training loss, evaluation loss or weight stops the run and ``last.pt`` stays the
last good epoch. A checkpoint stores the model, the optimizer (with each group's
``initial_lr``), every global random generator, the loader's state when it has one, the
best value of the task's monitored metric and the elapsed time; the schedule is a pure
function of the epoch. So on CPU, 2 epochs straight and 1 + resume + 1 give bit-identical
weights, and a run that crashed mid-epoch resumes from its last finished epoch as if
nothing had happened.

With ``run.checkpoint_every`` (steps), ``last.pt`` is also written inside an epoch: it then
holds the step, the training loader's position (:class:`~normlab.data.loader.EpochLoader`), the
training metric's totals so far and the epoch's throughput counters
(:class:`~normlab.train.engine.EpochProgress`), and ``--resume`` continues from the next
unseen batch -- on CPU with the same weights and metrics rows, bit for bit, as a run that
was never interrupted. ``metrics.jsonl`` still gets one row per finished epoch; the summary
says how many epochs are done and how many steps of the next one ``last.pt`` holds
(``steps_done_in_epoch``).

What is trained is the config's ``task`` (:mod:`normlab.train.task`); the runner never
looks inside a batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.distributed import to_sync
from normlab.norms import post_step
from normlab.train import factory
from normlab.train.config import Config, config_to_dict, config_to_yaml, load_config
from normlab.train.engine import EpochProgress, StepCallback, Trainer, loader_position
from normlab.train.errors import CheckpointError, ConfigError, NonFiniteLossError
from normlab.train.parallel import Parallel, ShardedLoader, from_environment
from normlab.train.records import TensorBoardLog, environment
from normlab.train.run_folder import CONFIG, LAST, RunFolder, resolve_checkpoint
from normlab.train.schedule import LRSchedule
from normlab.train.seed import get_rng_state, seed_everything, set_rng_state
from normlab.train.task import Task, get_task

__all__ = ["Builders", "build_setup", "check_checkpoint", "load_weights", "resume", "train"]

CONFIG_FILE = CONFIG


@dataclass(frozen=True)
class Builders:
    """The functions that turn config sections into objects (replaceable in tests).

    Attributes:
        loaders: ``(data_cfg, *, seed, device) -> Loaders``; ``None``: the task's.
        model: ``(model_cfg, *, num_classes, in_chans) -> nn.Module``; ``None``: the task's.
        optimizer: ``(model, optim_cfg, batch_size) -> Optimizer``.
        post_step: Called after every optimizer step (:func:`normlab.norms.post_step`).
    """

    loaders: Callable[..., factory.Loaders] | None = None
    model: Callable[..., nn.Module] | None = None
    optimizer: Callable[..., torch.optim.Optimizer] = factory.build_optimizer
    post_step: Callable[[nn.Module], None] = post_step


def build_setup(
    config: Config,
    builders: Builders | None = None,
    device: torch.device | None = None,
    task: Task | None = None,
) -> tuple[torch.device, factory.Loaders, nn.Module]:
    """Seed, then build the device, the loaders and the model (on the device) of a config.

    Also applies ``train.num_threads`` (process-wide) when set. ``device`` replaces
    ``train.device`` (e.g. this process's GPU in multi-process training); ``task`` defaults
    to the config's.

    The order is fixed (seed, data, model) so that the same config gives the same
    initial weights and data order every time.
    """
    builders = builders or Builders()
    task = task or get_task(config.task).from_config(config)
    cfg = config
    device = device or factory.resolve_device(cfg.train.device)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed, deterministic=cfg.train.deterministic)
    build_loaders = builders.loaders or task.build_loaders
    build_model = builders.model or task.build_model
    loaders = build_loaders(cfg.data, seed=cfg.train.seed, device=device)
    model = build_model(cfg.model, num_classes=loaders.num_classes, in_chans=loaders.in_chans)
    model = model.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return device, loaders, model


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def check_checkpoint(ckpt: dict[str, Any], config: Config, path: str | Path) -> None:
    """Refuse a checkpoint trained with another architecture than ``config`` asks for.

    Compares the task's :attr:`~normlab.train.task.Task.architecture_keys` of the config
    stored in the checkpoint with ``config`` (keys the checkpoint does not store are not
    compared).

    Raises:
        CheckpointError: One line naming the first key that differs, e.g. ``checkpoint was
            trained with model.norm=sn, config says bn``.
    """
    stored = ckpt.get("config")
    if not isinstance(stored, dict):
        return
    asked = config_to_dict(config)
    for key in get_task(config.task).architecture_keys:
        then, now = _lookup(stored, key), _lookup(asked, key)
        if then is not _MISSING and then != now:
            raise CheckpointError(
                f"{path}: checkpoint was trained with {key}={then}, config says {now}; "
                f"drop the --set {key}=... override or use a checkpoint of that network"
            )


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(ckpt["model"])`` with a one-line error when they do not fit.

    Raises:
        CheckpointError: The checkpoint's tensors do not fit the model.
    """
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} does not fit the config's model: {first}") from exc


def _quiet(_: str) -> None:
    return None


def _join(config: Config) -> tuple[Parallel, torch.device]:
    """This process's place among the training processes (torchrun) and its device."""
    return from_environment(factory.resolve_device(config.train.device))


def _on_main(parallel: Parallel, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0, its result (or its exception, raised) on every process."""
    outcome: Any = None
    if parallel.is_main:
        try:
            outcome = ("ok", make())
        except Exception as exc:
            outcome = ("error", exc)
    kind, value = parallel.broadcast(outcome)
    if kind == "error":
        raise value
    return value


def _shard(loader: Any, parallel: Parallel) -> Any:
    """This process's loader: the loader's own ``shard(rank, world_size)`` when it has one
    (e.g. a streaming loader that reads only its share), else a :class:`ShardedLoader`."""
    if hasattr(loader, "shard"):
        return loader.shard(parallel.rank, parallel.world_size)
    return ShardedLoader(loader, parallel)


def _shard_loaders(
    loaders: factory.Loaders, config: Config, parallel: Parallel
) -> factory.Loaders:
    batch, parts = config.data.batch_size, config.train.accumulate_steps
    if batch % (parallel.world_size * parts):
        over = [f"{parallel.world_size} processes"] if parallel.enabled else []
        over += [f"{parts} micro-batches (train.accumulate_steps)"] if parts > 1 else []
        raise ConfigError(
            f"data.batch_size {batch} (the global batch) does not split evenly over "
            f"{' x '.join(over)}; use a multiple of {parallel.world_size * parts}"
        )
    if not parallel.enabled:
        return loaders
    return dataclasses.replace(
        loaders, train=_shard(loaders.train, parallel), test=_shard(loaders.test, parallel)
    )


def _check_checkpoint_every(config: Config, loader: Any, task: Task, device: torch.device) -> None:
    """Refuse ``run.checkpoint_every`` when the run could not continue inside an epoch.

    Raises:
        ConfigError: The training loader keeps no position inside an epoch, or the task's
            training metric cannot save its state.
    """
    if config.run.checkpoint_every is None:
        return
    if loader_position(loader) is None:
        raise ConfigError(
            f"run.checkpoint_every needs a training loader that keeps its position inside "
            f"an epoch (normlab.data.loader.EpochLoader); {type(loader).__name__} does not: set "
            "run.checkpoint_every=null"
        )
    try:
        task.train_metric(device).state_dict()
    except NotImplementedError as exc:
        raise ConfigError(f"run.checkpoint_every: {exc}") from None


class _Run:
    """State of one run while it trains (internal to :func:`train` and :func:`resume`).

    With several processes every one trains; only rank 0 writes the run folder and logs.
    """

    def __init__(
        self,
        config: Config,
        folder: RunFolder,
        builders: Builders | None,
        callbacks: Sequence[StepCallback],
        progress: bool,
        log: Callable[[str], None] | None,
        joined: tuple[Parallel, torch.device],
    ) -> None:
        self.parallel, device = joined
        main = self.parallel.is_main
        self.config, self.folder = config, folder
        self.log = (log or _quiet) if main else _quiet
        builders = builders or Builders()
        progress = progress and config.run.progress and main
        cfg = config
        self.task = get_task(cfg.task).from_config(cfg)
        if cfg.eval.statistics == "batch_average":
            self.task.check_batch_average("eval.statistics=batch_average")
        self.device, loaders, model = build_setup(cfg, builders, device, self.task)
        self.loaders = _shard_loaders(loaders, cfg, self.parallel)
        _check_checkpoint_every(cfg, self.loaders.train, self.task, self.device)
        if self.parallel.enabled and cfg.train.sync_stats:
            if cfg.model.virtual_batch_size is not None:
                raise ConfigError(
                    f"model.virtual_batch_size={cfg.model.virtual_batch_size} and "
                    "train.sync_stats=true do not combine on several processes: set "
                    "train.sync_stats=false (each process keeps its statistics over groups "
                    "of that size, as the SN recipes do) or model.virtual_batch_size=null"
                )
            to_sync(model)
        self.model = model
        self.environment = environment(self.device)
        self.optimizer = builders.optimizer(model, cfg.optim, cfg.data.train_batch)
        self.trainer = Trainer(
            model,
            self.optimizer,
            LRSchedule.from_config(cfg.schedule, cfg.train.epochs),
            task=self.task,
            device=self.device,
            amp=cfg.train.amp,
            channels_last=cfg.train.channels_last,
            compile=cfg.train.compile,
            grad_clip=cfg.optim.grad_clip,
            post_step=builders.post_step,
            callbacks=callbacks,
            progress=progress,
            parallel=self.parallel,
            accumulate_steps=cfg.train.accumulate_steps,
            limit_batches=cfg.train.limit_batches,
            checkpoint_every=cfg.run.checkpoint_every,
            on_checkpoint=self.checkpoint_inside,
            eval_stats_batches=(cfg.eval.stats_batches
                                if cfg.eval.statistics == "batch_average" else None),
        )
        self.epoch = 0
        self.inside: EpochProgress | None = None
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.elapsed = 0.0
        self.last_row: dict[str, Any] = {}

    def write_config(self) -> None:
        if self.parallel.is_main:
            self.folder.write_config(config_to_yaml(self.config))

    def restore(self, ckpt: dict[str, Any], path: Path) -> None:
        load_weights(self.model, ckpt, path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        if ckpt.get("loader") is not None:
            self.loaders.train.load_state_dict(ckpt["loader"])
        self.epoch = int(ckpt["epoch"])
        progress = ckpt.get("progress")
        self.inside = None if progress is None else EpochProgress.from_state(progress)
        best = ckpt.get("best_value", ckpt.get("best_acc"))
        self.best = None if best is None or math.isinf(best) else float(best)
        self.best_epoch = ckpt["best_epoch"]
        self.elapsed = float(ckpt["elapsed_s"])
        rows = [r for r in self.folder.metrics() if r["epoch"] <= self.epoch]
        if self.parallel.is_main and path != self.folder.checkpoint_path(LAST):
            self.folder.write_metrics(rows)
        self.last_row = rows[-1] if rows else dict(ckpt.get("row") or {})

    def state(self) -> dict[str, Any]:
        train_loader = self.loaders.train
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": get_rng_state(),
            "loader": train_loader.state_dict() if hasattr(train_loader, "state_dict") else None,
            "best_value": self.best,
            "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed,
            "config": config_to_dict(self.config),
            "step": 0,
            "progress": None,
        }

    def position(self) -> str:
        """What ``last.pt`` holds: ``epoch E`` or ``epoch E, step S of epoch E + 1``."""
        if self.inside is None:
            return f"epoch {self.epoch}"
        return f"epoch {self.epoch}, step {self.inside.step} of epoch {self.epoch + 1}"

    def checkpoint_inside(self, progress: EpochProgress) -> None:
        """Write ``last.pt`` (and the summary) inside an epoch, after ``progress.step`` steps."""
        self.inside = progress
        if self.parallel.is_main:
            state = {
                **self.state(),
                "step": progress.step,
                "progress": progress.state_dict(),
                "row": self.last_row or None,
            }
            self.folder.commit_step(state, self.summary("running"))

    def summary(self, status: str, message: str = "") -> dict[str, Any]:
        cfg = self.config
        return {
            "status": status,
            "message": message,
            "epochs_done": self.epoch,
            "steps_done_in_epoch": 0 if self.inside is None else self.inside.step,
            "epochs": cfg.train.epochs,
            "limit_batches": cfg.train.limit_batches,
            "eval_statistics": cfg.eval.statistics,
            **self.task.summary(self.last_row, self.best),
            "best_epoch": self.best_epoch,
            "time_s": self.elapsed + (0.0 if self.inside is None else self.inside.train_time_s),
            "num_params": sum(p.numel() for p in self.model.parameters()),
            "task": cfg.task,
            "model": cfg.model.name,
            "norm": cfg.model.norm,
            "data": cfg.data.name,
            "run_dir": str(self.folder.path),
            **self.environment,
            "processes": self.parallel.world_size,
        }

    def write_summary(self, status: str, message: str = "") -> dict[str, Any]:
        summary = self.summary(status, message)
        if self.parallel.is_main:
            self.folder.write_summary(summary)
        return summary

    def commit(self, row: dict[str, Any]) -> None:
        """Count a finished, finite epoch and record it in the run folder."""
        self.epoch += 1
        self.inside = None
        self.elapsed += row["time_s"]
        is_best = self.task.is_better(row[self.task.monitor], self.best)
        if is_best:
            self.best, self.best_epoch = row[self.task.monitor], self.epoch
        self.last_row = row
        if self.parallel.is_main:
            self.folder.commit_epoch(
                self.state(),
                row,
                self.summary("running"),
                best=is_best and self.config.run.save_best,
            )

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        main = self.parallel.is_main
        tensorboard = TensorBoardLog(self.folder.path, cfg.run.tensorboard and main)
        limit = cfg.train.limit_batches
        limited = "" if limit is None else (
            f"  [limited: {limit} training and {limit} evaluation batches per epoch]"
        )
        try:
            while self.epoch < cfg.train.epochs:
                row = self.trainer.run_epoch(self.loaders, self.epoch, resume=self.inside)
                self.commit(row)
                tensorboard.log(row)
                self.log(self.task.epoch_line(row, cfg.train.epochs, self.best) + limited)
        except NonFiniteLossError as exc:
            last = self.folder.checkpoint_path(LAST)
            kept = (
                f" The last good checkpoint is {last} ({self.position()})."
                if last.is_file()
                else " No epoch finished, so there is no checkpoint."
            )
            message = f"{exc}{kept}"
            self.write_summary("stopped_nonfinite_loss", message)
            raise NonFiniteLossError(
                message, epoch=exc.epoch, step=exc.step, value=exc.value
            ) from exc
        except BaseException as exc:
            self.write_summary("interrupted", f"{type(exc).__name__}: {exc}")
            self.log(
                f"stopped in epoch {self.epoch + 1} ({type(exc).__name__}); last.pt holds "
                f"{self.position()}; continue with `normlab train --resume {self.folder.path}`"
            )
            raise
        finally:
            tensorboard.close()
            self.loaders.close()
        summary = self.write_summary("completed")
        self.parallel.barrier()  # the run folder is complete before any process returns
        return summary


def _create_folder(config: Config, default_name: str, run_dir: str | Path | None) -> RunFolder:
    if run_dir is not None:
        path = Path(run_dir)
        return RunFolder.create(path.parent, path.name, default_name)
    return RunFolder.create(config.run.out_dir, config.run.name, default_name)


def train(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    default_name: str = "run",
    callbacks: Sequence[StepCallback] = (),
    builders: Builders | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train a new run and write its folder.

    Args:
        config: The resolved run config.
        run_dir: Run folder; default ``run.out_dir/run.name``, or
            ``run.out_dir/<default_name>-<date>-<time>`` when ``run.name`` is unset.
        default_name: Name stem when ``run.name`` is unset (e.g. the config's name).
        callbacks: Called with a :class:`~normlab.train.engine.StepInfo` after every step.
        builders: Replacement builders (tests); default: the config task's.
        progress: Show a progress bar with ETA (``run.progress`` must also be true).
        log: Receives one line per epoch; ``None`` for silence.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        NonFiniteLossError: The run diverged; ``last.pt`` holds the last good epoch.
        RunDirError: The run folder exists and is not empty, or is in use.
    """
    joined = _join(config)
    parallel = joined[0]
    created: list[RunFolder] = []

    def create() -> Path:
        created.append(_create_folder(config, default_name, run_dir))
        return created[0].path

    path = _on_main(parallel, create)
    folder = created[0] if created else RunFolder(path)
    try:
        run = _Run(config, folder, builders, callbacks, progress, log, joined)
        run.write_config()
    except BaseException:
        if created:
            folder.discard_if_empty()
        raise
    with folder.lock() if created else contextlib.nullcontext():
        return run.fit()


def resume(
    spec: str | Path,
    *,
    overrides: Sequence[str] = (),
    callbacks: Sequence[StepCallback] = (),
    builders: Builders | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Continue a run from its folder (``last.pt``) or from a given checkpoint file.

    The run's ``config.yaml`` is used, with ``overrides`` applied (e.g. ``train.epochs=200``
    to extend a run). Nothing is written before the overrides are checked against the
    checkpoint (a checkpoint of another network is refused); then the folder is repaired
    (:meth:`~normlab.train.run_folder.RunFolder.recover`), the resolved config written back
    and training continues, holding the folder's lock.

    Raises:
        CheckpointError: The checkpoint is missing or corrupt (the message names
            ``prev.pt`` when that older checkpoint can be used instead), or it was trained
            with another architecture than the config (with ``overrides``) asks for.
        ConfigError: A bad override.
        RunDirError: The folder has no ``config.yaml``, or another process is using it.
    """
    ckpt_path = resolve_checkpoint(spec, LAST)
    folder = RunFolder.open(ckpt_path.parent)
    config = load_config(folder.path / CONFIG, list(overrides))
    joined = _join(config)
    parallel, log = joined[0], log or _quiet
    _on_main(parallel, lambda: folder.lock().acquire() and None)
    try:
        ckpt = folder.load_checkpoint(ckpt_path)
        check_checkpoint(ckpt, config, ckpt_path)
        parallel.barrier()  # every process has read the checkpoint before rank 0 writes
        if parallel.is_main and ckpt_path == folder.checkpoint_path(LAST):
            for repair in folder.recover():
                log(f"repaired {folder.path}: {repair}")
        run = _Run(config, folder, builders, callbacks, progress, log, joined)
        run.restore(ckpt, ckpt_path)
        run.write_config()
        run.log(f"resumed {folder.path} from {ckpt_path.name} at {run.position()} "
                f"(of {config.train.epochs} epochs)")
        return run.fit()
    finally:
        if parallel.is_main:
            folder.lock().release()
