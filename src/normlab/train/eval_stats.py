"""Batch-average evaluation statistics during training (``eval.statistics=batch_average``).

The SN paper's inference (Sec. 3.1, "Inference"): "we freeze the parameters of the network
and all the SN layers, and feed the network with a certain number of mini-batches randomly
chosen from the training set. Second, we average the means and variances produced by all
these mini-batches in each SN layer." :func:`batch_average_stats` does that before an
evaluation with :func:`normlab.update_norm_stats` (the function behind
``normlab eval --recompute-stats``, which starts and finishes every norm's batch average),
on batches of the run's own training loader (training transforms, batch size and
``model.virtual_batch_size``, so each batch contributes the statistics a training step
computed). See :class:`~normlab.train.config.EvalConfig` for when it runs.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from torch import nn

from normlab.distributed import average_running_stats
from normlab.norms import update_norm_stats
from normlab.train.parallel import Parallel

__all__ = ["batch_average_stats"]


def batch_average_stats(
    model: nn.Module,
    loader: Any,
    *,
    num_batches: int,
    parallel: Parallel,
) -> int:
    """Re-estimate every norm's running statistics from training batches (batch average).

    The batches are the first ``num_batches`` of epoch 0's order of ``loader`` (a fixed,
    seeded draw: the batches ``normlab eval --recompute-stats N`` uses, so that command
    reproduces a run's recorded score); afterwards the loader is back at the position it
    had and every random generator at its state, so training continues exactly as
    without the estimate (and a resumed run estimates the same statistics). Under torchrun
    each
    process averages its share of every batch, then the processes' statistics are
    averaged (:func:`normlab.distributed.average_running_stats`; the variance then leaves
    out the spread between the processes' means, negligible at the paper's 50k samples).

    Args:
        model: The network (not the DDP wrapper).
        loader: The training loader (``set_epoch``, ``len``; ``state_dict`` /
            ``load_state_dict`` when it keeps a position inside an epoch).
        num_batches: How many batches to average (at most an epoch's).
        parallel: This process's place among the training processes.

    Returns:
        The number of batches used.
    """
    position = loader.state_dict() if hasattr(loader, "state_dict") else None
    count = min(num_batches, len(loader))
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        used = update_norm_stats(model, (batch[0] for batch in islice(loader, count)), count)
    if position is not None:
        loader.load_state_dict(position)
    if parallel.enabled:
        average_running_stats(model)
    return used
