"""Functional core: per-(n, c) moments, exact pooling, and the affine op with its backends.

Imports torch only. See DESIGN.md, "The one idea: moments -> coefficients -> affine".
"""

from normlab.functional.affine import (
    AffineNormFunction,
    CoefficientFn,
    affine_norm,
    apply_affine,
    plain_moments,
)
from normlab.functional.backends import (
    BACKENDS,
    get_backend,
    resolve_backend,
    set_backend,
    use_backend,
)
from normlab.functional.moments import (
    instance_moments,
    instance_moments_nograd,
    spatial_dims,
    spatial_size,
    spatial_sums,
    statistics_dtype,
)
from normlab.functional.pooling import (
    batch_moments,
    group_moments,
    layer_moments,
    pool_moments,
    virtual_batch_moments,
)
from normlab.functional.replay import is_replaying, replaying

__all__ = [
    "BACKENDS",
    "AffineNormFunction",
    "CoefficientFn",
    "affine_norm",
    "apply_affine",
    "batch_moments",
    "get_backend",
    "group_moments",
    "instance_moments",
    "instance_moments_nograd",
    "is_replaying",
    "layer_moments",
    "plain_moments",
    "pool_moments",
    "replaying",
    "resolve_backend",
    "set_backend",
    "spatial_dims",
    "spatial_size",
    "spatial_sums",
    "statistics_dtype",
    "use_backend",
    "virtual_batch_moments",
]
