"""COCO segmentations (polygons, RLE) as binary masks, through pycocotools.

pycocotools (``pip install normlab[detection]``) is imported only when needed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["decode_segmentation", "pycocotools_modules"]


def pycocotools_modules() -> tuple[Any, Any]:
    """pycocotools' ``COCO`` class and ``mask`` module.

    Raises:
        ImportError: If pycocotools is not installed, saying how to install it.
    """
    try:
        import pycocotools.mask as mask_api  # optional dependency: pycocotools
        from pycocotools.coco import COCO  # optional dependency: pycocotools
    except ImportError as error:
        raise ImportError(
            "COCO annotations need pycocotools; install it with `pip install normlab[detection]`"
        ) from error
    return COCO, mask_api


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The binary mask of a COCO segmentation: a list of polygons ``[x1, y1, x2, y2, ...]``
    (rasterized by pycocotools and merged), an uncompressed RLE (``counts`` a list) or a
    compressed one (``counts`` a string), as ``COCO.annToMask`` decodes them.

    Shape:
        (height, width) uint8 in {0, 1}.
    """
    _, mask_api = pycocotools_modules()
    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_api.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():  # pycocotools 2.0.10 under NumPy 2: a harmless notice
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        mask = mask_api.decode(rle)
    return np.ascontiguousarray(mask)
