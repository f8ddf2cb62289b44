"""Normalization layers on the shared core, their registry and model-wide helpers."""

from normlab.norms.base import NormBase, NormInputError
from normlab.norms.batch_instance import (
    BatchInstanceNorm,
    BatchInstanceNorm1d,
    BatchInstanceNorm2d,
    BatchInstanceNorm3d,
)
from normlab.norms.batch_stats import BatchStatistics
from normlab.norms.convert import convert_norm, is_norm_layer
from normlab.norms.iebn import IEBN, IEBN1d, IEBN2d, IEBN3d
from normlab.norms.registry import (
    NormSpec,
    create_norm,
    list_norms,
    norm_aliases,
    register_norm,
    resolve_norm,
)
from normlab.norms.standard import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    GroupNorm1d,
    GroupNorm2d,
    GroupNorm3d,
    InstanceNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    LayerNorm1d,
    LayerNorm2d,
    LayerNorm3d,
)
from normlab.norms.summary import norm_summary
from normlab.norms.switch import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from normlab.norms.training import (
    param_groups,
    parameter_roles,
    post_step,
    set_noise,
    set_virtual_batch_size,
    update_norm_stats,
)

__all__ = [
    "IEBN",
    "BatchInstanceNorm",
    "BatchInstanceNorm1d",
    "BatchInstanceNorm2d",
    "BatchInstanceNorm3d",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchStatistics",
    "GroupNorm",
    "GroupNorm1d",
    "GroupNorm2d",
    "GroupNorm3d",
    "IEBN1d",
    "IEBN2d",
    "IEBN3d",
    "InstanceNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LayerNorm1d",
    "LayerNorm2d",
    "LayerNorm3d",
    "NormBase",
    "NormInputError",
    "NormSpec",
    "SwitchNorm",
    "SwitchNorm1d",
    "SwitchNorm2d",
    "SwitchNorm3d",
    "convert_norm",
    "create_norm",
    "is_norm_layer",
    "list_norms",
    "norm_aliases",
    "norm_summary",
    "param_groups",
    "parameter_roles",
    "post_step",
    "register_norm",
    "resolve_norm",
    "set_noise",
    "set_virtual_batch_size",
    "update_norm_stats",
]
