"""Switchable Normalization (SN; Luo et al., SN paper Eqn. 1-5).

SN normalizes with a softmax-weighted mix of the statistics of several normalizers:

    mu      = sum_k w_k  * mu_k          (Eqn. 3)
    sigma^2 = sum_k w'_k * sigma^2_k     (Eqn. 3)
    w_k = softmax(lambda)_k, w'_k = softmax(lambda')_k   (Eqn. 5)

with k over IN, LN and BN (and optionally GN), all derived from the per-(n, c) IN moments
(Eqn. 4; here with the exact parallel-variance rule). ``harden()`` replaces the soft
ratios by one-hot argmax ratios and freezes them (SN paper 4.1.4, Table III).
"""

from __future__ import annotations

import torch
from torch import nn

from normlab.functional import group_moments, layer_moments
from normlab.norms.base import NormBase, NormInputError
from normlab.norms.batch_stats import BatchStatistics
from normlab.norms.standard import default_num_groups, standardize

__all__ = ["SwitchNorm", "SwitchNorm1d", "SwitchNorm2d", "SwitchNorm3d"]

NORMALIZERS = ("in", "ln", "bn", "gn")


def _canonical(normalizers, using_bn: bool, dim: int) -> tuple[str, ...]:
    if normalizers is None:
        normalizers = ("ln", "bn") if dim == 1 else ("in", "ln", "bn")
        if not using_bn:
            normalizers = tuple(k for k in normalizers if k != "bn") or ("in", "ln")
    unknown = [k for k in normalizers if k not in NORMALIZERS]
    if unknown or len(set(normalizers)) != len(normalizers) or not normalizers:
        raise ValueError(
            f"SwitchNorm normalizers must be distinct names from {', '.join(NORMALIZERS)}; "
            f"got {tuple(normalizers)}"
        )
    return tuple(k for k in NORMALIZERS if k in normalizers)


