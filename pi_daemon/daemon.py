"""The service loop: newest frame → classifier → events, paced by the governor.

The loop knows only interfaces: a FrameSource (through the capture thread, which also
runs the motion gate), a Classifier, the event hub (results and summaries go to every
sink through it), a Governor that may slow or pause work, a Notifier that talks to the
service manager, and optionally event rules and a snapshot store. `app.py` builds the real
ones from config.

The daemon owns the reload protocol (SIGHUP, or an MQTT `reload` command): between two
frames it tells the service manager, asks `reload()` for a new classifier, swaps it in or
keeps the old one, and says which.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from pi_daemon.capture import CaptureThread, FramePreparer, LatestFrameSlot, RetryPolicy, Skipped
from pi_daemon.classifier import Classifier
from pi_daemon.control import Decision, Governor, Notifier, SilentNotifier, UnlimitedGovernor
from pi_daemon.errors import EX_OK, PiDaemonError, SourceFailed
from pi_daemon.events import Event, EventHub, emit, local_hub
from pi_daemon.frame import Frame
from pi_daemon.preprocess import Preprocessor
from pi_daemon.results import LatencyWindow, Result, StageTimes, Summary
from pi_daemon.sinks.base import SinkDispatcher
from pi_daemon.sources.base import FrameSource, SourceEnded
from pi_daemon.status import DaemonStatus, ModelInfo

if TYPE_CHECKING:  # imported by app.py only when configured
    from pi_daemon.motion import MotionGate
    from pi_daemon.rules import EventRules, LabelEvent
    from pi_daemon.snapshots import SnapshotStore

log = logging.getLogger(__name__)

# A camera still for an event's snapshot may take a frame time; never longer than this.
SNAPSHOT_TIMEOUT_S = 0.5


class ReloadFailed(PiDaemonError):
    """The new config or model cannot be used; the running one stays."""


@dataclass
class LoopSettings:
    # Raised to two of the source's frame intervals when that is longer (a slow replay).
    # The capture thread's read timeout is the source's own (FrameSource.read_timeout_s).
    stall_timeout_s: float = 10.0
    summary_interval_s: float = 60.0
    pause_poll_s: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class Counters:
    frames: int = 0  # classified
    skipped: int = 0  # not classified: the motion gate saw no change
    stalls: int = 0
    last_label: str = ""
    last_score: float = 0.0
    last_frame_monotonic: float | None = None
    last_decision: Decision = field(default_factory=Decision)


@dataclass
class Extras:
    """The optional parts of the loop: motion gating, event rules, snapshots."""

    gate: MotionGate | None = None
    rules: EventRules | None = None
    snapshots: SnapshotStore | None = None


class Daemon:
    """Runs until `stop` is set, the source ends, or the source fails for good.

    `classifier` may be swapped between frames by `reload`; everything else is fixed for
    the daemon's life. `dispatcher` belongs to the caller, who closes it after run()
    returns (the stop event must still reach the sinks).
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
        reload: Callable[[], Classifier] | None = None,
        hub: EventHub | None = None,
        extras: Extras | None = None,
        paused_by_command: threading.Event | None = None,
        reload_requested: threading.Event | None = None,
    ) -> None:
        self.classifier = classifier
        self.source = source
        self.dispatcher = dispatcher
        self.hub = hub or local_hub(dispatcher.submit)
        self.settings = settings
        self.governor = governor or UnlimitedGovernor()
        self.notifier = notifier or SilentNotifier()
        self.stop = stop or threading.Event()
        # Set by SIGHUP (the signal relay) or an MQTT `reload` command.
        self.reload_requested = reload_requested or threading.Event()
        # Set by an MQTT `pause` command, cleared by `resume`: a deliberate pause.
        self.paused_by_command = paused_by_command or threading.Event()
        # Set once the loop has stopped taking frames (the signal relay watches it).
        self.loop_left = threading.Event()
        self._reload = reload
        self.extras = extras or Extras()
        self.slot = LatestFrameSlot()
        self.counters = Counters()
        self.started = time.monotonic()
        self._latencies = LatencyWindow()
        self._at_last_summary = (0, 0)  # (dropped, skipped) when the last summary went out
        self._summary_started = self.started
        self._capture: CaptureThread | None = None
        self._stall_timeout_s = settings.stall_timeout_s
        self._stalled_now = False
        # Frames captured before this monotonic time are not classified (see _do_reload).
        self._stale_before = 0.0
        self._discarded_after_reload = 0

    # -- lifecycle -----------------------------------------------------------

    def run(self, max_frames: int | None = None) -> int:
        """Process frames; return the process exit code. Raises PiDaemonError on failure.

        `max_frames` counts frames taken from the source, classified or skipped.
        """
        read_timeout = self.source.read_timeout_s
        self._stall_timeout_s = max(self.settings.stall_timeout_s, 2 * self.source.frame_interval_s)
        if self._stall_timeout_s > self.settings.stall_timeout_s:
            log.info(
                "stall timeout %.1f s: %s delivers a frame every %.1f s",
                self._stall_timeout_s,
                self.source.describe(),
                self.source.frame_interval_s,
            )
        self._capture = CaptureThread(
            self.source,
            self.slot,
            self.stop,
            self.settings.retry,
            read_timeout,
            prepare=_preparer_for(self.classifier),
            gate=self.extras.gate,
        )
        self._capture.start()
        try:
            return self._loop(max_frames)
        finally:
            self.loop_left.set()
            self.notifier.stopping()
            self.stop.set()
            self.source.interrupt()
            self._capture.join(timeout=read_timeout + 1)
            if self._capture.is_alive():
                log.warning("capture thread still blocked in the source; leaving it behind")
            self.governor.close()
            self._finish_rules()
            self._emit_summary(time.monotonic(), final=True)

    @property
    def capture_stopped(self) -> bool:
        """The capture thread is not using the source (it ended, or never started)."""
        return self._capture is None or not self._capture.is_alive()

    def _loop(self, max_frames: int | None) -> int:
        settings = self.settings
        last_started: float | None = None  # when the last classified frame began
        summary_due = time.monotonic() + settings.summary_interval_s
        taken = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if self.reload_requested.is_set():
                self._do_reload()
            if now >= summary_due:
                self._emit_summary(now)
                summary_due = now + settings.summary_interval_s
            decision = self.governor.poll(now)
            self.counters.last_decision = decision
            if decision.pause or self.paused_by_command.is_set():
                # A deliberate pause is progress: the watchdog must not kill us for it.
                self.notifier.progress(now)
                self.stop.wait(settings.pause_poll_s)
                continue
            # The interval is the governor's latest, counted from the last classified frame:
            # a throttle that slows down (or lets go) applies from the very next frame.
            next_allowed = (
                last_started + decision.min_interval_s if last_started is not None else 0.0
            )
            if now < next_allowed:
                # Deliberate pacing is progress too: a throttle interval longer than half
                # the watchdog timeout must not get a healthy daemon killed. The motion
                # gate keeps judging frames meanwhile; one with motion waits in the slot.
                self.notifier.progress(now)
                self.stop.wait(min(next_allowed - now, settings.pause_poll_s))
                continue
            wait_started = time.perf_counter()
            try:
                item = self._take_frame(self._stall_timeout_s)
            except SourceEnded:
                log.info(
                    "source ended after %d frames (%d classified)",
                    taken,
                    self.counters.frames,
                )
                return EX_OK
            if item is None:
                if self.stop.is_set():
                    break
                # No progress ping here: a stuck camera must let the watchdog fire.
                self._stalled()
                continue
            self.counters.stalls = 0
            self._stalled_now = False
            self.counters.last_frame_monotonic = item.monotonic
            taken += 1
            if isinstance(item, Skipped):
                # Nothing changed: no invoke(), the last result stands. Still progress,
                # and the throttle's minimum interval is not spent on it.
                self.counters.skipped += 1
                self.notifier.progress(time.monotonic())
            elif item.monotonic < self._stale_before:
                # Captured before a reload changed the input geometry: it may have been
                # prepared for the old model, whose picture the new one would misread.
                self._discarded_after_reload += 1
                continue
            else:
                self._report_discarded()
                started = time.monotonic()
                result = self._process(item, time.perf_counter() - wait_started)
                last_started = started
                self.notifier.progress(result.monotonic)
            if max_frames is not None and taken >= max_frames:
                break
        return EX_OK

    def _report_discarded(self) -> None:
        if self._discarded_after_reload:
            log.info(
                "reload: skipped %d frame(s) captured for the previous model's input",
                self._discarded_after_reload,
            )
            self._discarded_after_reload = 0

    def _take_frame(self, timeout: float) -> Frame | Skipped | None:
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
        self._stalled_now = True
        limit = self.settings.retry.max_consecutive_failures
        emit(
            log,
            logging.WARNING,
            Event.SOURCE_FAULT,
            "no frame from %s for %.0f s (%d/%d)",
            self.source.describe(),
            self._stall_timeout_s,
            self.counters.stalls,
            limit,
            source=self.source.name,
            failures=self.counters.stalls,
        )
        if self.counters.stalls >= limit:
            raise SourceFailed(
                f"source {self.source.describe()}: stalled, no frame for "
                f"{self._stall_timeout_s * self.counters.stalls:.0f} s"
            )

    # -- per frame -----------------------------------------------------------

    def _process(self, frame: Frame, capture_wait: float) -> Result:
        # The capture thread was left asleep by take(): wake it once the frame is copied.
        out = self.classifier.classify(frame, before_invoke=self.slot.wake_producer)
        times = StageTimes(capture_wait, out.preprocess_s, out.invoke_s, out.postprocess_s)
        result = Result(frame.frame_id, frame.wall_time, time.monotonic(), out.top, times)
        self.hub.record("result", result, result.wall_time, result.monotonic)
        self._latencies.add(times.total)
        counters = self.counters
        counters.frames += 1
        counters.last_label, counters.last_score = out.top[0].label, out.top[0].score
        if counters.frames == 1:
            self._announce_ready(result)
        if self.extras.rules is not None:
            for event in self.extras.rules.observe(frame.frame_id, result.monotonic, out.top):
                self._label_event(event)
        return result

    def _label_event(self, event: LabelEvent) -> None:
        store, rules = self.extras.snapshots, self.extras.rules
        if event.event == "start" and store is not None and rules is not None:
            # Encoded only on a start event, never per frame; the end event names it too.
            name = store.take(
                lambda: self.source.snapshot(event.first_frame, SNAPSHOT_TIMEOUT_S),
                event.label,
                event.last_frame,
            )
            if name is not None:
                rules.attach_snapshot(event.label, name)
                event = event.with_snapshot(name)
        emit(
            log,
            logging.INFO,
            Event.LABEL,
            "%s %s: peak %.2f, frames %d-%d, %.1f s%s",
            event.label,
            "started" if event.event == "start" else "ended",
            event.peak_score,
            event.first_frame,
            event.last_frame,
            event.duration_s,
            f", snapshot {event.snapshot}" if event.snapshot else "",
            body=event,
            **event.journal_fields(),
        )

    def _finish_rules(self) -> None:
        if self.extras.rules is not None:
            for event in self.extras.rules.finish(time.monotonic()):
                self._label_event(event)

    def _announce_ready(self, result: Result) -> None:
        emit(
            log,
            logging.INFO,
            Event.READY,
            "ready: first frame classified as %s %.2f in %.1f ms",
            result.top[0].label,
            result.top[0].score,
            result.times.invoke * 1e3,
            label=result.top[0].label,
            frame_id=result.frame_id,
            **model_fields(self.classifier),
        )
        self.notifier.ready(self.status_line())

    # -- reporting -----------------------------------------------------------

    def status(self) -> DaemonStatus:
        """A snapshot of the daemon for the status line, summaries, metrics and health."""
        now = time.monotonic()
        counters, decision = self.counters, self.counters.last_decision
        model = self.classifier.model
        p50, _ = self._latencies.percentiles_ms()
        return DaemonStatus(
            monotonic=now,
            started_monotonic=self.started,
            model=ModelInfo(model.name, model.sha256, model.loaded.backend, model.loaded.version),
            source=self.source.name,
            frames=counters.frames,
            skipped_frames=counters.skipped,
            dropped_frames=self.slot.dropped,
            sink_events_dropped=self.dispatcher.dropped_events,
            last_label=counters.last_label,
            last_score=counters.last_score,
            last_frame_monotonic=counters.last_frame_monotonic,
            stalled=self._stalled_now,
            fps=self._latencies.count / max(1e-9, now - self._summary_started),
            latency_p50_ms=p50,
            throttle_state=decision.state,
            throttle_paused=decision.pause,
            commanded_pause=self.paused_by_command.is_set(),
            min_interval_s=decision.min_interval_s,
            readings=decision.readings,
        )

    def status_line(self) -> str:
        return self.status().line()

    def _emit_summary(self, now: float, final: bool = False) -> None:
        interval = max(1e-9, now - self._summary_started)
        frames = self._latencies.count
        dropped, skipped = self.slot.dropped, self.counters.skipped
        skipped_now = skipped - self._at_last_summary[1]
        if final and frames == 0 and skipped_now == 0:
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
            # Per interval, like `frames`; the running totals are the metrics counters.
            dropped_frames=dropped - self._at_last_summary[0],
            skipped_frames=skipped_now,
            throttle_state=decision.state,
            readings=decision.readings,
        )
        self.hub.record("summary", summary, summary.wall_time, now)
        self.notifier.status(self.status_line())
        self._latencies.reset()
        self._at_last_summary = (dropped, skipped)
        self._summary_started = now

    # -- reload --------------------------------------------------------------

    def _do_reload(self) -> None:
        self.reload_requested.clear()
        if self._reload is None:
            return
        # systemd holds the unit in "reloading" from RELOADING=1 until READY=1, so READY=1
        # follows whatever the outcome: a failed reload leaves the service running.
        self.notifier.reloading()
        try:
            replacement = self._reload()
            new_geometry = _geometry(replacement) != _geometry(self.classifier)
            if new_geometry:
                # Stills the source keeps fitted to the old input would be misread.
                self.source.refit(_prescale_for(replacement))
        except PiDaemonError as error:
            self._reload_failed(str(error))
            return
        except Exception as error:  # a reload must never take a running service down
            self._reload_failed(f"{type(error).__name__}: {error}")
            return
        finally:
            self.notifier.ready(self.status_line())
        self.classifier = replacement
        if new_geometry:
            gate = self.extras.gate
            if gate is not None and gate.roi != replacement.preprocess.roi:
                self.extras.gate = gate.with_roi(replacement.preprocess.roi)
        if self._capture is not None:
            self._capture.prepare = _preparer_for(replacement)
            self._capture.gate = self.extras.gate
        if new_geometry:
            # Once the source and the preparer are the new model's: a frame stamped before
            # this may show or be prepared for the old input.
            self._stale_before = time.monotonic()

    def _reload_failed(self, reason: str) -> None:
        model = self.classifier.model
        emit(
            log,
            logging.ERROR,
            Event.RELOAD,
            "reload failed, still running model %s (sha256 %s…): %s",
            model.name,
            model.sha256[:12],
            "; ".join(reason.splitlines()),
            result="failed",
            **model_fields(self.classifier),
        )


