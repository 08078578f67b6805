"""The frame-source interface every camera, stream or file reader implements."""

from __future__ import annotations

import abc
import itertools
import time
from collections.abc import Callable

import numpy as np

from pi_daemon.frame import Frame, PixelFormat


class SourceEnded(Exception):
    """A finite source (a file, a non-looping replay) has no more frames."""


class SourceError(Exception):
    """A read failed (timeout, device error, bad frame); the source may recover."""


class FrameSource(abc.ABC):
    """Opens a device, hands out frames, releases the device.

    `close()` must be safe to call more than once and after a failed `open()`.
    Implementations raise `SourceUnavailable` from `open()` when the device is
    absent, `SourceError` from `read()` for recoverable faults and `SourceEnded`
    when a finite input is exhausted.
    """

    name: str = "source"
    #: True for cameras and streams that produce frames whether or not we read
    #: them (the newest wins, older ones are dropped); False for replayed files,
    #: which wait for the consumer so no frame is skipped.
    live: bool = True
    #: How long one read() may take when all is well: a camera's capture timeout, a
    #: stream's read timeout, a paced replay's frame interval plus decoding. The capture
    #: thread reads with it, so a slow-but-healthy source never counts as failing.
    read_timeout_s: float = 5.0
    #: The longest normal gap between frames (a paced replay's or a camera's frame
    #: interval; 0 when the source does not know). The stall detector allows two of them.
    frame_interval_s: float = 0.0

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.last_frame_id = 0
        # The latest frames handed out, for snapshot(); empty unless keep_recent() asked.
        # Written by the reading thread, read by the snapshot caller: each slot is
        # replaced whole, which is atomic under the GIL, so no lock is needed.
        self._recent: list[Frame | None] = []
        self._recent_next = 0

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return self.name

    def keep_recent(self, count: int) -> None:
        """Keep the last `count` frames read (as references) so `snapshot()` can return one.

        Three cover a replay exactly: the frame being classified, the one waiting in the
        capture slot and the one the capture thread has read since. Sources that decode
        into a new array per read (opencv, video files) keep up to `count` frames alive
        by this; still images are held in memory anyway. 0 keeps none (the default).
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        self._recent = [None] * count
        self._recent_next = 0

    def snapshot(self, frame_id: int | None = None, timeout: float = 2.0) -> Frame:
        """A full-size still of the scene for an event's JPEG, in the source's own format.

        This default returns the original frame `frame_id` as read (before any crop or
        resize), if `keep_recent()` still holds it, else the newest one held. Cameras
        with a better picture than the one classified override it (picamera2 captures
        its main stream). Raises SourceError when there is nothing to hand over.
        `timeout` bounds how long a camera may block.
        """
        held = [frame for frame in self._recent if frame is not None]
        if not held:
            raise SourceError(f"{self.describe()}: no frame kept for a snapshot")
        for frame in held:
            if frame.frame_id == frame_id:
                return frame
        return max(held, key=lambda frame: frame.frame_id)

    def refit(self, prescale: Callable[[np.ndarray], np.ndarray] | None) -> None:  # noqa: B027
        """Fit pictures kept fitted to the old model to a new model's geometry (a reload
        changed it); `prescale` is the new classifier's (Preprocessor.prescale). Only a
        source that keeps prescaled pictures (replayed stills) has anything to do. Called
        from the loop's thread between frames; raises PiDaemonError when it cannot."""

    def interrupt(self) -> None:  # noqa: B027 - optional hook
        """Cut short a read() that is waiting by design (a paced replay), so a stop
        request is not held up by it. Called from another thread; hardware waits are
        bounded by read_timeout_s instead."""

    def _frame(self, pixels: np.ndarray, fmt: PixelFormat) -> Frame:
        frame = Frame(pixels, fmt, next(self._ids), time.time(), time.monotonic())
        self.last_frame_id = frame.frame_id
        if self._recent:
            self._recent[self._recent_next] = frame
            self._recent_next = (self._recent_next + 1) % len(self._recent)
        return frame

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
