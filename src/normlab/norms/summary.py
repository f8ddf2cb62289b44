"""``norm_summary``: what each norm layer in a model has learned, as plain data.

What a record holds beyond ``name``, ``type`` and ``channels`` is each norm's own business:
the ``summary`` (and ``probe``) functions it registered with
:func:`~normlab.norms.registry.register_norm`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normlab.norms.base import NormBase
from normlab.norms.registry import norm_info_of

__all__ = ["norm_summary", "value_stats"]


def value_stats(values: torch.Tensor) -> dict[str, float]:
    """Mean, std, min, quartiles and max of ``values`` (any shape), as floats."""
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
    info = norm_info_of(layer)
    if info is not None and info.summary is not None:
        entry.update(info.summary(layer))
    return entry


@torch.no_grad()
def norm_summary(model: nn.Module, inputs: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """One plain-data record per normlab norm layer, in module order.

    Every record has ``name``, ``type`` and ``channels``; each registered norm adds what
    it learned. SN layers add ``normalizers``, ``mean_ratios`` and ``var_ratios`` (after
    softmax, or one-hot once hardened) and ``hard``; BIN layers add ``gate`` (summary
    statistics of rho), ``gate_values`` and ``fraction_batch`` (share of channels with
    rho > 0.5, i.e. leaning to BN); IEBN layers add ``operator``, ``position`` and
    statistics of their gate parameters, and, when ``inputs`` is given, ``gate_values``:
    statistics of delta[n, c] over that batch. With ``inputs``, the model is run once on
    them in its current mode, without gradients, for the norms that measure something on
    their input (a registered ``probe``).

    Args:
        model: the network.
        inputs: an optional batch to measure on (IEBN gate values).
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, NormBase)]
    entries = {n: _layer_entry(n, m) for n, m in layers}
    if inputs is not None:
        hooks = []
        for name, layer in layers:
            info = norm_info_of(layer)
            if info is not None and info.probe is not None:

                def record(
                    module: nn.Module,
                    args: tuple[torch.Tensor, ...],
                    name: str = name,
                    probe: Any = info.probe,
                ) -> None:
                    entries[name].update(probe(module, args[0]))

                hooks.append(layer.register_forward_pre_hook(record))
        try:
            model(inputs)
        finally:
            for hook in hooks:
                hook.remove()
    return [entries[n] for n, _ in layers]