class ModelFields(TypedDict):
    model: str
    model_sha256: str
    backend: str


def model_fields(classifier: Classifier) -> ModelFields:
    """The journal fields that name a classifier's model, for start, ready and reloads."""
    model = classifier.model
    return {"model": model.name, "model_sha256": model.sha256, "backend": model.loaded.backend}


def _geometry(classifier: Classifier) -> tuple[object, ...] | None:
    pre = getattr(classifier, "preprocess", None)
    return (pre.width, pre.height, pre.crop, pre.roi) if isinstance(pre, Preprocessor) else None


def _prescale_for(classifier: Classifier) -> Callable[[np.ndarray], np.ndarray] | None:
    """How this classifier fits a still to its input once (None: it has no Preprocessor)."""
    pre = getattr(classifier, "preprocess", None)
    return pre.prescale if isinstance(pre, Preprocessor) else None


def _preparer_for(classifier: Classifier) -> FramePreparer | None:
    """Crop/resize on the capture thread, to the geometry this classifier expects.

    None (the loop preprocesses whole frames) for a classifier without a Preprocessor.
    """
    pre = getattr(classifier, "preprocess", None)
    if not isinstance(pre, Preprocessor):
        return None
    return FramePreparer(pre.width, pre.height, pre.crop, pre.roi)
