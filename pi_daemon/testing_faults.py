"""Test-only faults, for the system tests that prove the watchdog fires.

`[testing] fault = "hang-invoke"` or `"hang-capture"` (after `fault_after_frames`
frames) makes inference or the camera read block until the daemon is told to stop. The
config refuses any fault unless the daemon's environment has PI_DAEMON_ALLOW_FAULTS=1
(pi_daemon/config.py), so a production config cannot hang a device by accident.

Kept out of the production wiring: app.py calls `apply()` once for the source and the
classifier (and the reload path for a new classifier), and with `fault = "none"` nothing
here touches them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pi_daemon.classifier import Classifier
from pi_daemon.config import TestingSection
from pi_daemon.frame import Frame
from pi_daemon.sources.base import FrameSource

log = logging.getLogger(__name__)


class _HangingInterpreter:
    """Stands in for the interpreter's invoke(): `after` calls, then blocks until `stop`."""

    def __init__(self, inner: Any, after: int, stop: threading.Event) -> None:
        self._inner, self._after, self._stop = inner, after, stop
        self._count = 0

    def invoke(self) -> None:
        if self._count == self._after:
            log.warning("testing fault: inference hangs now (until stop)")
        if self._count >= self._after:
            self._stop.wait()  # released by SIGTERM, so a clean stop still works
        self._count += 1
        self._inner.invoke()


class _HangingSource(FrameSource):
    """Reads `after` frames, then blocks in read() until `stop`: a stuck camera."""

    def __init__(self, inner: FrameSource, after: int, stop: threading.Event) -> None:
        super().__init__()
        self._inner, self._after, self._stop = inner, after, stop
        self._count = 0
        self.name, self.live = inner.name, inner.live
        self.read_timeout_s, self.frame_interval_s = inner.read_timeout_s, inner.frame_interval_s

    def open(self) -> None:
        self._inner.open()

    def close(self) -> None:
        self._inner.close()

    def describe(self) -> str:
        return f"{self._inner.describe()} [testing: hangs after {self._after} frames]"

    def interrupt(self) -> None:
        self._inner.interrupt()

    def snapshot(self, frame_id: int | None = None, timeout: float = 2.0) -> Frame:
        return self._inner.snapshot(frame_id, timeout)

    def keep_recent(self, count: int) -> None:
        self._inner.keep_recent(count)

    def refit(self, prescale: Any) -> None:
        self._inner.refit(prescale)

    def read(self, timeout: float) -> Frame:
        if self._count == self._after:
            log.warning("testing fault: capture hangs now (until stop)")
        if self._count >= self._after:
            self._stop.wait()
        self._count += 1
        return self._inner.read(timeout)


def apply_to_classifier(
    classifier: Classifier, testing: TestingSection, stop: threading.Event
) -> Classifier:
    """The classifier, its invoke() made to hang when the config asks for it."""
    if testing.fault == "hang-invoke":
        classifier.interpreter = _HangingInterpreter(
            classifier.interpreter, testing.fault_after_frames, stop
        )
    return classifier


def apply_to_source(
    source: FrameSource, testing: TestingSection, stop: threading.Event
) -> FrameSource:
    """The source, or one whose read() hangs when the config asks for it."""
    if testing.fault == "hang-capture":
        return _HangingSource(source, testing.fault_after_frames, stop)
    return source
