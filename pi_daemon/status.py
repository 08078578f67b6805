"""One typed snapshot of the running daemon, and what it means for health.

The status line (`systemctl status`), the summaries, the Prometheus collector, the
`/healthz` endpoint and the retained MQTT state all read a `DaemonStatus` taken by
`Daemon.status()`, rather than each reaching into the daemon's attributes or rebuilding
dicts of string keys. Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pi_daemon.mqtt.status import DeliveryStatus, DeviceState
from pi_daemon.readings import Readings


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sha256: str
    backend: str
    backend_version: str


@dataclass(frozen=True)
class DaemonStatus:
    monotonic: float  # when the snapshot was taken
    started_monotonic: float
    model: ModelInfo
    source: str
    frames: int  # classified
    skipped_frames: int  # not classified because the scene had not changed
    dropped_frames: int  # overwritten in the slot before the loop took them
    sink_events_dropped: int
    last_label: str
    last_score: float
    last_frame_monotonic: float | None  # when the loop last took a frame (classified or not)
    stalled: bool  # no frame for the stall timeout
    fps: float  # frames classified per second over the current summary interval
    latency_p50_ms: float
    throttle_state: str = "normal"
    throttle_paused: bool = False
    commanded_pause: bool = False
    min_interval_s: float = 0.0
    readings: Readings = field(default_factory=Readings)
    delivery: DeliveryStatus | None = None

    def with_delivery(self, delivery: DeliveryStatus | None) -> DaemonStatus:
        return replace(self, delivery=delivery)

    @property
    def paused(self) -> bool:
        return self.throttle_paused or self.commanded_pause

    def line(self) -> str:
        """The one-line STATUS= for `systemctl status`."""
        temp = self.readings.cpu_temp_c
        temp_text = f"{temp:.1f}°C" if temp is not None else "n/a"
        pause = ", paused by command" if self.commanded_pause else ""
        return (
            f"{self.fps:.1f} fps, {self.latency_p50_ms:.1f} ms, {temp_text}, "
            f"{self.throttle_state}{pause}, last: {self.last_label or '-'}"
        )

    def device_state(self) -> DeviceState:
        """What the retained MQTT `state` topic says."""
        return DeviceState(
            label=self.last_label or None,
            score=self.last_score if self.last_label else None,
            fps=self.fps,
            throttle_state=self.throttle_state,
            cpu_temp_c=self.readings.cpu_temp_c,
            undervoltage=self.readings.undervoltage,
            model_sha256=self.model.sha256,
            paused=self.paused,
        )


# Above this share of its byte budget the outbox counts as unhealthy: events will soon be
# dropped (oldest first) unless the broker comes back.
OUTBOX_UNHEALTHY_FILL = 0.9


def health(status: DaemonStatus) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for /healthz: 200 while frames flow, else 503 with a reason."""
    reasons = []
    if status.frames == 0 and status.skipped_frames == 0:
        reasons.append("starting: no frame classified yet")
    if status.stalled:
        reasons.append(f"source {status.source} stalled: no frame")
    if status.throttle_paused:
        reasons.append(f"inference paused by the throttle ({status.throttle_state})")
    if status.commanded_pause:
        reasons.append("inference paused by command")
    delivery = status.delivery
    if delivery is not None and delivery.outbox_fill > OUTBOX_UNHEALTHY_FILL:
        reasons.append(f"MQTT outbox {delivery.outbox_fill:.0%} full")
    body: dict[str, Any] = {
        "status": "unhealthy" if reasons else "ok",
        "reason": "; ".join(reasons) or None,
        "model_sha256": status.model.sha256,
        "throttle_state": status.throttle_state,
        "paused": status.paused,
        "frames": status.frames,
        "skipped_frames": status.skipped_frames,
        "fps": round(status.fps, 2),
        "last_frame_age_s": (
            round(status.monotonic - status.last_frame_monotonic, 3)
            if status.last_frame_monotonic is not None
            else None
        ),
        "mqtt": None,
        "outbox_depth": None,
    }
    if delivery is not None:
        body["mqtt"] = delivery.state.value
        body["outbox_depth"] = delivery.outbox_depth
    return (503 if reasons else 200), body
