"""Decoding one encoded image file into a uint8 tensor, with Pillow.

Pillow is needed (``pip install normlab[images]``) and imported only when an image is
decoded. Every failure to decode (a corrupt, truncated or non-image file, a possible
decompression bomb) becomes a one-line :class:`CorruptDatasetError` naming the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptDatasetError

__all__ = ["decode_image", "import_pillow", "pillow_errors"]

_FIX = "Remove or replace the file"


def import_pillow() -> tuple[Any, Any]:
    """Pillow's ``Image`` and ``ImageOps`` modules.

    Raises:
        ImportError: If Pillow is not installed, saying how to install it.
    """
    try:
        from PIL import Image, ImageOps  # optional dependency: Pillow
    except ImportError as error:
        raise ImportError(
            "reading image folders needs Pillow; install it with `pip install normlab[images]`"
        ) from error
    return Image, ImageOps


@contextmanager
def pillow_errors(name: str | Path) -> Iterator[None]:
    """Turn what Pillow raises while opening or decoding ``name`` into CorruptDatasetError.

    Pillow's decompression-bomb warning (an image of more than ``Image.MAX_IMAGE_PIXELS``
    pixels) is an error here too, so a huge image is refused, not decoded. Any other
    exception while decoding is the file's fault (Pillow raises OSError, SyntaxError,
    ValueError, EOFError, struct.error ... on malformed input), so every one is caught.

    Raises:
        CorruptDatasetError: Naming ``name``, on one line.
    """
    image_module, _ = import_pillow()
    bombs = (image_module.DecompressionBombError, image_module.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            yield
    except bombs as error:
        raise CorruptDatasetError(
            name,
            f"refused a possible decompression bomb ({error})".replace("\n", " "),
            "Remove the file, or shrink the image",
        ) from error
    except image_module.UnidentifiedImageError as error:
        raise CorruptDatasetError(
            name, "cannot decode the image (not a format Pillow reads)", _FIX
        ) from error
    except Exception as error:  # noqa: BLE001 - malformed input raises many kinds
        kind = "" if isinstance(error, OSError) else f"{type(error).__name__}: "
        problem = f"cannot decode the image ({kind}{error})".replace("\n", " ")
        raise CorruptDatasetError(name, problem, _FIX) from error


def _libjpeg_turbo_rgb(data: bytes) -> torch.Tensor | None:
    """An RGB JPEG decoded by torchvision's libjpeg-turbo decoder as (C, H, W) with
    channels-last strides, or ``None`` without torchvision. Its pixels equal Pillow's (both
    are libjpeg-turbo with the same settings) and it decodes about 1.6x faster, measured on
    500x375 photos; it raises on a truncated or corrupt file, like Pillow."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # optional dependency: torchvision
    except ImportError:
        return None
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        image: torch.Tensor = decode_jpeg(encoded, mode=ImageReadMode.RGB)
    return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def decode_image(
    data: bytes, *, channels: int = 3, min_size: int | None = None, name: str
) -> torch.Tensor:
    """Decode an encoded image (JPEG, PNG, ... any format Pillow reads).

    With ``min_size``, a JPEG is decoded at reduced size by libjpeg (Pillow's ``draft``):
    at the smallest of the scales 1, 1/2, 1/4, 1/8 whose shorter side stays at least
    ``min_size`` (both sides at least ``min_size``, so the shorter one does), which saves
    most of the decoding time when the target is much smaller than the image. Other
    formats, and JPEGs too small to shrink, are decoded at full size; a full-size RGB JPEG
    by torchvision's libjpeg-turbo decoder when torchvision is installed (same pixels,
    faster; torchvision 0.29 deprecates its decoders, and without them Pillow decodes).
    Without ``min_size`` the result equals
    ``np.array(Image.open(file).convert(mode))``.

    Args:
        data: The file's bytes.
        channels: 3 (RGB) or 1 (grey).
        min_size: Shorter side the decoded image must keep, or ``None`` for full size.
        name: The file's name in error messages (a path, or ``shard.tar:member``).

    Returns:
        uint8 tensor (C, H, W), a view of an (H, W, C) array (channels-last strides, the
        layout torchvision's uint8 resize is fastest on).

    Shape:
        (C, H, W) with C = ``channels``.

    Raises:
        CorruptDatasetError: The data are not a decodable image, or a possible
            decompression bomb; the message names ``name``.
        ImportError: If Pillow is not installed.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image_module, _ = import_pillow()
    mode = "RGB" if channels == 3 else "L"
    with pillow_errors(name), image_module.open(io.BytesIO(data)) as image:
        full_size = image.size
        if min_size is not None and image.format == "JPEG":
            image.draft(None, (min_size, min_size))
        if image.format == "JPEG" and image.mode == mode == "RGB" and image.size == full_size:
            decoded = _libjpeg_turbo_rgb(data)
            if decoded is not None:
                return decoded
        image.load()
        pixels = np.array(image if image.mode == mode else image.convert(mode), dtype=np.uint8)
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels)).permute(2, 0, 1)
