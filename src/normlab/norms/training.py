"""Model-wide helpers for training with normlab norms: parameter roles, post-step
projections, batch-average statistics and the constant-noise / virtual-batch switches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normlab.functional import statistics_dtype
from normlab.norms.base import NormBase
from normlab.norms.batch_stats import BatchStatistics, add_sums, pool_sums
from normlab.norms.freeze import is_frozen

__all__ = [
    "DEFAULT_ROLE_LR_SCALE",
    "DEFAULT_ROLE_WEIGHT_DECAY",
    "param_groups",
    "parameter_roles",
    "post_step",
    "set_noise",
    "set_virtual_batch_size",
    "update_norm_stats",
]

DEFAULT_ROLE_LR_SCALE: Mapping[str, float] = {"gate": 10.0}
"""BIN's gates learn 10x faster (BIN paper practice, the authors' default flag)."""
DEFAULT_ROLE_WEIGHT_DECAY: Mapping[str, float] = {"gate": 0.0}
"""BIN's gates get no weight decay (BIN paper practice)."""


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Fully-qualified trainable parameter name -> role.

    Roles: ``"affine"`` (norm scale and shift, torch BN included), ``"gate"`` (BIN rho),
    ``"switch"`` (SN logits), ``"iebn_gate"`` (IEBN gate parameters), ``"default"``.
    """
    roles: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, NormBase):
            table = module.param_roles
        elif isinstance(module, (_BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            table = NormBase.param_roles
        else:
            table = {}
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                full = f"{module_name}.{name}" if module_name else name
                roles[full] = table.get(name, "default")
    return roles


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    role_lr_scale: Mapping[str, float] | None = None,
    role_weight_decay: Mapping[str, float] | None = None,
    norm_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups that honour each parameter's role.

    Args:
        model: the network.
        lr: base learning rate.
        weight_decay: base weight decay.
        role_lr_scale: role -> learning-rate multiplier, merged over
            :data:`DEFAULT_ROLE_LR_SCALE` (BIN gates x10). E.g. ``{"switch": 0.1}``.
        role_weight_decay: role -> weight decay, merged over
            :data:`DEFAULT_ROLE_WEIGHT_DECAY` (BIN gates 0).
        norm_weight_decay: weight decay of every norm's ``weight`` and ``bias`` (role
            ``"affine"``); ``None`` keeps the base value. ``0.0`` is the common
            no-decay-on-norms practice.

    Returns:
        A list of dicts for :mod:`torch.optim`, one per role present, each with
        ``params``, ``lr``, ``weight_decay`` and ``role``.
    """
    lr_scale = {**DEFAULT_ROLE_LR_SCALE, **(role_lr_scale or {})}
    decay = {**DEFAULT_ROLE_WEIGHT_DECAY, **(role_weight_decay or {})}
    if norm_weight_decay is not None:
        decay.setdefault("affine", norm_weight_decay)
    named = dict(model.named_parameters())
    groups: dict[str, dict[str, Any]] = {}
    for name, role in parameter_roles(model).items():
        group = groups.setdefault(
            role,
            {
                "params": [],
                "lr": lr * lr_scale.get(role, 1.0),
                "weight_decay": decay.get(role, weight_decay),
                "role": role,
            },
        )
        group["params"].append(named[name])
    return list(groups.values())


def post_step(model: nn.Module) -> None:
    """Call after every optimizer step: projects constrained parameters (BIN gates to
    [0, 1])."""
    for module in model.modules():
        if isinstance(module, NormBase):
            module.post_step()


def set_noise(model: nn.Module, noise: tuple[float, float] | None) -> nn.Module:
    """Apply the constant-noise attack ``x_hat -> x_hat * Na + Nb`` (IEBN paper Eqn. 11) to
    every normlab norm in ``model`` (``None`` removes it). Returns ``model``."""
    value = None if noise is None else (float(noise[0]), float(noise[1]))
    for module in model.modules():
        if isinstance(module, NormBase):
            module.noise = value
    return model


def set_virtual_batch_size(model: nn.Module, size: int | None) -> nn.Module:
    """Pool batch statistics over sub-batches of ``size`` samples in every normlab norm
    that uses batch statistics (``None``: whole batch). Returns ``model``."""
    if size is not None and int(size) < 1:
        raise ValueError(f"virtual batch size must be >= 1, got {size}")
    for module in model.modules():
        if isinstance(module, BatchStatistics):
            module.virtual_batch_size = None if size is None else int(size)
    return model


def _inputs(batch: Any) -> torch.Tensor:
    x: torch.Tensor = batch[0] if isinstance(batch, (tuple, list)) else batch
    return x


