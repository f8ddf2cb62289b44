"""COCO segmentations (polygons, RLE) as binary masks, through pycocotools.

pycocotools (``pip install normlab[vision]``) is imported only when needed.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

__all__ = [
    "decode_segmentation",
    "pack_segmentations",
    "pycocotools_modules",
    "unpack_segmentation",
]


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
            "COCO annotations need pycocotools; install it with `pip install normlab[vision]`"
        ) from error
    return COCO, mask_api


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The binary mask of a COCO segmentation: a list of polygons ``[x1, y1, x2, y2, ...]``
    (lists or arrays; rasterized by pycocotools and merged), an uncompressed RLE
    (``counts`` a list) or a compressed one (``counts`` a string), as ``COCO.annToMask``
    decodes them.

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


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed run-length encodings of binary masks, as JSON values (``counts`` a
    string: what ``instances_*.json`` files and COCO results hold).

    Shape:
        - masks: (R, H, W) uint8 in {0, 1}.
        - output: R dicts ``{"size": [H, W], "counts": str}``.
    """
    if not len(masks):
        return []
    _, mask_api = pycocotools_modules()
    rles = mask_api.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in rles]


def pack_segmentations(segmentations: list[Any]) -> dict[str, np.ndarray]:
    """Compact arrays of many annotations' segmentations (checked ones: polygons or RLE).

    Polygons are kept as float64 coordinates (no Python object per annotation, and ~30x
    faster to pack than JSON text), RLEs (rare outside crowd annotations) as JSON text.

    Returns:
        ``polygon_xy`` float64 (all coordinates), ``polygon_at`` int64 (P + 1,) offsets of
        each polygon in it, ``polygons_of`` int64 (A + 1,) the polygons of annotation
        ``a`` (``polygons_of[a]:polygons_of[a + 1]``), ``rle_text`` uint8 JSON text with
        ``rle_at`` int64 (A + 1,) offsets (empty for a polygon annotation).
    """
    polygons: list[np.ndarray] = []
    polygons_of, rles = [0], []
    for segmentation in segmentations:
        if isinstance(segmentation, list):
            polygons += [np.asarray(p, dtype=np.float64) for p in segmentation]
            rles.append(b"")
        else:
            rles.append(json.dumps(segmentation).encode())
        polygons_of.append(len(polygons))
    sizes = [len(p) for p in polygons]
    return {
        "polygon_xy": np.concatenate(polygons) if polygons else np.zeros(0),
        "polygon_at": np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]),
        "polygons_of": np.array(polygons_of, dtype=np.int64),
        "rle_text": np.frombuffer(b"".join(rles), dtype=np.uint8),
        "rle_at": np.concatenate([[0], np.cumsum([len(r) for r in rles], dtype=np.int64)]),
    }


def unpack_segmentation(arrays: dict[str, np.ndarray], a: int) -> Any:
    """Segmentation ``a`` of :func:`pack_segmentations`' arrays: a list of float64
    polygons, or an RLE dict."""
    start, stop = arrays["rle_at"][a], arrays["rle_at"][a + 1]
    if stop > start:
        return json.loads(arrays["rle_text"][start:stop].tobytes())
    at, xy, first = arrays["polygon_at"], arrays["polygon_xy"], arrays["polygons_of"]
    return [xy[at[p] : at[p + 1]] for p in range(first[a], first[a + 1])]
