"""Evaluate a finished (or running) run's checkpoint, optionally with batch-average statistics.

Batch-average inference (SN paper, Sec. "Inference"): instead of the moving averages kept
during training, every normlab norm layer's running statistics are re-estimated as plain
averages over ``N`` training batches with ``normlab.update_norm_stats``. The batches come
from the run's training loader (same batch size and augmentation as training, as the SN
authors did), in order from epoch 0's shuffle, so the estimate is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.norms import update_norm_stats
from normlab.train.config import Config, load_config
from normlab.train.engine import evaluate
from normlab.train.factory import Loaders
from normlab.train.run_folder import CONFIG, LAST, RunFolder, resolve_checkpoint
from normlab.train.runner import Builders, build_setup, check_checkpoint, load_weights
from normlab.train.task import Task, get_task

__all__ = ["LoadedRun", "evaluate_run", "load_run"]


def _inputs(loader: Any, limit: int) -> Iterator[torch.Tensor]:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    for batch in islice(loader, limit):
        yield batch[0]


@dataclass
class LoadedRun:
    """A run folder's config, task, data and network with a checkpoint's weights loaded."""

    config: Config
    task: Task
    checkpoint: Path
    epoch: int
    device: torch.device
    loaders: Loaders
    model: nn.Module


def load_run(
    run_dir: str | Path,
    *,
    checkpoint: str = LAST,
    overrides: Sequence[str] = (),
    builders: Builders | None = None,
) -> LoadedRun:
    """Rebuild a run's data and network from its ``config.yaml`` and load a checkpoint.

    Args: as :func:`evaluate_run`.

    Raises:
        RunDirError: No ``config.yaml`` in ``run_dir``.
        CheckpointError: Missing or corrupt checkpoint, or one of another architecture
            than the config (with ``overrides``) describes.
    """
    folder = RunFolder.open(run_dir)
    config = load_config(folder.path / CONFIG, list(overrides))
    given, inside = Path(checkpoint), folder.checkpoint_path(checkpoint)
    path = resolve_checkpoint(given if given.is_file() and not inside.is_file() else inside)
    ckpt = folder.load_checkpoint(path)
    check_checkpoint(ckpt, config, path)
    task = get_task(config.task).from_config(config)
    device, loaders, model = build_setup(config, builders, task=task)
    load_weights(model, ckpt, path)
    return LoadedRun(config, task, path, int(ckpt["epoch"]), device, loaders, model)


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = LAST,
    recompute_stats: int | None = None,
    overrides: Sequence[str] = (),
    builders: Builders | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder's checkpoint on its test split.

    Args:
        run_dir: The run folder (holds ``config.yaml``).
        checkpoint: File name inside the folder (``last.pt``, ``best.pt``, ``prev.pt``) or
            a path to a checkpoint.
        recompute_stats: If given, also evaluate after re-estimating norm statistics from
            this many training batches (batch-average inference).
        overrides: ``section.key=value`` items applied to the run's config (e.g. a new
            ``data.root`` or ``train.device``).
        builders: Replacement builders (tests).

    Returns:
        ``checkpoint``, ``epoch`` and the task's evaluation metrics (classification:
        ``test_loss``/``test_acc``/``test_acc5``; a mixed-data run scores the primary
        classes, as in training) with the stored statistics; with
        ``recompute_stats``, also ``recomputed`` holding the same metrics after
        batch-average re-estimation and ``num_batches``.

    Raises:
        RunDirError: No ``config.yaml`` in ``run_dir``.
        CheckpointError: Missing or corrupt checkpoint.
        ConfigError: ``recompute_stats`` for a task that cannot re-estimate statistics.
    """
    if recompute_stats is not None and recompute_stats < 1:
        raise ValueError("recompute_stats must be a positive number of batches")
    run = load_run(run_dir, checkpoint=checkpoint, overrides=overrides, builders=builders)
    if recompute_stats is not None:
        run.task.check_batch_average("--recompute-stats")
    loaders, model = run.loaders, run.model

    def score() -> dict[str, float]:
        metric = run.task.eval_metric(loaders, run.device)
        return evaluate(run.task, model, loaders.test, metric, amp=run.config.train.amp,
                        channels_last=run.config.train.channels_last)

    result: dict[str, Any] = {"checkpoint": str(run.checkpoint), "epoch": run.epoch}
    try:
        result.update(score())
        if recompute_stats is not None:
            num = min(recompute_stats, len(loaders.train))
            update_norm_stats(model, _inputs(loaders.train, num), num)
            result["num_batches"] = num
            result["recomputed"] = score()
    finally:
        loaders.close()
    return result
