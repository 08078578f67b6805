"""What the pipeline produces: per-frame results and periodic summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pi_daemon.prediction import Prediction
from pi_daemon.readings import Readings


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage for one frame."""

    capture_wait: float
    preprocess: float
    invoke: float
    postprocess: float

    @property
    def total(self) -> float:
        return self.preprocess + self.invoke + self.postprocess


@dataclass(frozen=True)
class Result:
    frame_id: int
    wall_time: float
    monotonic: float
    top: list[Prediction]
    times: StageTimes

    def fields(self) -> dict[str, Any]:
        """The result's own fields in JSON sinks (the event hub adds type, seq, times)."""
        return {
            "frame_id": self.frame_id,
            "top": [
                {"label": p.label, "index": p.index, "score": round(p.score, 6)} for p in self.top
            ],
            "ms": {
                "capture_wait": round(self.times.capture_wait * 1e3, 3),
                "preprocess": round(self.times.preprocess * 1e3, 3),
                "invoke": round(self.times.invoke * 1e3, 3),
                "postprocess": round(self.times.postprocess * 1e3, 3),
            },
        }


@dataclass(frozen=True)
class Summary:
    """One summary interval: how many frames, how fast, and the board's state."""

    wall_time: float
    interval_s: float
    frames: int  # classified in the interval
    fps: float
    latency_p50_ms: float
    latency_p95_ms: float
    dropped_frames: int
    skipped_frames: int = 0  # taken but not classified: the scene had not changed
    throttle_state: str = "normal"
    readings: Readings = field(default_factory=Readings)

    def fields(self) -> dict[str, Any]:
        """The summary's fields in JSON sinks (the event hub adds type, seq, times)."""
        return {
            "interval_s": round(self.interval_s, 3),
            "frames": self.frames,
            "skipped_frames": self.skipped_frames,
            "fps": round(self.fps, 3),
            "latency_p50_ms": round(self.latency_p50_ms, 3),
            "latency_p95_ms": round(self.latency_p95_ms, 3),
            "dropped_frames": self.dropped_frames,
            "throttle_state": self.throttle_state,
            **self.readings.summary_fields(),
        }


class LatencyWindow:
    """Latencies of the frames since the last summary, in a fixed ring buffer."""

    def __init__(self, capacity: int = 4096) -> None:
        self._values = np.zeros(capacity, np.float64)
        self._count = 0

    def add(self, seconds: float) -> None:
        self._values[self._count % self._values.shape[0]] = seconds
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def percentiles_ms(self) -> tuple[float, float]:
        n = min(self._count, self._values.shape[0])
        if n == 0:
            return 0.0, 0.0
        p50, p95 = np.percentile(self._values[:n], (50, 95))
        return float(p50) * 1e3, float(p95) * 1e3

    def reset(self) -> None:
        self._count = 0
