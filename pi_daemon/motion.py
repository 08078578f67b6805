"""The motion gate: decide per frame whether the scene changed enough to classify.

Frigate's "first line check" before its detector, done the cheap way:

1. **A small greyscale copy.** The region of interest is sampled on a grid of about
   `resolution` cells across its longer side. Each cell is the sum of up to four taps
   (a 2x2 pattern half a cell apart), which averages sensor noise down by half. On the
   picamera2 path the frame is planar YUV420 and the Y plane *is* the greyscale picture,
   so the taps are views into it; for RGB/BGR frames each tap is a weighted luma
   (BT.601: 0.299 R + 0.587 G + 0.114 B).
2. **A running background**, as OpenCV's `accumulateWeighted` keeps it:
   `background += alpha * (frame - background)`, with `alpha = 1 - exp(-dt / background_s)`
   from the frames' own timestamps, so the background forgets at the same speed at 5 fps
   and at 30 fps, and a long gap (a throttle pause) simply resets it.
3. **A changed-cell fraction.** A cell has changed when `|frame - background|` (OpenCV's
   `absdiff`) is at least `pixel_threshold`; cells under a mask polygon never count.
   Motion is at least `min_changed_fraction` of the watched cells changed.

Verdicts: `FIRST` (no background yet: the first frame, or the frame size changed),
`MOTION`, `KEYFRAME` (no classify verdict for `max_skip_s`, so a slow change such as
light or a parked car is still seen) and `SKIP`. Every verdict but SKIP means "classify
this frame now"; the gate assumes a classify verdict is acted upon.

Pure and allocation-free: numpy only (no OpenCV, which alone costs ~17 MiB of RSS),
arrays and `now` in, a verdict out. Buffers are allocated once per frame geometry and
every operation writes into them. One gate serves one thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from pi_daemon.errors import ConfigError
from pi_daemon.roi import FULL_FRAME, Polygon, Roi, rasterise_mask, roi_box, watched_share

if TYPE_CHECKING:
    from pi_daemon.config import MotionSection

# BT.601 luma weights, the ones the Y plane of the camera's YUV420 is made with.
LUMA_WEIGHTS = (np.float32(0.299), np.float32(0.587), np.float32(0.114))


class Verdict(Enum):
    """The gate's answer for one frame."""

    FIRST = "first"
    MOTION = "motion"
    KEYFRAME = "keyframe"
    SKIP = "skip"

    @property
    def classify(self) -> bool:
        """True when the frame should be classified now."""
        return self is not Verdict.SKIP


