"""Decoding a user-supplied image (a replica portrait, a camera frame): one place for the checks both need."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps


class UnreadableImage(Exception):
    """The bytes are not an intact image; the caller turns this into its own typed error."""


def decode_rgb(data: bytes, check: Callable[[str | None, int, int], None]) -> npt.NDArray[np.uint8]:
    """An image as (H, W, 3) RGB uint8, EXIF orientation applied. `check(format, width, height)` runs on the
    header, before the pixels are decoded, and raises the caller's typed error to refuse the image. The image is
    decoded fully here, so a truncated file fails now rather than rendering grey later."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            check(im.format, *im.size)
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(str(exc)) from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
