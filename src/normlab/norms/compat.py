"""Load the authors' checkpoints of IEBN (``BAN2d``), SN (``SwitchNorm1d/2d/3d``) and BIN.

Facts from the authors' public code (../shared/papers/OFFICIAL_IMPLEMENTATIONS.md):

- every checkpoint carries a ``module.`` prefix (DataParallel);
- ``BAN2d`` stores ``weight``, ``bias``, ``weight_readjust`` (gamma_hat) and
  ``bias_readjust`` (beta_hat) with shape (1, C, 1, 1); normlab names the last two
  ``gate_weight`` and ``gate_bias`` and stores (C,);
- ``SwitchNorm*d`` stores ``weight``/``bias`` as (1, C, 1, 1) (or (1, C, 1)), running
  statistics as (1, C, 1) without ``num_batches_tracked``, and uses the opposite momentum
  convention (``running = m * running + (1 - m) * batch``; ``m`` = 0.9 now, 0.997 in the
  2018 model-zoo code) and the *unbiased* instance variance inside all its statistics
  (``SwitchNorm1d``, on (N, C) input: the unbiased variances over C for LN and over N for
  BN); ``running_var`` gets no Bessel factor and starts at 0; with
  ``using_moving_average=False`` training adds each batch's BN mean and ``var + mean^2``
  to the buffers, and their helper zeroes them, runs K training-mode batches without
  gradients, divides by K and subtracts the squared mean (a pooled variance);
- BIN's names and shapes already match normlab's.

:func:`convert_official_state_dict` renames and reshapes; :func:`official_sn_kwargs` gives
the SwitchNorm settings that reproduce the authors' outputs; :func:`load_official` does
both and loads strictly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

__all__ = ["convert_official_state_dict", "load_official", "official_sn_kwargs"]

_IEBN_RENAMES = {"weight_readjust": "gate_weight", "bias_readjust": "gate_bias"}
_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var", "gate_weight", "gate_bias")


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _layer_prefixes(keys: list[str], marker: str) -> set[str]:
    return {k[: -len(marker)] for k in keys if k.endswith(marker)}


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> OrderedDict[str, torch.Tensor]:
    """Turn an authors' state dict (whole model or one layer) into normlab's layout.

    Strips ``module.``, renames IEBN's ``*_readjust`` parameters, reshapes per-channel
    tensors of IEBN and SN layers to (C,), and adds SN's missing ``num_batches_tracked``.
    Keys of other layers pass through unchanged.

    Raises:
        ValueError: a per-channel tensor of an IEBN or SN layer has more than C elements
            along its non-singleton axes.
    """
    stripped = OrderedDict((_strip_module(k), v) for k, v in state_dict.items())
    keys = list(stripped)
    iebn_layers = _layer_prefixes(keys, "weight_readjust")
    sn_layers = _layer_prefixes(keys, "mean_weight")
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in stripped.items():
        prefix, _, name = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        if prefix in iebn_layers or prefix in sn_layers:
            name = _IEBN_RENAMES.get(name, name)
            if name in _PER_CHANNEL:
                squeezed = value.reshape(-1)
                if value.dim() > 1 and sum(s > 1 for s in value.shape) > 1:
                    raise ValueError(
                        f"{key}: expected a per-channel tensor such as (1, C, 1, 1), "
                        f"got shape {tuple(value.shape)}"
                    )
                value = squeezed
        converted[prefix + name] = value
    for prefix in sn_layers:
        if prefix + "running_mean" in converted:
            converted.setdefault(prefix + "num_batches_tracked", torch.tensor(0))
    return converted


def official_sn_kwargs(momentum: float = 0.9, **overrides: Any) -> dict[str, Any]:
    """SwitchNorm settings that reproduce the authors' layer, in training as in eval.

    They set ``semantics="authors"`` (see :class:`normlab.SwitchNorm`): the unbiased
    instance variance inside all statistics (unbiased LN/BN variances on (N, C) input),
    ``running_var`` without Bessel's factor and starting at 0, and, with
    ``using_moving_average=False``, buffers that sum each training batch's statistics;
    :func:`normlab.update_norm_stats` then computes what the authors' batch-average helper
    computes. Continuing to train from an authors' checkpoint gives their numbers step for
    step. Without these settings SwitchNorm's BN part follows torch's BatchNorm instead.

    Args:
        momentum: the authors' ``m`` (0.9 in the current code, 0.997 in the 2018 model-zoo
            and 1d/3d code); normlab's momentum is ``1 - m``.
        **overrides: e.g. ``using_bn=False``, ``last_gamma=True``,
            ``using_moving_average=False``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"the authors' SN momentum must lie in [0, 1], got {momentum}")
    return {"momentum": 1.0 - momentum, "semantics": "authors", **overrides}


def load_official(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> _IncompatibleKeys:
    """Convert an authors' checkpoint and load it into ``model`` (strictly by default).

    Build SN layers with :func:`official_sn_kwargs` to reproduce the authors' outputs.
    Accepts a raw state dict or a checkpoint dict holding one under ``"state_dict"``.

    Returns:
        ``model.load_state_dict``'s result.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    result: _IncompatibleKeys = model.load_state_dict(
        convert_official_state_dict(state_dict), strict=strict
    )
    return result
