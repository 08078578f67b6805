"""Results to the log: only changes, never every frame (SD cards wear out)."""

from __future__ import annotations

import logging

from pi_daemon.events import Event, emit
from pi_daemon.results import Result, Summary
from pi_daemon.sinks.base import Sink

log = logging.getLogger("pi_daemon.results")


class LogSink(Sink):
    """Logs a result when the top-1 label changes or its score crosses the threshold.

    Crossing means moving from below `score_threshold` to at or above it, or back;
    a label that stays put with a steady score produces no lines at all.
    """

    name = "log"

    def __init__(self, score_threshold: float) -> None:
        self.score_threshold = score_threshold
        self._last_label: str | None = None
        self._last_above: bool | None = None

    def on_result(self, result: Result) -> None:
        best = result.top[0]
        above = best.score >= self.score_threshold
        if best.label == self._last_label and above == self._last_above:
            return
        self._last_label, self._last_above = best.label, above
        emit(
            log,
            logging.INFO,
            Event.RESULT,
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

    def on_summary(self, summary: Summary) -> None:
        extra = summary.extra
        emit(
            log,
            logging.INFO,
            Event.SUMMARY,
            "%d frames in %.0f s: %.1f fps, latency p50 %.1f ms p95 %.1f ms, %d dropped%s",
            summary.frames,
            summary.interval_s,
            summary.fps,
            summary.latency_p50_ms,
            summary.latency_p95_ms,
            summary.dropped_frames,
            "".join(
                f", {k} {v}" for k, v in extra.items() if k in ("cpu_temp_c", "throttle_state")
            ),
            fps=round(summary.fps, 2),
            frames=summary.frames,
            latency_p50_ms=round(summary.latency_p50_ms, 2),
            latency_p95_ms=round(summary.latency_p95_ms, 2),
            dropped_frames=summary.dropped_frames,
            cpu_temp_c=extra.get("cpu_temp_c"),
            throttle_state=extra.get("throttle_state"),
        )
