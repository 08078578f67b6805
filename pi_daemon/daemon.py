"""The service loop: newest frame → classifier → sinks, paced by the governor.

The loop knows only interfaces: a FrameSource (through the capture thread), a
Classifier, sinks, a Governor that may slow or pause work, and a Notifier that
talks to the service manager. `app.py` builds the real ones from config.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pi_daemon.capture import CaptureThread, FramePreparer, LatestFrameSlot, RetryPolicy
from pi_daemon.classifier import Classifier
from pi_daemon.errors import EX_OK, PiDaemonError, SourceFailed
from pi_daemon.events import Event, emit
from pi_daemon.preprocess import Preprocessor
from pi_daemon.results import LatencyWindow, Result, StageTimes, Summary
from pi_daemon.sinks.base import SinkDispatcher
from pi_daemon.sources.base import FrameSource, SourceEnded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What the governor allows right now."""

    state: str = "normal"
    min_interval_s: float = 0.0
    pause: bool = False
    # Readings worth showing in summaries and the status line (e.g. cpu_temp_c).
    readings: dict[str, Any] = field(default_factory=dict)


class Governor(Protocol):
    def poll(self, now: float) -> Decision: ...


class Notifier(Protocol):
    def ready(self, status: str) -> None: ...
    def progress(self, now: float) -> None: ...
    def status(self, text: str) -> None: ...
    def stopping(self) -> None: ...


class UnlimitedGovernor:
    """No throttling: used off-device and by `classify`/`bench`."""

    def poll(self, now: float) -> Decision:
        return Decision()


class SilentNotifier:
    """No service manager to talk to."""

    def ready(self, status: str) -> None:
        pass

    def progress(self, now: float) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def stopping(self) -> None:
        pass


@dataclass
class LoopSettings:
    stall_timeout_s: float = 10.0
    summary_interval_s: float = 60.0
    read_timeout_s: float = 5.0
    pause_poll_s: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class Counters:
    frames: int = 0
    stalls: int = 0
    last_label: str = ""
    last_decision: Decision = field(default_factory=Decision)


