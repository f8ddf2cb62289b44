"""A training run from a config to a complete run folder, and its exact resumption.

Run folder layout::

    RUN_DIR/
      config.yaml     resolved config (what `normlab train --resume RUN_DIR` uses)
      metrics.jsonl   one row per finished epoch
      summary.json    status, final/best accuracy, time, environment (updated every epoch)
      last.pt prev.pt best.pt   checkpoints (see normlab.train.checkpoint)

Epochs are counted as *finished epochs*: the checkpoint and the metrics row of epoch ``k``
hold the state after ``k`` epochs. A checkpoint stores the model, the optimizer (with each
group's ``initial_lr``), every global random generator, the loader's state when it has one,
the best accuracy so far and the elapsed time; the schedule is a pure function of the epoch.
So on CPU, 2 epochs straight and 1 + resume + 1 give bit-identical weights, and a run that
crashed mid-epoch resumes from its last finished epoch as if nothing had happened.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.train import factory
from normlab.train.checkpoint import LAST, load_checkpoint, resolve_checkpoint, save_checkpoint
from normlab.train.config import Config, config_to_dict, load_config, save_config
from normlab.train.engine import StepCallback, Trainer
from normlab.train.errors import ConfigError, NonFiniteLossError, RunDirError
from normlab.train.parallel import Parallel, ShardedLoader, from_environment
from normlab.train.records import SUMMARY, MetricsLog, TensorBoardLog, environment, write_json
from normlab.train.schedule import LRSchedule
from normlab.train.seed import get_rng_state, seed_everything, set_rng_state

__all__ = ["Builders", "build_setup", "new_run_dir", "resume", "train"]

CONFIG_FILE = "config.yaml"


def _default_post_step(model: nn.Module) -> None:
    import normlab

    normlab.post_step(model)


@dataclass(frozen=True)
class Builders:
    """The functions that turn config sections into objects (replaceable in tests).

    Attributes:
        loaders: ``(data_cfg, *, seed, device) -> Loaders``.
        model: ``(model_cfg, *, num_classes, in_chans) -> nn.Module``.
        optimizer: ``(model, optim_cfg, batch_size) -> Optimizer``.
        post_step: Called after every optimizer step (``normlab.post_step``).
    """

    loaders: Callable[..., factory.Loaders] = factory.build_loaders
    model: Callable[..., nn.Module] = factory.build_model
    optimizer: Callable[..., torch.optim.Optimizer] = factory.build_optimizer
    post_step: Callable[[nn.Module], None] = _default_post_step


def new_run_dir(
    config: Config, default_name: str = "run", run_dir: str | Path | None = None
) -> Path:
    """The folder a new run will write: ``run_dir``, else ``run.out_dir/run.name``.

    ``run.name`` defaults to ``<default_name>-<date>-<time>``. The folder is not created
    here (a run creates it once its data and model are built, so a bad config leaves no
    empty run behind).

    Raises:
        RunDirError: The folder exists and is not empty (nothing written is overwritten).
    """
    if run_dir is None:
        name = config.run.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(config.run.out_dir) / name
    folder = Path(run_dir)
    if folder.exists() and any(folder.iterdir()):
        raise RunDirError(
            f"run folder {folder} already exists and is not empty; resume it with "
            f"`normlab train --resume {folder}`, or choose another run.name / run.out_dir"
        )
    return folder


def build_setup(
    config: Config, builders: Builders | None = None, device: torch.device | None = None
) -> tuple[torch.device, factory.Loaders, nn.Module]:
    """Seed, then build the device, the loaders and the model (on the device) of a config.

    Also applies ``train.num_threads`` (process-wide) when set. ``device`` replaces
    ``train.device`` (e.g. this process's GPU in multi-process training).

    The order is fixed (seed, data, model) so that the same config gives the same
    initial weights and data order every time.
    """
    builders = builders or Builders()
    cfg = config
    device = device or factory.resolve_device(cfg.train.device)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed, deterministic=cfg.train.deterministic)
    loaders = builders.loaders(cfg.data, seed=cfg.train.seed, device=device)
    model = builders.model(
        cfg.model, num_classes=loaders.num_classes, in_chans=loaders.in_chans
    ).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return device, loaders, model


def _quiet(_: str) -> None:
    return None


def _epoch_line(row: dict[str, Any], epochs: int, best: float) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}  |  "
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f} (best {best:.2f})  "
        f"{row['time_s']:.1f}s"
    )


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


def _shard_loaders(loaders: factory.Loaders, config: Config, parallel: Parallel):
    if not parallel.enabled:
        return loaders
    batch = config.data.batch_size
    if batch % parallel.world_size:
        raise ConfigError(
            f"data.batch_size {batch} (the global batch) does not split evenly over "
            f"{parallel.world_size} processes; use a multiple of {parallel.world_size}"
        )
    return dataclasses.replace(
        loaders,
        train=ShardedLoader(loaders.train, parallel),
        test=ShardedLoader(loaders.test, parallel),
    )


class _Run:
    """State of one run while it trains (internal to :func:`train` and :func:`resume`).

    With several processes every one trains; only rank 0 writes the run folder and logs.
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        builders: Builders | None,
        callbacks: Sequence[StepCallback],
        progress: bool,
        log: Callable[[str], None] | None,
        joined: tuple[Parallel, torch.device],
    ) -> None:
        self.parallel, device = joined
        main = self.parallel.is_main
        self.config, self.run_dir = config, run_dir
        self.log = (log or _quiet) if main else _quiet
        builders = builders or Builders()
        progress = progress and config.run.progress and main
        cfg = config
        self.device, loaders, model = build_setup(cfg, builders, device)
        self.loaders = _shard_loaders(loaders, cfg, self.parallel)
        if self.parallel.enabled and cfg.train.sync_stats:
            from normlab.distributed import to_sync

            to_sync(model)
        self.model = model
        self.environment = environment(self.device)
        self.optimizer = builders.optimizer(model, cfg.optim, cfg.data.train_batch)
        self.trainer = Trainer(
            model,
            self.optimizer,
            LRSchedule.from_config(cfg.schedule, cfg.train.epochs),
            device=self.device,
            amp=cfg.train.amp,
            channels_last=cfg.train.channels_last,
            compile=cfg.train.compile,
            grad_clip=cfg.optim.grad_clip,
            label_smoothing=cfg.train.label_smoothing,
            post_step=builders.post_step,
            callbacks=callbacks,
            progress=progress,
            parallel=self.parallel,
        )
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / CONFIG_FILE)
        self.metrics = MetricsLog(run_dir)
        self.epoch = 0
        self.best_acc = -math.inf
        self.best_epoch: int | None = None
        self.elapsed = 0.0
        self.last_row: dict[str, Any] = {}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        if ckpt.get("loader") is not None:
            self.loaders.train.load_state_dict(ckpt["loader"])
        self.epoch = int(ckpt["epoch"])
        self.best_acc = float(ckpt["best_acc"])
        self.best_epoch = ckpt["best_epoch"]
        self.elapsed = float(ckpt["elapsed_s"])
        if self.parallel.is_main:
            self.metrics.truncate(self.epoch)
        rows = self.metrics.rows()
        self.last_row = rows[-1] if rows else {}

    def checkpoint(self, *, best: bool) -> None:
        if not self.parallel.is_main:
            return
        train_loader = self.loaders.train
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": get_rng_state(),
            "loader": train_loader.state_dict() if hasattr(train_loader, "state_dict") else None,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed,
            "config": config_to_dict(self.config),
        }
        save_checkpoint(state, self.run_dir, best=best and self.config.run.save_best)

    def summary(self, status: str, message: str = "") -> dict[str, Any]:
        row = self.last_row
        summary = {
            "status": status,
            "message": message,
            "epochs_done": self.epoch,
            "epochs": self.config.train.epochs,
            "final_acc": row.get("test_acc"),
            "final_acc5": row.get("test_acc5"),
            "final_train_loss": row.get("train_loss"),
            "best_acc": self.best_acc if self.best_epoch is not None else None,
            "best_epoch": self.best_epoch,
            "time_s": self.elapsed,
            "num_params": sum(p.numel() for p in self.model.parameters()),
            "model": self.config.model.name,
            "norm": self.config.model.norm,
            "data": self.config.data.name,
            "run_dir": str(self.run_dir),
            **self.environment,
            "processes": self.parallel.world_size,
        }
        if self.parallel.is_main:
            write_json(summary, self.run_dir / SUMMARY)
        return summary

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        tensorboard = TensorBoardLog(self.run_dir, cfg.run.tensorboard and self.parallel.is_main)
        try:
            while self.epoch < cfg.train.epochs:
                start = time.perf_counter()
                row: dict[str, Any] = {"epoch": self.epoch + 1}
                row.update(self.trainer.train_epoch(self.loaders.train, self.epoch))
                test = self.trainer.evaluate(self.loaders.test, classes=self.loaders.test_classes)
                row.update(test)
                row["time_s"] = time.perf_counter() - start
                self.epoch += 1
                self.elapsed += row["time_s"]
                is_best = row["test_acc"] > self.best_acc
                if is_best:
                    self.best_acc, self.best_epoch = row["test_acc"], self.epoch
                self.last_row = row
                if self.parallel.is_main:
                    self.metrics.append(row)
                tensorboard.log(row)
                self.checkpoint(best=is_best)
                self.summary("running")
                self.log(_epoch_line(row, cfg.train.epochs, self.best_acc))
        except NonFiniteLossError as exc:
            last = self.run_dir / LAST
            kept = (
                f" The last good checkpoint is {last} (epoch {self.epoch})."
                if last.is_file()
                else " No epoch finished, so there is no checkpoint."
            )
            message = f"{exc}{kept}"
            self.summary("stopped_nonfinite_loss", message)
            raise NonFiniteLossError(
                message, epoch=exc.epoch, step=exc.step, value=exc.value
            ) from exc
        except BaseException as exc:
            self.summary("interrupted", f"{type(exc).__name__}: {exc}")
            self.log(
                f"stopped in epoch {self.epoch + 1} ({type(exc).__name__}); continue with "
                f"`normlab train --resume {self.run_dir}`"
            )
            raise
        finally:
            tensorboard.close()
        summary = self.summary("completed")
        self.parallel.barrier()  # the run folder is complete before any process returns
        return summary


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
        run_dir: Run folder; default ``run.out_dir/run.name`` (see :func:`new_run_dir`).
        default_name: Name stem when ``run.name`` is unset (e.g. the config's name).
        callbacks: Called with a :class:`~normlab.train.engine.StepInfo` after every step.
        builders: Replacement builders (tests); default: the ``normlab`` registries.
        progress: Show a progress bar with ETA (``run.progress`` must also be true).
        log: Receives one line per epoch; ``None`` for silence.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        NonFiniteLossError: The loss became NaN/inf; ``last.pt`` holds the last good epoch.
        RunDirError: The run folder exists and is not empty.
    """
    joined = _join(config)
    folder = _on_main(joined[0], lambda: new_run_dir(config, default_name, run_dir))
    run = _Run(config, folder, builders, callbacks, progress, log, joined)
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
    to extend a run); the resolved config is written back.

    Raises:
        CheckpointError: The checkpoint is missing or corrupt (the message names
            ``prev.pt`` when that older checkpoint can be used instead).
        RunDirError: The folder has no ``config.yaml``.
    """
    ckpt_path = resolve_checkpoint(spec, LAST)
    folder = ckpt_path.parent
    if not (folder / CONFIG_FILE).is_file():
        raise RunDirError(f"{folder} has no {CONFIG_FILE}; it is not a normlab run folder")
    ckpt = load_checkpoint(ckpt_path)
    config = load_config(folder / CONFIG_FILE, list(overrides))
    joined = _join(config)
    joined[0].barrier()  # every process has read the folder before rank 0 writes to it
    run = _Run(config, folder, builders, callbacks, progress, log, joined)
    run.restore(ckpt)
    if log:
        log(f"resumed {folder} from {ckpt_path.name} at epoch {run.epoch}/{config.train.epochs}")
    return run.fit()
