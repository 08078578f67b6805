"""The capture thread and the one-slot "latest frame" handoff to the inference loop.

Capture runs beside inference so the camera's wait is hidden behind `invoke()`.
With a `FramePreparer` the capture thread also crops, resizes and colour-converts
each frame to the model's input, so that work overlaps `invoke()` too and the
inference loop only copies a model-sized picture into the input tensor.
The slot holds at most one frame: a live camera overwrites it (the newest frame
wins and the overwritten one is counted as dropped), a replayed file waits for
the consumer so no frame is skipped. Nothing ever queues up.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pi_daemon.errors import PiDaemonError, SourceFailed
from pi_daemon.events import Event, emit
from pi_daemon.frame import Frame, FrameShapeError, check_frame
from pi_daemon.preprocess import CropMode, Preprocessor
from pi_daemon.roi import FULL_FRAME, Roi
from pi_daemon.sources.base import FrameSource, SourceEnded, SourceError

if TYPE_CHECKING:
    from pi_daemon.motion import Verdict

log = logging.getLogger(__name__)


class Gate(Protocol):
    """The motion gate's interface, as the capture thread uses it (pi_daemon/motion.py)."""

    def check_frame(self, frame: Frame) -> Verdict: ...


@dataclass(frozen=True)
class Skipped:
    """A frame the motion gate judged unchanged: not classified, but still progress."""

    frame_id: int
    monotonic: float


class LatestFrameSlot:
    """A one-frame mailbox between the capture thread and the inference loop."""

    def __init__(self) -> None:
        # _cond's lock protects _frame, _final and dropped.
        self._cond = threading.Condition()
        self._frame: Frame | Skipped | None = None
        self._final: BaseException | None = None
        self.dropped = 0

    def put(self, frame: Frame | Skipped, wait_for_consumer: bool, stop: threading.Event) -> None:
        with self._cond:
            if wait_for_consumer:
                while self._frame is not None and self._final is None and not stop.is_set():
                    self._cond.wait(0.1)
            elif isinstance(frame, Skipped) and isinstance(self._frame, Frame):
                return  # never let "nothing changed" displace a frame waiting to be classified
            elif isinstance(self._frame, Frame):
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def finish(self, reason: BaseException) -> None:
        """No more frames will come; `take()` raises `reason` once the slot is empty."""
        with self._cond:
            self._final = reason
            self._cond.notify_all()

    def take(self, timeout: float, wake_producer: bool = True) -> Frame | Skipped | None:
        """The newest frame, or None after `timeout`; raises the finishing reason.

        `wake_producer=False` leaves a waiting producer asleep until `wake_producer()`:
        the daemon calls that once the frame is in the input tensor, so the capture
        thread prepares the next frame while invoke() runs (and has released the GIL),
        not while the loop is still copying.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None:
                if self._final is not None:
                    raise self._final
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._frame = self._frame, None
            if wake_producer:
                self._cond.notify_all()
            return frame

    def wake_producer(self) -> None:
        """Let a producer waiting in `put()` see that the slot is free."""
        with self._cond:
            self._cond.notify_all()


class FramePreparer:
    """Turns source frames into model-sized RGB frames, on the capture thread.

    Profiling the loop showed the crop + INTER_AREA resize of a camera-sized frame
    costing ~20% of an int8 `invoke()`; done here it runs while the interpreter
    works. The classifier's own Preprocessor then finds an RGB frame of exactly the
    model's size and only copies it, so results are bit-identical either way.

    Output pictures live in a small pool of reused buffers: a buffer is handed out
    again only once no Frame references it (one may sit in the slot and one be held
    by the consumer), so nothing is overwritten while the loop reads it and the
    steady state allocates no pixel memory.
    """

    POOL_SIZE = 3  # one in the slot, one held by the loop, one being written
    POOL_LIMIT = 8

    def __init__(
        self, width: int, height: int, crop: CropMode = "center", roi: Roi = FULL_FRAME
    ) -> None:
        self.size = (width, height)
        self._preprocess = Preprocessor(width, height, crop, roi)
        self._pool = [np.empty((height, width, 3), np.uint8) for _ in range(self.POOL_SIZE)]

    def __call__(self, frame: Frame) -> Frame:
        if frame.fmt == "RGB" and frame.size == self.size and self._preprocess.roi == FULL_FRAME:
            return replace(frame, prepared=True)  # already the model's picture: no copy
        buffer = self._free_buffer()
        self._preprocess(frame, buffer)
        return Frame(buffer, "RGB", frame.frame_id, frame.wall_time, frame.monotonic, True)

    def _free_buffer(self) -> np.ndarray:
        for buffer in self._pool:
            # Three references mean unused: the pool list, `buffer` and getrefcount's
            # argument. Any Frame (or view) still holding it adds one.
            if sys.getrefcount(buffer) <= 3:
                return buffer
        width, height = self.size
        buffer = np.empty((height, width, 3), np.uint8)
        if len(self._pool) < self.POOL_LIMIT:
            self._pool.append(buffer)
        return buffer


@dataclass(frozen=True)
class RetryPolicy:
    max_consecutive_failures: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def backoff(self, failures: int) -> float:
        """Exponential backoff before reconnect attempt number `failures` (1-based)."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, failures - 1))