class Daemon:
    """Runs until `stop` is set, the source ends, or the source fails for good.

    `classifier` may be swapped between frames by `reload` (SIGHUP); everything
    else is fixed for the daemon's life.
    """

    def __init__(
        self,
        classifier: Classifier,
        source: FrameSource,
        dispatcher: SinkDispatcher,
        settings: LoopSettings,
        governor: Governor | None = None,
        notifier: Notifier | None = None,
        stop: threading.Event | None = None,
        reload: Callable[[], Classifier | None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.source = source
        self.dispatcher = dispatcher
        self.settings = settings
        self.governor = governor or UnlimitedGovernor()
        self.notifier = notifier or SilentNotifier()
        self.stop = stop or threading.Event()
        self.reload_requested = threading.Event()
        self._reload = reload
        self.slot = LatestFrameSlot()
        self.counters = Counters()
        self._latencies = LatencyWindow()
        self._dropped_at_last_summary = 0
        self._capture: CaptureThread | None = None

    # -- lifecycle -----------------------------------------------------------

    def run(self, max_frames: int | None = None) -> int:
        """Process frames; return the process exit code. Raises PiDaemonError on failure."""
        self._capture = CaptureThread(
            self.source,
            self.slot,
            self.stop,
            self.settings.retry,
            self.settings.read_timeout_s,
            prepare=_preparer_for(self.classifier),
        )
        self._capture.start()
        try:
            return self._loop(max_frames)
        finally:
            self.notifier.stopping()
            self.stop.set()
            self._capture.join(timeout=self.settings.read_timeout_s + 1)
            if self._capture.is_alive():
                log.warning("capture thread still blocked in the source; leaving it behind")
            self._emit_summary(time.monotonic(), final=True)
            self.dispatcher.close()

    def _loop(self, max_frames: int | None) -> int:
        settings = self.settings
        next_allowed = 0.0
        summary_due = time.monotonic() + settings.summary_interval_s
        self._summary_started = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if self.reload_requested.is_set():
                self._do_reload()
            if now >= summary_due:
                self._emit_summary(now)
                summary_due = now + settings.summary_interval_s
            decision = self.governor.poll(now)
            self.counters.last_decision = decision
            if decision.pause:
                # A deliberate pause is progress: the watchdog must not kill us for it.
                self.notifier.progress(now)
                self.stop.wait(settings.pause_poll_s)
                continue
            if now < next_allowed:
                # Deliberate pacing is progress too: a throttle interval longer than half
                # the watchdog timeout must not get a healthy daemon killed.
                self.notifier.progress(now)
                self.stop.wait(min(next_allowed - now, settings.pause_poll_s))
                continue
            wait_started = time.perf_counter()
            try:
                frame = self._take_frame(settings.stall_timeout_s)
            except SourceEnded:
                log.info("source ended after %d frames", self.counters.frames)
                return EX_OK
            except PiDaemonError:
                raise
            if frame is None:
                if self.stop.is_set():
                    break
                # No progress ping here: a stuck camera must let the watchdog fire.
                self._stalled()
                continue
            self.counters.stalls = 0
            started = time.monotonic()
            result = self._process(frame, time.perf_counter() - wait_started)
            next_allowed = started + decision.min_interval_s
            self.notifier.progress(result.monotonic)
            if max_frames is not None and self.counters.frames >= max_frames:
                break
        return EX_OK

    def _take_frame(self, timeout: float) -> Any:
        """`slot.take(timeout)` in short slices, so a stop request ends the wait within
        ~0.2 s even while the source is stalled (SIGTERM must beat TimeoutStopSec).

        None once stop is set: no new frame is started after a stop request (the capture
        thread may already have skipped ahead while shutting down)."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            frame = self.slot.take(max(0.0, min(remaining, 0.2)), wake_producer=False)
            if self.stop.is_set():
                return None
            if frame is not None or remaining <= 0.2:
                return frame
        return None

    def _stalled(self) -> None:
        self.counters.stalls += 1
        limit = self.settings.retry.max_consecutive_failures
        emit(
            log,
            logging.WARNING,
            Event.SOURCE_FAULT,
            "no frame from %s for %.0f s (%d/%d)",
            self.source.describe(),
            self.settings.stall_timeout_s,
            self.counters.stalls,
            limit,
            source=self.source.name,
            failures=self.counters.stalls,
        )
        if self.counters.stalls >= limit:
            raise SourceFailed(
                f"source {self.source.describe()}: stalled, no frame for "
                f"{self.settings.stall_timeout_s * self.counters.stalls:.0f} s"
            )

    # -- per frame -----------------------------------------------------------

    def _process(self, frame: Any, capture_wait: float) -> Result:
        # The capture thread was left asleep by take(): wake it once the frame is copied.
        out = self.classifier.classify(frame, before_invoke=self.slot.wake_producer)
        times = StageTimes(capture_wait, out.preprocess_s, out.invoke_s, out.postprocess_s)
        result = Result(frame.frame_id, frame.wall_time, time.monotonic(), out.top, times)
        self.dispatcher.submit(result)
        self._latencies.add(times.total)
        self.counters.frames += 1
        self.counters.last_label = out.top[0].label
        if self.counters.frames == 1:
            self._announce_ready(result)
        return result

    def _announce_ready(self, result: Result) -> None:
        model = self.classifier.model
        emit(
            log,
            logging.INFO,
            Event.READY,
            "ready: first frame classified as %s %.2f in %.1f ms",
            result.top[0].label,
            result.top[0].score,
            result.times.invoke * 1e3,
            model=model.name,
            model_sha256=model.sha256,
            backend=model.loaded.backend,
            label=result.top[0].label,
            frame_id=result.frame_id,
        )
        self.notifier.ready(self.status_line())

    # -- reporting -----------------------------------------------------------

    def status_line(self) -> str:
        decision = self.counters.last_decision
        p50, _ = self._latencies.percentiles_ms()
        elapsed = max(1e-9, time.monotonic() - getattr(self, "_summary_started", time.monotonic()))
        fps = self._latencies.count / elapsed
        temp = decision.readings.get("cpu_temp_c")
        temp_text = f"{temp:.1f}°C" if isinstance(temp, int | float) else "n/a"
        return (
            f"{fps:.1f} fps, {p50:.1f} ms, {temp_text}, {decision.state}, "
            f"last: {self.counters.last_label or '-'}"
        )

    def _emit_summary(self, now: float, final: bool = False) -> None:
        started = getattr(self, "_summary_started", now)
        interval = max(1e-9, now - started)
        frames = self._latencies.count
        if final and frames == 0:
            return
        p50, p95 = self._latencies.percentiles_ms()
        decision = self.counters.last_decision
        summary = Summary(
            wall_time=time.time(),
            interval_s=interval,
            frames=frames,
            fps=frames / interval,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            # Per interval, like `frames`; the running total is the metrics counter.
            dropped_frames=self.slot.dropped - self._dropped_at_last_summary,
            extra={"throttle_state": decision.state, **decision.readings},
        )
        self.dispatcher.submit(summary)
        self.notifier.status(self.status_line())
        self._latencies.reset()
        self._dropped_at_last_summary = self.slot.dropped
        self._summary_started = now

    def _do_reload(self) -> None:
        self.reload_requested.clear()
        if self._reload is None:
            return
        replacement = self._reload()
        if replacement is not None:
            self.classifier = replacement
            if self._capture is not None:
                self._capture.prepare = _preparer_for(replacement)


def _preparer_for(classifier: Classifier) -> FramePreparer | None:
    """Crop/resize on the capture thread, to the geometry this classifier expects.

    None (the loop preprocesses whole frames) for a classifier without a Preprocessor.
    """
    pre = getattr(classifier, "preprocess", None)
    if not isinstance(pre, Preprocessor):
        return None
    return FramePreparer(pre.width, pre.height, pre.crop)
