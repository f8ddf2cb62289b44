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

from normlab.train.checkpoint import LAST, load_checkpoint, resolve_checkpoint
from normlab.train.config import Config, load_config
from normlab.train.engine import evaluate
from normlab.train.errors import RunDirError
from normlab.train.factory import Loaders
from normlab.train.runner import CONFIG_FILE, Builders, build_setup

__all__ = ["LoadedRun", "evaluate_run", "load_run"]


def _inputs(loader: Any, limit: int) -> Iterator[torch.Tensor]:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    for x, _ in islice(loader, limit):
        yield x


@dataclass
class LoadedRun:
    """A run folder's config, data and network with a checkpoint's weights loaded."""

    config: Config
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
        CheckpointError: Missing or corrupt checkpoint.
    """
    folder = Path(run_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise RunDirError(f"{folder} has no {CONFIG_FILE}; it is not a normlab run folder")
    config = load_config(folder / CONFIG_FILE, list(overrides))
    given, inside = Path(checkpoint), folder / checkpoint
    path = resolve_checkpoint(given if given.is_file() and not inside.is_file() else inside)
    ckpt = load_checkpoint(path)
    device, loaders, model = build_setup(config, builders)
    model.load_state_dict(ckpt["model"])
    return LoadedRun(config, path, int(ckpt["epoch"]), device, loaders, model)


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
        ``checkpoint``, ``epoch`` and ``test_loss``/``test_acc``/``test_acc5`` with the
        stored statistics (a mixed-data run: on the primary classes, as in training); with
        ``recompute_stats``, also ``recomputed`` holding the same metrics after
        batch-average re-estimation and ``num_batches``.

    Raises:
        RunDirError: No ``config.yaml`` in ``run_dir``.
        CheckpointError: Missing or corrupt checkpoint.
    """
    run = load_run(run_dir, checkpoint=checkpoint, overrides=overrides, builders=builders)
    config, loaders, model = run.config, run.loaders, run.model
    kwargs = {
        "device": run.device,
        "amp": config.train.amp,
        "channels_last": config.train.channels_last,
        "classes": loaders.test_classes,
    }
    result: dict[str, Any] = {"checkpoint": str(run.checkpoint), "epoch": run.epoch}
    result.update(evaluate(model, loaders.test, **kwargs))
    if recompute_stats is not None:
        if recompute_stats < 1:
            raise ValueError("recompute_stats must be a positive number of batches")
        import normlab

        available = len(loaders.train)
        num = min(recompute_stats, available)
        normlab.update_norm_stats(model, _inputs(loaders.train, num), num)
        result["num_batches"] = num
        result["recomputed"] = evaluate(model, loaders.test, **kwargs)
    return result
