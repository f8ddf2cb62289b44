"""Loading pickled NumPy data without executing arbitrary code.

The CIFAR archives are Python pickles. :func:`load_array_pickle` unpickles them with an
allow-list that admits only the NumPy array-reconstruction functions (and ``_codecs.encode``,
which protocol-2 pickles use for byte strings), so a tampered file raises an error instead of
running code.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

__all__ = ["load_array_pickle"]

_ALLOWED_NUMPY_NAMES = frozenset({"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"})
_NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        if module.split(".")[0] == "numpy" and name in _ALLOWED_NUMPY_NAMES:
            if module.startswith(("numpy.core.", "numpy._core.")):
                module = _NUMPY_CORE + module[module.index(".", len("numpy.")) :]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays)")


def load_array_pickle(payload: bytes) -> Any:
    """Unpickle ``payload`` allowing only builtin containers and NumPy arrays.

    Python 2 strings are decoded as latin-1, as the official CIFAR files need.

    Raises:
        pickle.UnpicklingError: If the payload is not a pickle or references other classes.
        EOFError: If the payload is truncated.
    """
    return _ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()
