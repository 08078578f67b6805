"""Decoding still images (for `classify` and `[files]` replays) with Pillow, bounded.

Pillow reads an image's header before it decodes a pixel, so a file whose header claims
40000x40000 pixels is refused before it costs anything: a 438 KB PNG of 20000x20000 used
to decode to 2.4 GB. The cap, MAX_IMAGE_PIXELS = 2**24 (16.8 megapixels, 4096x4096), is
above every Raspberry Pi camera (the HQ camera is 12.3 MP, Camera Module 3 11.9 MP) and
keeps one decode to 48 MiB of RGB, at most twice that while it is converted to an array:
inside the unit's MemoryHigh (192M) on top of the daemon's own ~95 MiB. A larger JPEG is
decoded at 1/2, 1/4 or 1/8 scale (libjpeg scales in the DCT, nearly for free) when that
fits, since the model sees 224x224 anyway; any other image over the cap is refused.

Only formats that decode in-process are enabled (no EPS, which would run Ghostscript).
Files are read through pi_daemon.fileio: regular files only (a FIFO is refused instead of
blocking, a directory is named as one), size-bounded. This module must not import cv2:
decoding still images needs no OpenCV.
"""

from __future__ import annotations

import io
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon import fileio
from pi_daemon.errors import InputError
from pi_daemon.frame import Frame

MAX_IMAGE_PIXELS = 1 << 24
# A compressed image is far smaller than its pixels; an uncompressed 24-bit BMP at the cap
# is 48 MiB. Anything larger is not an image this daemon should read into memory.
MAX_IMAGE_BYTES = 64 * fileio.MIB
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM", "GIF")
_JPEG_SCALES = (1, 2, 4, 8)


def still_frame(
    path: Path,
    number: int = 0,
    prescale: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Frame:
    """An image file as a Frame (RGB), optionally prescaled to a model's geometry: how
    `classify`, the bench and the comparisons feed a photo to a classifier."""
    pixels = decode_image(path)
    if prescale is not None:
        pixels = prescale(pixels)
    return Frame(pixels, "RGB", number, time.time(), time.monotonic())


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def decode_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The image at `path` as an (H, W, 3) uint8 RGB array, or InputError in one line."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    # Pillow's own bomb check (a warning on stderr at 89 MP, an error at 179 MP) is replaced
    # by the lower cap below, which says in one line what the image claims.
    Image.MAX_IMAGE_PIXELS = None
    try:
        data = fileio.read_bytes(path, MAX_IMAGE_BYTES)
    except fileio.FileProblem as error:
        if error.missing:
            raise InputError(f"{path}: image file not found") from None
        raise InputError(f"{path}: cannot read image: {error.reason}") from None
    if not data:
        raise InputError(f"{path}: cannot decode image: the file is empty")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            _fit_under_cap(path, image, max_pixels)
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
            pixels = np.asarray(rgb)
    except UnidentifiedImageError:
        raise InputError(f"{path}: cannot decode image (not a supported image format)") from None
    except MemoryError:
        raise InputError(f"{path}: cannot decode image: out of memory") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        # Truncated data, corrupt chunks, unsupported modes: Pillow raises all of these.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"{path}: cannot decode image ({reason})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise InputError(f"{path}: cannot decode image: decoded to shape {pixels.shape}")
    return pixels


def _fit_under_cap(path: Path, image: Any, max_pixels: int) -> None:
    """Refuse an image whose header claims more than `max_pixels`; a JPEG is first asked
    to decode at the smallest DCT scale that fits."""
    width, height = image.size
    if width * height <= max_pixels:
        return
    if image.format == "JPEG":
        for scale in _JPEG_SCALES[1:]:
            scaled = (math.ceil(width / scale), math.ceil(height / scale))
            if scaled[0] * scaled[1] <= max_pixels:
                image.draft("RGB", scaled)
                if image.size[0] * image.size[1] <= max_pixels:
                    return
                break
    raise InputError(
        f"{path}: image is {width}x{height} pixels ({megapixels(width * height)}), "
        f"over the {megapixels(max_pixels)} this daemon decodes"
    )