class CaptureThread(threading.Thread):
    """Reads frames from a source into a slot; reconnects with backoff on faults.

    After `max_consecutive_failures` failed reads or reconnects in a row it gives
    up and finishes the slot with `SourceFailed`, so the daemon exits non-zero and
    systemd restarts the process (the reliable cure for a wedged camera).
    """

    def __init__(
        self,
        source: FrameSource,
        slot: LatestFrameSlot,
        stop: threading.Event,
        retry: RetryPolicy,
        read_timeout_s: float = 5.0,
        prepare: Callable[[Frame], Frame] | None = None,
        gate: Gate | None = None,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.slot = slot
        self.stop = stop
        self.retry = retry
        self.read_timeout_s = read_timeout_s
        # Both swapped by the daemon when a reload changes the input geometry or the ROI.
        self.prepare = prepare
        self.gate = gate
        self.failures = 0
        self.reconnects = 0

    def run(self) -> None:
        # The source is opened and finally closed by its owner (app.py); this thread only
        # cycles it (close, then open) to reconnect after a fault.
        try:
            self._loop()
        except SourceEnded as end:
            log.info("source finished: %s", end)
            self.slot.finish(end)
        except BaseException as error:  # hand every other ending to the consumer
            self.slot.finish(error)

    def _loop(self) -> None:
        wait_for_consumer = not self.source.live
        while not self.stop.is_set():
            try:
                frame = self.source.read(self.read_timeout_s)
                check_frame(frame)
                # The gate looks at the source's own frame (picamera2's Y plane is free),
                # and an unchanged frame is never prepared: the resize is saved too.
                gate = self.gate
                if gate is not None and not gate.check_frame(frame).classify:
                    item: Frame | Skipped = Skipped(frame.frame_id, frame.monotonic)
                elif self.prepare is not None:
                    item = self.prepare(frame)
                else:
                    item = frame
            except (SourceError, FrameShapeError) as error:
                self._fault(str(error))
                continue
            if self.failures:
                emit(
                    log,
                    logging.INFO,
                    Event.SOURCE_FAULT,
                    "source %s recovered after %d failures",
                    self.source.describe(),
                    self.failures,
                    source=self.source.name,
                    failures=0,
                )
                self.failures = 0
            self.slot.put(item, wait_for_consumer, self.stop)

    def _fault(self, reason: str) -> None:
        self.failures += 1
        limit = self.retry.max_consecutive_failures
        if self.failures >= limit:
            raise SourceFailed(
                f"source {self.source.describe()}: giving up after {self.failures} "
                f"consecutive failures; last: {reason}"
            )
        delay = self.retry.backoff(self.failures)
        emit(
            log,
            logging.WARNING,
            Event.SOURCE_FAULT,
            "source %s failed (%d/%d): %s; reconnecting in %.1f s",
            self.source.describe(),
            self.failures,
            limit,
            reason,
            delay,
            source=self.source.name,
            failures=self.failures,
        )
        self.source.close()
        if self.stop.wait(delay):
            return
        try:
            self.source.open()
            self.reconnects += 1
        except PiDaemonError as error:
            # Counted as another failure on the next pass through read().
            log.warning("reconnect to %s failed: %s", self.source.describe(), error)