class _Grid:
    """The sampling grid and the buffers for one frame geometry (format and shape)."""

    def __init__(
        self,
        fmt: str,
        shape: tuple[int, ...],
        width: int,
        height: int,
        roi: Roi,
        mask: Sequence[Polygon],
        resolution: int,
    ) -> None:
        self.key = (fmt, shape)
        self.fmt = fmt
        x0, y0, roi_w, roi_h = roi_box(roi, width, height)
        step = max(1, math.ceil(max(roi_w, roi_h) / resolution))
        half_x = min(step // 2, roi_w - 1)
        half_y = min(step // 2, roi_h - 1)
        columns = (roi_w - 1 - half_x) // step + 1
        rows = (roi_h - 1 - half_y) // step + 1
        offsets = {(0, 0), (0, half_x), (half_y, 0), (half_y, half_x)}
        self.taps = [
            (
                slice(y0 + dy, y0 + dy + (rows - 1) * step + 1, step),
                slice(x0 + dx, x0 + dx + (columns - 1) * step + 1, step),
            )
            for dy, dx in sorted(offsets)
        ]
        self.height = height
        self.shape = (rows, columns)
        # Cell centres in frame fractions, for the mask.
        centre_x = (x0 + np.arange(columns) * step + half_x / 2 + 0.5) / width
        centre_y = (y0 + np.arange(rows) * step + half_y / 2 + 0.5) / height
        masked = rasterise_mask(mask, centre_x, centre_y) if mask else None
        self.watch = None if masked is None or not masked.any() else ~masked
        # At least 1: a mask that hides every cell of a tiny grid leaves keyframes only.
        self.watched = max(1, int(rows * columns if self.watch is None else self.watch.sum()))
        # Luma is kept as the sum of the taps; the threshold is scaled to match.
        self.scale = len(self.taps)
        self.luma = np.zeros(self.shape, np.float32)
        self.colour = np.zeros((*self.shape, 3), np.float32) if fmt != "YUV420" else None
        self.background = np.zeros(self.shape, np.float32)
        self.diff = np.zeros(self.shape, np.float32)
        self.absdiff = np.zeros(self.shape, np.float32)
        self.changed = np.zeros(self.shape, bool)
        weights = LUMA_WEIGHTS if fmt == "RGB" else LUMA_WEIGHTS[::-1]
        self.weights = np.array(weights, np.float32)

    def sample(self, pixels: np.ndarray) -> np.ndarray:
        """Fill and return `luma` (sum of taps) from a frame; writes only into buffers."""
        # Taps are summed first (whole colour cells at once), then weighted once: five
        # numpy calls per RGB frame instead of one per tap and channel.
        total: np.ndarray
        if self.colour is None:
            plane, total = pixels[: self.height], self.luma  # the Y plane of I420
        else:
            plane, total = pixels, self.colour
        rows, columns = self.taps[0]
        np.copyto(total, plane[rows, columns])
        for rows, columns in self.taps[1:]:
            np.add(total, plane[rows, columns], out=total)
        if self.colour is not None:
            np.matmul(self.colour, self.weights, out=self.luma)
        return self.luma


class MotionGate:
    """Per-frame verdicts from a running background; see the module docstring."""

    def __init__(
        self,
        *,
        max_skip_s: float = 10.0,
        pixel_threshold: float = 25,
        min_changed_fraction: float = 0.005,
        background_s: float = 5.0,
        resolution: int = 80,
        roi: Roi = FULL_FRAME,
        mask: Sequence[Polygon] = (),
    ) -> None:
        if max_skip_s <= 0 or background_s <= 0 or resolution < 1:
            raise ValueError("max_skip_s, background_s and resolution must be positive")
        if not 0 < min_changed_fraction <= 1 or pixel_threshold <= 0:
            raise ValueError("need 0 < min_changed_fraction <= 1 and pixel_threshold > 0")
        self.max_skip_s = max_skip_s
        self.pixel_threshold = float(pixel_threshold)
        self.min_changed_fraction = min_changed_fraction
        self.background_s = background_s
        self.resolution = resolution
        self.roi = roi
        self.mask = [[(float(x), float(y)) for x, y in polygon] for polygon in mask]
        if self.mask and watched_share(roi, self.mask) == 0.0:
            raise ConfigError(
                "motion.mask: covers the whole region of interest (preprocess.roi); "
                "nothing is left to watch for motion"
            )
        self._grid: _Grid | None = None
        self._last_seen = 0.0
        self._last_classified = -math.inf
        #: The changed share of watched cells in the last frame (0 for FIRST).
        self.changed_fraction = 0.0
        #: Frames checked and frames skipped since the gate was made.
        self.frames = 0
        self.skipped = 0

    @classmethod
    def from_config(cls, motion: MotionSection, roi: Roi = FULL_FRAME) -> MotionGate:
        """A gate for `[motion]` watching `[preprocess] roi`."""
        return cls(
            max_skip_s=motion.max_skip_s,
            pixel_threshold=motion.pixel_threshold,
            min_changed_fraction=motion.min_changed_fraction,
            background_s=motion.background_s,
            resolution=motion.resolution,
            roi=roi,
            mask=motion.mask,
        )

    def with_roi(self, roi: Roi) -> MotionGate:
        """A fresh gate with these settings watching another region (a reload changed
        `[preprocess] roi`); its first frame is FIRST."""
        return MotionGate(
            max_skip_s=self.max_skip_s,
            pixel_threshold=self.pixel_threshold,
            min_changed_fraction=self.min_changed_fraction,
            background_s=self.background_s,
            resolution=self.resolution,
            roi=roi,
            mask=self.mask,
        )

    def reset(self) -> None:
        """Forget the background (after a reconnect or reload): the next frame is FIRST."""
        self._grid = None

    def check_frame(self, frame: Any) -> Verdict:
        """`check()` for a `pi_daemon.preprocess.Frame`, at its capture time."""
        return self.check(frame.pixels, frame.fmt, frame.monotonic)

    def check(self, pixels: np.ndarray, fmt: str, now: float) -> Verdict:
        """The verdict for one frame taken at `now` (seconds, monotonic).

        `pixels` is HxWx3 uint8 for "RGB"/"BGR", or planar I420 ((H*3/2) x W) for
        "YUV420", as `pi_daemon.preprocess.Frame` holds them.
        """
        self.frames += 1
        grid = self._grid
        if grid is None or grid.key != (fmt, pixels.shape):
            grid = self._grid = self._make_grid(pixels, fmt)
            np.copyto(grid.background, grid.sample(pixels))
            self._last_seen = now
            return self._classified(Verdict.FIRST, now, 0.0)
        luma = grid.sample(pixels)
        np.subtract(luma, grid.background, out=grid.diff)
        np.abs(grid.diff, out=grid.absdiff)
        np.greater_equal(grid.absdiff, self.pixel_threshold * grid.scale, out=grid.changed)
        if grid.watch is not None:
            np.logical_and(grid.changed, grid.watch, out=grid.changed)
        fraction = int(np.count_nonzero(grid.changed)) / grid.watched
        # accumulateWeighted: background += alpha * (frame - background).
        alpha = 1.0 - math.exp(-max(0.0, now - self._last_seen) / self.background_s)
        self._last_seen = now
        np.multiply(grid.diff, alpha, out=grid.diff)
        np.add(grid.background, grid.diff, out=grid.background)
        if fraction >= self.min_changed_fraction:
            return self._classified(Verdict.MOTION, now, fraction)
        if now - self._last_classified >= self.max_skip_s:
            return self._classified(Verdict.KEYFRAME, now, fraction)
        self.changed_fraction = fraction
        self.skipped += 1
        return Verdict.SKIP

    def _classified(self, verdict: Verdict, now: float, fraction: float) -> Verdict:
        self._last_classified = now
        self.changed_fraction = fraction
        return verdict

    def _make_grid(self, pixels: np.ndarray, fmt: str) -> _Grid:
        if pixels.dtype != np.uint8:
            raise ValueError(f"motion gate needs uint8 pixels, got {pixels.dtype}")
        if fmt == "YUV420":
            if pixels.ndim != 2 or pixels.shape[0] % 3:
                raise ValueError(f"shape {pixels.shape} is not planar YUV420")
            width, height = pixels.shape[1], pixels.shape[0] * 2 // 3
        elif fmt in ("RGB", "BGR"):
            if pixels.ndim != 3 or pixels.shape[2] != 3:
                raise ValueError(f"shape {pixels.shape} is not HxWx3 {fmt}")
            width, height = pixels.shape[1], pixels.shape[0]
        else:
            raise ValueError(f"unknown pixel format {fmt!r}")
        return _Grid(fmt, pixels.shape, width, height, self.roi, self.mask, self.resolution)
