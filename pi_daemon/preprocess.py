"""Frame → model input: crop, resize and colour-convert straight into a buffer.

Pure logic on numpy; no interpreter or camera here. The work is done at the model's
small input size wherever possible: colour conversion happens after the resize, so a
1080p BGR frame costs one area resize and one 224² conversion.

OpenCV is imported only by the two operations that need it per frame: resizing a frame
that is not already at the model's geometry (video files, USB cameras, streams: those
sources use OpenCV to capture anyway) and converting picamera2's YUV420 to RGB. Still
images never need it: `prescale()` brings them to the model's geometry once, with
Pillow, when they are loaded, and from then on a frame is only cropped or copied. That
keeps OpenCV (about 17 MiB of resident memory) out of the demo and `classify` paths.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import numpy as np

from pi_daemon.frame import Frame, check_frame
from pi_daemon.roi import FULL_FRAME, Roi, roi_box

CropMode = Literal["center", "letterbox", "stretch"]

LETTERBOX_FILL = 0  # black bars; ImageNet models treat them as background


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


@cache
def _cv2() -> Any:
    """OpenCV, on first use (see the module docstring for why it is not imported above)."""
    import cv2

    return cv2


def _interpolation(src_w: int, src_h: int, dst_w: int, dst_h: int) -> int:
    cv2 = _cv2()
    # INTER_AREA is the right filter for shrinking; for enlarging it is slow and blocky.
    return cv2.INTER_AREA if src_w >= dst_w and src_h >= dst_h else cv2.INTER_LINEAR


def _resize(region: np.ndarray, width: int, height: int, out: np.ndarray) -> None:
    rh, rw = region.shape[:2]
    interpolation = _interpolation(rw, rh, width, height)
    _cv2().resize(region, (width, height), dst=out, interpolation=interpolation)


def still_size(
    width: int, height: int, target_w: int, target_h: int, crop: CropMode
) -> tuple[int, int]:
    """The size a still image is scaled to once, so that fitting it needs no resize.

    center: the smallest size with the image's aspect that covers the target (the crop is
    then a slice); letterbox: the largest that fits inside it (the bars are then a fill);
    stretch: the target itself. Never larger than the image: a small image stays as it
    is and is enlarged per frame instead.
    """
    if crop == "stretch":
        size = (target_w, target_h)
    else:
        scale = (max if crop == "center" else min)(target_w / width, target_h / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if crop == "center":  # rounding must not leave the cover a pixel short
            size = (max(size[0], target_w), max(size[1], target_h))
    if size[0] > width or size[1] > height:
        return width, height
    return size


class Preprocessor:
    """Writes frames into an RGB uint8 (H, W, 3) destination of the model's size.

    Scratch buffers are allocated once per distinct frame size and reused, so the
    steady state allocates nothing but OpenCV's small temporaries.
    """

    def __init__(
        self, width: int, height: int, crop: CropMode = "center", roi: Roi = FULL_FRAME
    ) -> None:
        self.width = width
        self.height = height
        self.crop = crop
        # Only this region of the frame is classified (`[preprocess] roi`); the crop mode
        # fits the region, not the whole frame, to the model's input.
        self.roi = roi
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
            cv2 = _cv2()
            cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_I420, dst=self._yuv_rgb)
            pixels, fmt = self._yuv_rgb, "RGB"
        if fmt == "RGB":
            self._fit(pixels, out)
        else:
            # BGR frames come from OpenCV sources only, so OpenCV is loaded already.
            self._fit(pixels, self._scratch)
            cv2 = _cv2()
            cv2.cvtColor(self._scratch, cv2.COLOR_BGR2RGB, dst=out)

    def prescale(self, rgb: np.ndarray) -> np.ndarray:
        """A still image (HxWx3 RGB) scaled once to `still_size`, with Pillow's box filter.

        Feeding the result to this Preprocessor needs no resize (and so no OpenCV): the
        files source and `classify` call this once per image, not per frame.
        """
        height, width = rgb.shape[:2]
        size = still_size(width, height, self.width, self.height, self.crop)
        if size == (width, height) or self.roi != FULL_FRAME:
            # A region of interest is cropped per frame; scaling the still would round the
            # region's edges differently from the per-frame crop. Kept at full size.
            return rgb
        from PIL import Image

        # BOX averages every source pixel under each output pixel, like INTER_AREA.
        scaled = Image.fromarray(np.ascontiguousarray(rgb), "RGB").resize(
            size, Image.Resampling.BOX
        )
        return np.asarray(scaled).copy()

    def _fit(self, pixels: np.ndarray, out: np.ndarray) -> None:
        if self.roi != FULL_FRAME:
            x, y, rw, rh = roi_box(self.roi, pixels.shape[1], pixels.shape[0])
            pixels = pixels[y : y + rh, x : x + rw]
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
        _resize(region, self.width, self.height, out)

    def _letterbox_into(self, pixels: np.ndarray, out: np.ndarray) -> None:
        h, w = pixels.shape[:2]
        x, y, nw, nh = letterbox_box(w, h, self.width, self.height)
        out.fill(LETTERBOX_FILL)
        if (nw, nh) == (w, h):  # a prescaled still: only the bars to add
            out[y : y + nh, x : x + nw] = pixels
            return
        resized = self._letterbox.get((nw, nh))
        if resized is None:
            resized = self._letterbox[(nw, nh)] = np.empty((nh, nw, 3), np.uint8)
        _resize(pixels, nw, nh, resized)
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
