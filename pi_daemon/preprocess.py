"""Frame → model input: crop, resize and colour-convert straight into a buffer.

Pure logic on numpy and OpenCV; no interpreter or camera here. The work is done at
the model's small input size wherever possible: colour conversion happens after
the resize, so a 1080p BGR frame costs one area resize and one 224² conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

PixelFormat = Literal["RGB", "BGR", "YUV420"]
CropMode = Literal["center", "letterbox", "stretch"]

LETTERBOX_FILL = 0  # black bars; ImageNet models treat them as background


@dataclass(frozen=True)
class Frame:
    """One captured frame as the source produced it.

    `pixels` is HxWx3 for RGB/BGR, or the planar I420 layout ((H*3/2) x W) for
    YUV420 as picamera2 returns for a lores stream.
    """

    pixels: np.ndarray
    fmt: PixelFormat
    frame_id: int
    wall_time: float
    monotonic: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture, whatever the layout."""
        if self.fmt == "YUV420":
            return self.pixels.shape[1], self.pixels.shape[0] * 2 // 3
        return self.pixels.shape[1], self.pixels.shape[0]


class FrameShapeError(ValueError):
    """A frame whose array does not match its declared pixel format."""


def check_frame(frame: Frame) -> None:
    """Reject frames a broken source might hand over (wrong rank, dtype, channels)."""
    pixels = frame.pixels
    if pixels.dtype != np.uint8:
        raise FrameShapeError(f"frame {frame.frame_id}: dtype {pixels.dtype}, expected uint8")
    if frame.fmt == "YUV420":
        if pixels.ndim != 2 or pixels.shape[0] % 3 or pixels.shape[0] < 3 or pixels.shape[1] < 2:
            raise FrameShapeError(
                f"frame {frame.frame_id}: shape {pixels.shape} is not planar YUV420"
            )
    elif pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise FrameShapeError(
            f"frame {frame.frame_id}: shape {pixels.shape}, expected HxWx3 {frame.fmt}"
        )


def center_crop_box(
    width: int, height: int, target_w: int, target_h: int
) -> tuple[int, int, int, int]:
    """The largest box with the target's aspect ratio, centred: (x, y, w, h)."""
    target_aspect = target_w / target_h
    if width / height > target_aspect:
        crop_w, crop_h = max(1, round(height * target_aspect)), height
    else:
        crop_w, crop_h = width, max(1, round(width / target_aspect))
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def letterbox_box(
    width: int, height: int, target_w: int, target_h: int
) -> tuple[int, int, int, int]:
    """Where the whole frame lands inside the target, keeping aspect: (x, y, w, h)."""
    scale = min(target_w / width, target_h / height)
    new_w = max(1, min(target_w, round(width * scale)))
    new_h = max(1, min(target_h, round(height * scale)))
    return (target_w - new_w) // 2, (target_h - new_h) // 2, new_w, new_h


def _interpolation(src_w: int, src_h: int, dst_w: int, dst_h: int) -> int:
    # INTER_AREA is the right filter for shrinking; for enlarging it is slow and blocky.
    return cv2.INTER_AREA if src_w >= dst_w and src_h >= dst_h else cv2.INTER_LINEAR


class Preprocessor:
    """Writes frames into an RGB uint8 (H, W, 3) destination of the model's size.

    Scratch buffers are allocated once per distinct frame size and reused, so the
    steady state allocates nothing but OpenCV's small temporaries.
    """

    def __init__(self, width: int, height: int, crop: CropMode = "center") -> None:
        self.width = width
        self.height = height
        self.crop = crop
        self._scratch = np.empty((height, width, 3), np.uint8)
        self._yuv_rgb: np.ndarray | None = None
        self._letterbox: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, frame: Frame, out: np.ndarray) -> None:
        """Fill `out` (H, W, 3, uint8, C-contiguous) with the model-ready RGB picture."""
        check_frame(frame)
        pixels, fmt = frame.pixels, frame.fmt
        if fmt == "YUV420":
            # picamera2's lores stream is already near the model size: convert it first.
            h, w = pixels.shape[0] * 2 // 3, pixels.shape[1]
            if self._yuv_rgb is None or self._yuv_rgb.shape[:2] != (h, w):
                self._yuv_rgb = np.empty((h, w, 3), np.uint8)
            cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_I420, dst=self._yuv_rgb)
            pixels, fmt = self._yuv_rgb, "RGB"
        if fmt == "RGB":
            self._fit(pixels, out)
        else:
            self._fit(pixels, self._scratch)
            cv2.cvtColor(self._scratch, cv2.COLOR_BGR2RGB, dst=out)

    def _fit(self, pixels: np.ndarray, out: np.ndarray) -> None:
        h, w = pixels.shape[:2]
        if self.crop == "stretch":
            region = pixels
        elif self.crop == "center":
            x, y, cw, ch = center_crop_box(w, h, self.width, self.height)
            region = pixels[y : y + ch, x : x + cw]
        else:
            self._letterbox_into(pixels, out)
            return
        rh, rw = region.shape[:2]
        if (rw, rh) == (self.width, self.height):
            np.copyto(out, region)
            return
        cv2.resize(
            region,
            (self.width, self.height),
            dst=out,
            interpolation=_interpolation(rw, rh, self.width, self.height),
        )

    def _letterbox_into(self, pixels: np.ndarray, out: np.ndarray) -> None:
        h, w = pixels.shape[:2]
        x, y, nw, nh = letterbox_box(w, h, self.width, self.height)
        resized = self._letterbox.get((nw, nh))
        if resized is None:
            resized = self._letterbox[(nw, nh)] = np.empty((nh, nw, 3), np.uint8)
        cv2.resize(pixels, (nw, nh), dst=resized, interpolation=_interpolation(w, h, nw, nh))
        out.fill(LETTERBOX_FILL)
        out[y : y + nh, x : x + nw] = resized


def input_lut(
    dtype: np.dtype, scale: float, zero_point: int, real_range: tuple[float, float] = (0.0, 255.0)
) -> np.ndarray | None:
    """Map each pixel value 0..255 to the model's input value, or None for identity.

    The model's real-valued input covers `real_range` (0..255 when the
    normalisation is inside the graph, as in the bundled model). For quantized
    inputs the real value is then quantized with the model's own scale and zero
    point; nothing about the model is hard-coded here.
    """
    dtype = np.dtype(dtype)
    low, high = real_range
    real = low + np.arange(256, dtype=np.float64) * ((high - low) / 255.0)
    if dtype.kind == "f":
        return real.astype(dtype)
    if scale <= 0:
        raise ValueError(f"quantized input with non-positive scale {scale}")
    info = np.iinfo(dtype)
    quantized = np.clip(np.round(real / scale) + zero_point, info.min, info.max).astype(dtype)
    if dtype == np.uint8 and np.array_equal(quantized, np.arange(256, dtype=np.uint8)):
        return None
    return quantized
