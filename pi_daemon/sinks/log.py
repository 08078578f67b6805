"""Results and summaries to the log: label changes and summaries, never every frame
(SD cards wear out). Every other event was logged where it happened (`events.emit`)."""

from __future__ import annotations

import logging

from pi_daemon.events import Event, EventRecord, log_event
from pi_daemon.identity import Identity
from pi_daemon.results import Result, Summary
from pi_daemon.sinks.base import Sink

log = logging.getLogger("pi_daemon.results")


class LogSink(Sink):
    """Logs a result when the top-1 label changes or its score crosses the threshold.

    Crossing means moving from below `score_threshold` to at or above it, or back;
    a label that stays put with a steady score produces no lines at all. With
    `log_results` False (event rules on, `rules.journal_results = "events"`), results are
    not logged at all: the label start and end events stand for them.
    """

    name = "log"

    def __init__(self, score_threshold: float, identity: Identity, log_results: bool = True):
        self.score_threshold = score_threshold
        self.identity = identity
        self.log_results = log_results
        self._last_label: str | None = None
        self._last_above: bool | None = None

    def on_event(self, record: EventRecord) -> None:
        body = record.body
        if isinstance(body, Result):
            if self.log_results:
                self._result(body, record)
        elif isinstance(body, Summary):
            self._summary(body, record)

    def _result(self, result: Result, record: EventRecord) -> None:
        best = result.top[0]
        above = best.score >= self.score_threshold
        if best.label == self._last_label and above == self._last_above:
            return
        self._last_label, self._last_above = best.label, above
        log_event(
            log,
            logging.INFO,
            Event.RESULT,
            record.journal_fields(self.identity),
            "frame %d: %s %.2f%s",
            result.frame_id,
            best.label,
            best.score,
            "" if above else " (below threshold)",
            frame_id=result.frame_id,
            label=best.label,
            label_index=best.index,
            score=round(best.score, 4),
            latency_ms=round(result.times.invoke * 1e3, 2),
        )

    def _summary(self, summary: Summary, record: EventRecord) -> None:
        temp = summary.readings.cpu_temp_c
        log_event(
            log,
            logging.INFO,
            Event.SUMMARY,
            record.journal_fields(self.identity),
            "%d frames in %.0f s: %.1f fps, latency p50 %.1f ms p95 %.1f ms, %d dropped%s%s",
            summary.frames,
            summary.interval_s,
            summary.fps,
            summary.latency_p50_ms,
            summary.latency_p95_ms,
            summary.dropped_frames,
            f", {summary.skipped_frames} skipped (unchanged)" if summary.skipped_frames else "",
            f", throttle_state {summary.throttle_state}"
            + (f", cpu_temp_c {temp}" if temp is not None else ""),
            fps=round(summary.fps, 2),
            frames=summary.frames,
            skipped_frames=summary.skipped_frames,
            latency_p50_ms=round(summary.latency_p50_ms, 2),
            latency_p95_ms=round(summary.latency_p95_ms, 2),
            dropped_frames=summary.dropped_frames,
            cpu_temp_c=temp,
            throttle_state=summary.throttle_state,
        )
