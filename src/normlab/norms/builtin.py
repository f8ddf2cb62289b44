"""The normalizers that ship with normlab.

Each module registers its norm with :func:`~normlab.norms.registry.register_norm` when it
is imported; importing them here, in this order, is what makes
:func:`~normlab.norms.list_norms` list them in this order. A new normalizer is one module
in this package and one line here.
"""

# ruff: noqa: F401, I001 - imported to register them, in the order of the registry

from normlab.norms import standard  # bn, in, ln, gn
from normlab.norms import switch  # sn
from normlab.norms import iebn  # iebn
from normlab.norms import batch_instance  # bin
from normlab.norms import batch_renorm  # brn

__all__: list[str] = []