def _mix(ratios: torch.Tensor, values: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``sum_k ratios[k] * values[k]`` (SN Eqn. 3) as a chain of fused multiply-adds."""
    weights = ratios.unbind(0)
    mixed = weights[0] * values[0]
    for weight, value in zip(weights[1:], values[1:]):
        mixed = torch.addcmul(mixed, weight, value)
    return mixed


class SwitchNorm(BatchStatistics, NormBase):
    """Switchable Normalization on the shared core.

    Args:
        num_features: C.
        eps, momentum, track_running_stats, virtual_batch_size: as for BatchNorm (the BN
            part); ``momentum`` uses PyTorch's convention (the authors' ``m`` is
            ``1 - momentum``).
        normalizers: which statistics to mix, from ``in``, ``ln``, ``bn``, ``gn``; the
            logits follow that canonical order. Default ``(in, ln, bn)``; for the 1d layer
            ``(ln, bn)`` (IN is undefined on (N, C) input), as in the authors'
            ``SwitchNorm1d``.
        using_bn: False drops BN from the default normalizers (``(in, ln)``; no running
            statistics).
        using_moving_average: False stops training from moving the running statistics;
            estimate them before eval with :func:`normlab.update_norm_stats` (the SN
            paper's batch-average inference).
        last_gamma: initialize ``weight`` to 0 (for the last norm of a residual unit).
        num_groups: groups of the ``gn`` statistics (default as in GroupNorm).
        unbiased_instance_var: use the unbiased per-(n, c) variance inside all statistics,
            as the authors' code does (needed to reproduce their checkpoints). On maps of
            one element the biased (zero) variance is used instead of the authors' NaN.

    Parameters:
        ``weight``, ``bias`` (C,); ``mean_weight``, ``var_weight`` (K,) softmax logits,
        init 1, K = len(normalizers).

    Shape:
        - input: (N, C, *); output: same.
    """

    param_roles = {**NormBase.param_roles, "mean_weight": "switch", "var_weight": "switch"}

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        normalizers: tuple[str, ...] | None = None,
        using_bn: bool = True,
        using_moving_average: bool = True,
        last_gamma: bool = False,
        num_groups: int | None = None,
        unbiased_instance_var: bool = False,
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, affine, backend=backend)
        self.normalizers = _canonical(normalizers, using_bn, self.dim)
        self.init_batch_statistics(
            num_features,
            momentum,
            track_running_stats and "bn" in self.normalizers,
            virtual_batch_size,
        )
        self.update_running_stats = bool(using_moving_average)
        self.last_gamma = bool(last_gamma)
        self.num_groups = (
            default_num_groups(num_features, num_groups) if "gn" in self.normalizers else None
        )
        self.unbiased_instance_var = bool(unbiased_instance_var)
        self.hard = False
        self.mean_weight = nn.Parameter(torch.ones(len(self.normalizers)))
        self.var_weight = nn.Parameter(torch.ones(len(self.normalizers)))
        if self.affine and self.last_gamma:
            nn.init.zeros_(self.weight)

    @property
    def pools_batch(self) -> bool:
        """Whether BN statistics are among the mixed ones (only they pool over samples)."""
        return "bn" in self.normalizers

    @property
    def using_moving_average(self) -> bool:
        return self.update_running_stats

    def coefficient_params(self):
        return {
            **super().coefficient_params(),
            "mean_weight": self.mean_weight,
            "var_weight": self.var_weight,
        }

    def ratios(
        self, params: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixing ratios ``(w, w')`` (Eqn. 5): softmax, or one-hot once hardened."""
        params = params or self.coefficient_params()
        logits = (params["mean_weight"], params["var_weight"])
        if self.hard:
            return tuple(
                nn.functional.one_hot(t.argmax(), t.numel()).to(t.dtype) for t in logits
            )
        return tuple(torch.softmax(t, dim=0) for t in logits)

    def statistics(
        self, mean: torch.Tensor, var: torch.Tensor, count: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, var) of each normalizer in ``self.normalizers``, broadcastable to (N, C)."""
        if self.unbiased_instance_var and count > 1:
            var = var * (count / (count - 1))
        stats = {
            "in": lambda: (mean, var),
            "ln": lambda: layer_moments(mean, var),
            "bn": lambda: self.batch_statistics(mean, var, count),
            "gn": lambda: group_moments(mean, var, self.num_groups),
        }
        return [stats[k]() for k in self.normalizers]

    def normalizer(self, mean, var, params, count):
        mean_ratio, var_ratio = self.ratios(params)
        means, variances = zip(*self.statistics(mean, var, count))
        return standardize(_mix(mean_ratio, means), _mix(var_ratio, variances), self.eps)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if x.dim() == 2 and "in" in self.normalizers:
            raise NormInputError(
                f"{type(self).__name__}: IN statistics are undefined for (N, C) inputs; "
                "use normalizers=('ln', 'bn') (the 1d default)"
            )

    @torch.no_grad()
    def harden(self) -> None:
        """Freeze the ratios as one-hot argmax selections (SN paper 4.1.4, Table III)."""
        self.hard = True
        self.mean_weight.requires_grad_(False)
        self.var_weight.requires_grad_(False)

    def selected(self) -> tuple[str, str]:
        """The normalizers with the largest mean and variance ratios."""
        return (
            self.normalizers[int(self.mean_weight.argmax())],
            self.normalizers[int(self.var_weight.argmax())],
        )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.hard:
            destination[prefix + "hard"] = torch.tensor(True)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs,
    ):
        hard = state_dict.pop(prefix + "hard", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )
        if hard is not None:
            state_dict[prefix + "hard"] = hard
            if bool(hard):
                self.harden()

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, normalizers={self.normalizers}"
        if self.hard:
            text += f", hard={self.selected()}"
        return text


class SwitchNorm1d(SwitchNorm):
    dim = 1


class SwitchNorm2d(SwitchNorm):
    dim = 2


class SwitchNorm3d(SwitchNorm):
    dim = 3