@torch.no_grad()
def update_norm_stats(model: nn.Module, batches: Iterable[Any], num_batches: int) -> int:
    """Re-estimate running statistics as the batch average over ``num_batches`` batches.

    The SN paper's *batch average* inference (Section 3.1, "Inference"): freeze the network,
    feed it batches in training mode without gradients, and give the BN part of every layer
    the statistics of those batches. Every normlab norm with running statistics and every
    torch BatchNorm is re-estimated; every module's mode and settings are restored.

    Which statistics: the paper says it averages "the means and variances produced by all
    these mini-batches"; the authors' helper sums each batch's mean and ``var + mean^2``,
    divides by the number of batches and subtracts the squared mean -- the *pooled*
    variance (mean of the per-batch variances plus the variance of the per-batch means).
    This function computes the pooled one: it is what a BN layer's inference statistics
    estimate, the variance of the layer's input over the data, whereas the mean of per-batch
    variances falls short of it by the variance of the batch means -- most at the small
    batches SN is meant for; and it is what the authors' released code computes. So:

    - by default (and for torch BatchNorm): ``running_mean`` and ``running_var`` are the
      mean and the unbiased (Bessel-corrected) variance, per channel, of all the values the
      layer's BN part saw over the batches, each value counting once (virtual batches and
      processes pooled alike) -- for one batch, torch's running statistics with
      ``momentum=1``;
    - for SwitchNorm with ``semantics="authors"`` (:func:`normlab.norms.compat.official_sn_kwargs`):
      exactly the authors' helper -- ``running_mean`` the mean of the batch means,
      ``running_var`` the mean of ``var_b + mean_b^2`` minus its square, each batch
      weighted 1, ``var_b`` the BN variance of their training forward, no Bessel factor.

    Args:
        model: the network.
        batches: an iterable of input tensors, or of ``(inputs, ...)`` tuples.
        num_batches: how many batches to average (fewer if ``batches`` runs out).

    Returns:
        The number of batches used.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    layers = [
        m
        for m in model.modules()
        if isinstance(m, BatchStatistics)
        and _has_running_stats(m)
        and not is_frozen(m)  # frozen by normlab.freeze_norm: kept
    ]
    torch_layers = [
        m for m in model.modules() if isinstance(m, _BatchNorm) and _has_running_stats(m)
    ]
    saved_modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, m.update_running_stats, m.sums_running_stats) for m in layers]
    saved_torch = [m.momentum for m in torch_layers]
    weights: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(_sum_input_statistics(weights)) for m in torch_layers]
    for layer in layers:
        layer.start_batch_average()
        layer.update_running_stats = layer.sums_running_stats = True
    for bn in torch_layers:
        bn.reset_running_stats()
        _running(bn)[1].zero_()
        bn.momentum = 0.0
        weights[bn] = torch.zeros((), dtype=torch.float64)
    used = 0
    try:
        model.train()
        for batch in batches:
            if used >= num_batches:
                break
            model(_inputs(batch))
            used += 1
        for layer in layers:
            layer.finish_batch_average()
        for bn in torch_layers:
            if float(weights[bn]) == 0:  # no batch reached this layer
                bn.reset_running_stats()
            else:
                running_mean, running_var = _running(bn)
                pool_sums(running_mean, running_var, weights[bn].to(running_var.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        for layer, (momentum, update, sums) in zip(layers, saved):
            layer.momentum, layer.update_running_stats, layer.sums_running_stats = (
                momentum, update, sums
            )
            layer.summed_weight = None
        for bn, momentum in zip(torch_layers, saved_torch):
            bn.momentum = momentum
        for module, mode in saved_modes.items():
            module.training = mode
    if used == 0:
        raise ValueError("update_norm_stats got no batches; pass a non-empty iterable")
    return used


def _has_running_stats(layer: BatchStatistics | _BatchNorm) -> bool:
    return layer.track_running_stats and layer.running_mean is not None


def _running(layer: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A torch BatchNorm's ``running_mean`` and ``running_var`` (it tracks them here)."""
    assert layer.running_mean is not None and layer.running_var is not None
    return layer.running_mean, layer.running_var


def _sum_input_statistics(
    weights: dict[nn.Module, torch.Tensor],
) -> Callable[[_BatchNorm, tuple[Any, ...]], None]:
    """A forward pre-hook that adds a torch BatchNorm input's per-channel sums (weighted by
    its values per channel) to the layer's buffers and its weight to ``weights``."""

    def hook(module: _BatchNorm, args: tuple[Any, ...]) -> None:
        x = args[0]
        if x.numel() == 0:
            return
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(statistics_dtype(x))
        var, mean = torch.var_mean(flat, dim=1, correction=0)
        values = torch.tensor([[flat.shape[1]]], dtype=flat.dtype, device=flat.device)
        running_mean, running_var = _running(module)
        add_sums(running_mean, running_var, mean[None], var[None], values)
        weights[module] = weights[module] + flat.shape[1]

    return hook
