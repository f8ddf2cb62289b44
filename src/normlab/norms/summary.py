"""``norm_summary``: what each adaptive norm in a model has learned, as plain data."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normlab.norms.base import NormBase
from normlab.norms.batch_instance import BatchInstanceNorm
from normlab.norms.iebn import IEBN
from normlab.norms.switch import SwitchNorm

__all__ = ["norm_summary"]


def _stats(values: torch.Tensor) -> dict[str, float]:
    v = values.detach().float().flatten()
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75]))
    return {
        "mean": float(v.mean()),
        "std": float(v.std(correction=0)),
        "min": float(v.min()),
        "q25": float(q[0]),
        "median": float(q[1]),
        "q75": float(q[2]),
        "max": float(v.max()),
    }


def _layer_entry(name: str, layer: NormBase) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "type": type(layer).__name__,
        "channels": layer.num_features,
    }
    if isinstance(layer, SwitchNorm):
        mean_ratio, var_ratio = layer.ratios()
        entry.update(
            normalizers=list(layer.normalizers),
            mean_ratios=[float(r) for r in mean_ratio],
            var_ratios=[float(r) for r in var_ratio],
            hard=layer.hard,
        )
    elif isinstance(layer, BatchInstanceNorm):
        gate = layer.gate.detach().float()
        entry.update(
            gate=_stats(gate),
            gate_values=gate.tolist(),
            fraction_batch=float((gate > 0.5).float().mean()),
        )
    elif isinstance(layer, IEBN):
        entry.update(operator=layer.operator, position=layer.position)
        for pname in layer.gate_param_names():
            entry[pname] = _stats(getattr(layer, pname))
    return entry


@torch.no_grad()
def norm_summary(model: nn.Module, inputs: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """One plain-data record per normlab norm layer, in module order.

    Every record has ``name``, ``type`` and ``channels``. SN layers add ``normalizers``,
    ``mean_ratios`` and ``var_ratios`` (after softmax, or one-hot once hardened) and
    ``hard``; BIN layers add ``gate`` (summary statistics of rho), ``gate_values`` and
    ``fraction_batch`` (share of channels with rho > 0.5, i.e. leaning to BN); IEBN layers
    add ``operator``, ``position`` and statistics of their gate parameters, and, when
    ``inputs`` is given, ``gate_values``: statistics of delta[n, c] over that batch
    (the model is run once on ``inputs`` in its current mode, without gradients).

    Args:
        model: the network.
        inputs: an optional batch to measure IEBN gate values on.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, NormBase)]
    entries = {n: _layer_entry(n, m) for n, m in layers}
    if inputs is not None:
        hooks = []
        for name, layer in layers:
            if isinstance(layer, IEBN):

                def record(module, args, name=name):
                    entries[name]["gate_values"] = _stats(module.gate_values(args[0]))

                hooks.append(layer.register_forward_pre_hook(record))
        try:
            model(inputs)
        finally:
            for hook in hooks:
                hook.remove()
    return [entries[n] for n, _ in layers]
