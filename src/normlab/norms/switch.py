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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from normlab.functional import group_moments, layer_moments
from normlab.norms.base import Coefficients, NormBase, NormInputError, Params
from normlab.norms.batch_stats import BatchStatistics, unbiased_variance
from normlab.norms.registry import FigureSpec, Record, TorchTwin, register_norm
from normlab.norms.standard import default_num_groups, standardize

__all__ = ["SwitchNorm", "SwitchNorm1d", "SwitchNorm2d", "SwitchNorm3d"]

NORMALIZERS = ("in", "ln", "bn", "gn")
SEMANTICS = ("torch", "authors")


def _canonical(normalizers: Sequence[str] | None, using_bn: bool, dim: int) -> tuple[str, ...]:
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


def _mix(ratios: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """``sum_k ratios[k] * values[k]`` (SN Eqn. 3) as a chain of fused multiply-adds."""
    weights = ratios.unbind(0)
    mixed = weights[0] * values[0]
    for k in range(1, len(values)):
        mixed = torch.addcmul(mixed, weights[k], values[k])
    return mixed


def _ratios(logits: torch.Tensor, hard: bool) -> torch.Tensor:
    """Softmax of the logits (Eqn. 5), or the one-hot argmax once hardened."""
    if hard:
        return nn.functional.one_hot(logits.argmax(), logits.numel()).to(logits.dtype)
    return torch.softmax(logits, dim=0)


def _summary(layer: SwitchNorm) -> Record:
    """``norm_summary``'s SN fields: the normalizers and their ratios (Eqn. 5), ``hard``."""
    mean_ratio, var_ratio = layer.ratios()
    return {
        "normalizers": list(layer.normalizers),
        "mean_ratios": [float(r) for r in mean_ratio],
        "var_ratios": [float(r) for r in var_ratio],
        "hard": layer.hard,
    }


@register_norm(
    "sn",
    aliases=("switchnorm", "switchable", "switch"),
    twin=TorchTwin("bn", point={"normalizers": ("bn",)}, init={"last_gamma": True}),
    summary=_summary,
    figure=FigureSpec(
        kind="ratios",
        file="sn_ratios.png",
        caption="SN's mean and variance ratios (IN, LN, BN) per layer, as in the SN paper's "
        "Fig. 5",
        keys=("mean_ratios", "var_ratios"),
        labels=("mean ratio", "variance ratio"),
        xlabel="SN layer (input → output)",
        parts="normalizers",
    ),
)
class SwitchNorm(BatchStatistics, NormBase):
    """Switchable Normalization on the shared core.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, bias, device, dtype,
            virtual_batch_size: as for BatchNorm (the BN part follows torch's BatchNorm);
            ``momentum`` uses PyTorch's convention (the authors' ``m`` is ``1 - momentum``).
        normalizers: which statistics to mix, from ``in``, ``ln``, ``bn``, ``gn``; the
            logits follow that canonical order. Default ``(in, ln, bn)``; for the 1d layer
            ``(ln, bn)`` (IN is undefined on (N, C) input), as in the authors'
            ``SwitchNorm1d``.
        using_bn: False drops BN from the default normalizers (``(in, ln)``; no running
            statistics).
        using_moving_average: False stops training from moving the running statistics;
            estimate them before eval with :func:`normlab.update_norm_stats` (the SN
            paper's batch-average inference). Under ``semantics="authors"`` training adds
            each batch's BN mean and ``var + mean^2`` to the buffers instead, as the
            authors' layers do (their helper, and :func:`normlab.update_norm_stats`, zero
            them first and divide afterwards).
        last_gamma: initialize ``weight`` to 0 (for the last norm of a residual unit).
        num_groups: groups of the ``gn`` statistics (default as in GroupNorm).
        unbiased_instance_var: use the unbiased per-(n, c) variance inside all statistics,
            as the authors' code does (needed to reproduce their checkpoints). On maps of
            one element the biased (zero) variance is used instead of the authors' NaN.
        semantics: ``"torch"`` (default) or ``"authors"``. The default follows
            :class:`torch.nn.BatchNorm2d` for the BN part: biased statistics inside the
            layer, an unbiased (Bessel-corrected, ``NM/(NM-1)``) ``running_var``, frozen
            buffers when ``using_moving_average=False``, running variance initialised to 1
            -- so that SN behaves as every other norm here and as torch's BN users expect.
            ``"authors"`` reproduces the authors' ``SwitchNorm1d/2d/3d`` step for step
            (set by :func:`normlab.norms.compat.official_sn_kwargs`): the unbiased
            instance variance inside all statistics (implies ``unbiased_instance_var``);
            on (N, C) input the unbiased LN variance over C and BN variance over N, as
            their 1d layer computes them (inputs with spatial axes follow their 2d/3d
            rule); ``running_var`` tracks the BN variance used in training, without
            Bessel's factor, and starts at 0; summed buffers with
            ``using_moving_average=False`` (see above).

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
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        normalizers: tuple[str, ...] | None = None,
        using_bn: bool = True,
        using_moving_average: bool = True,
        last_gamma: bool = False,
        num_groups: int | None = None,
        unbiased_instance_var: bool = False,
        semantics: str = "torch",
        virtual_batch_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        if semantics not in SEMANTICS:
            raise ValueError(f"SwitchNorm semantics must be one of {SEMANTICS}, got {semantics!r}")
        super().__init__(
            num_features, eps, affine, bias=bias, device=device, dtype=dtype, backend=backend
        )
        self.normalizers = _canonical(normalizers, using_bn, self.dim)
        self.init_batch_statistics(
            num_features,
            momentum,
            track_running_stats and "bn" in self.normalizers,
            virtual_batch_size,
            device=device,
            dtype=dtype,
        )
        self.semantics = semantics
        self.update_running_stats = bool(using_moving_average) or semantics == "authors"
        self.sums_running_stats = not using_moving_average and semantics == "authors"
        if semantics == "authors":
            self.reset_running_stats()
        self.last_gamma = bool(last_gamma)
        self.num_groups = (
            default_num_groups(num_features, num_groups) if "gn" in self.normalizers else None
        )
        self.unbiased_instance_var = bool(unbiased_instance_var) or semantics == "authors"
        self.hard = False
        logits = len(self.normalizers)
        self.mean_weight = nn.Parameter(self.new_channel_tensor(1.0, device, dtype, logits))
        self.var_weight = nn.Parameter(self.new_channel_tensor(1.0, device, dtype, logits))
        if self.affine and self.last_gamma:
            nn.init.zeros_(self.weight)

    def reset_parameters(self) -> None:
        """BatchNorm's reset, the ratio logits back to 1 and, with ``last_gamma``,
        ``weight`` back to 0."""
        super().reset_parameters()
        with torch.no_grad():
            self.mean_weight.fill_(1.0)
            self.var_weight.fill_(1.0)
            if self.weight is not None and self.last_gamma:
                self.weight.zero_()

    @property
    def pools_batch(self) -> bool:
        """Whether BN statistics are among the mixed ones (only they pool over samples)."""
        return "bn" in self.normalizers

    @property
    def using_moving_average(self) -> bool:
        return self.update_running_stats and not self.sums_running_stats

    def reset_running_stats(self) -> None:
        """As BatchNorm's; under ``semantics="authors"`` the running variance starts at 0."""
        super().reset_running_stats()
        if self.semantics == "authors" and self.track_running_stats:
            self.tracked_buffers()[1].zero_()

    def batch_variance(
        self, var: torch.Tensor, values: int | torch.Tensor, count: int
    ) -> torch.Tensor:
        """The authors' 1d layer normalizes (N, C) input with the unbiased BN variance."""
        if self.semantics == "authors" and count == 1:
            return unbiased_variance(var, values)
        return var

    def running_variance(self, var: torch.Tensor, values: int | torch.Tensor) -> torch.Tensor:
        """The authors' ``running_var`` tracks the training BN variance as it is."""
        if self.semantics == "authors":
            return var
        return unbiased_variance(var, values)  # BatchStatistics.running_variance's rule

    def summing_weight(self, values: int | torch.Tensor) -> int | torch.Tensor:
        """The authors sum each batch with weight 1 (their helper divides by the count)."""
        if self.semantics == "authors":
            return 1
        return values

    def coefficient_params(self) -> Params:
        params = self.affine_params()
        params["mean_weight"] = self.mean_weight
        params["var_weight"] = self.var_weight
        return params

    def ratios(
        self, params: Params | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixing ratios ``(w, w')`` (Eqn. 5): softmax, or one-hot once hardened."""
        if params is None:
            params = self.coefficient_params()
        mean_logits, var_logits = params["mean_weight"], params["var_weight"]
        assert mean_logits is not None and var_logits is not None
        return _ratios(mean_logits, self.hard), _ratios(var_logits, self.hard)

    def statistics(
        self, mean: torch.Tensor, var: torch.Tensor, count: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, var) of each normalizer in ``self.normalizers``, broadcastable to (N, C)."""
        if self.unbiased_instance_var and count > 1:
            var = unbiased_variance(var, count)
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k in self.normalizers:
            if k == "in":
                stats.append((mean, var))
            elif k == "ln":
                stats.append(self.layer_statistics(mean, var, count))
            elif k == "bn":
                stats.append(self.batch_statistics(mean, var, count))
            else:
                groups = self.num_groups
                assert groups is not None  # set whenever "gn" is mixed
                stats.append(group_moments(mean, var, groups))
        return stats

    def layer_statistics(
        self, mean: torch.Tensor, var: torch.Tensor, count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LN statistics; the authors' 1d layer uses the unbiased variance over C."""
        ln_mean, ln_var = layer_moments(mean, var)
        if self.semantics == "authors" and count == 1:
            ln_var = unbiased_variance(ln_var, mean.shape[1])
        return ln_mean, ln_var

    def normalizer(
        self, mean: torch.Tensor, var: torch.Tensor | None, params: Params, count: int
    ) -> Coefficients:
        assert var is not None  # SN always reads the variance
        mean_ratio, var_ratio = self.ratios(params)
        stats = self.statistics(mean, var, count)
        means = [s[0] for s in stats]
        variances = [s[1] for s in stats]
        return standardize(_mix(mean_ratio, means), _mix(var_ratio, variances), self.eps)

    def check_input(self, x: torch.Tensor, channel_dim: int = 1) -> None:
        self.check_layout(x, channel_dim)
        if x.dim() == 2 and "in" in self.normalizers:
            raise NormInputError(
                f"{self.layer_name}: IN statistics are undefined for (N, C) inputs; "
                "use normalizers=('ln', 'bn') (the 1d default)"
            )

    @torch.no_grad()
    def harden(self) -> None:
        """Freeze the ratios as one-hot argmax selections (SN paper 4.1.4, Table III)."""
        self.hard = True
        self.mean_weight.requires_grad_(False)
        self.var_weight.requires_grad_(False)

    @torch.no_grad()
    def start_from_bn(self) -> str:
        """Make the layer compute what the BN whose weights it holds computes: the BN
        logits are set above the others and the ratios hardened to one-hot BN (exact:
        the other statistics enter with weight 0). The ratios are then frozen, as after
        :meth:`harden`; to learn them from there, set ``hard = False`` and
        ``requires_grad_(True)`` on ``mean_weight``/``var_weight``: the soft ratios of
        the logits set here (BN's 1, the others 0) are not BN-only, and no softmax point
        is (BN's weight is ``1 / (1 + (K - 1) e^-d)`` for a logit gap ``d``).

        Raises:
            ValueError: when BN is not among ``normalizers``.
        """
        if "bn" not in self.normalizers:
            raise ValueError(
                f"{type(self).__name__} with normalizers={self.normalizers} cannot start as "
                "BN; include 'bn' in normalizers"
            )
        for logits in (self.mean_weight, self.var_weight):
            logits.zero_()
            logits[self.normalizers.index("bn")] = 1.0
        self.harden()
        return "exact"

    def selected(self) -> tuple[str, str]:
        """The normalizers with the largest mean and variance ratios."""
        return (
            self.normalizers[int(self.mean_weight.argmax())],
            self.normalizers[int(self.var_weight.argmax())],
        )

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.hard:
            destination[prefix + "hard"] = torch.tensor(True)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
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
        if self.semantics != "torch":
            text += f", semantics={self.semantics!r}"
        if self.hard:
            text += f", hard={self.selected()}"
        return text


class SwitchNorm1d(SwitchNorm):
    dim = 1


class SwitchNorm2d(SwitchNorm):
    dim = 2


class SwitchNorm3d(SwitchNorm):
    dim = 3
