"""The frame: one captured picture as a source produced it, shared by every layer.

Sources make frames, the capture thread prepares them, the motion gate and the
classifier read them, snapshots encode them. Nothing here imports a camera, OpenCV or
the interpreter, so any of those layers can depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PixelFormat = Literal["RGB", "BGR", "YUV420"]


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
    # Already cropped, resized and converted to the model's input by the capture thread
    # (FramePreparer): the classifier only copies it into the input tensor.
    prepared: bool = False

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
