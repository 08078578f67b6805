"""The types the delivery package shares with its callers: what the connection is doing, the
status snapshot, the device state it publishes and the commands it accepts.

Plain data only (standard library): the health endpoint, the metrics collector and the state
snapshot read these without importing the MQTT client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class ConnectionState(StrEnum):
    """The connection to the broker; the value is the journal's MQTT_STATE field."""

    CONNECTING = "connecting"  # started; the broker has not answered yet
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # unreachable, refused or dropped: retrying with backoff
    UNAUTHORIZED = "unauthorized"  # the broker refused the credentials: long backoff
    CLOSED = "closed"  # close() ran; nothing more is sent


class DropReason(StrEnum):
    """Why events left the outbox without reaching the broker (a metrics label)."""

    FULL = "full"  # the outbox reached outbox_max_bytes: the oldest events went first
    OVERSIZED = "oversized"  # one event larger than the whole outbox


class Command(StrEnum):
    """What `<topic_prefix>/<device_id>/set` may ask for: {"command": "<value>"}."""

    PAUSE = "pause"
    RESUME = "resume"
    RELOAD = "reload"  # the same path as SIGHUP


def _frozen(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({reason.value: int(counts.get(reason, 0)) for reason in DropReason})


@dataclass(frozen=True)
class DeliveryStatus:
    """One consistent snapshot of the delivery machinery, cheap to take at any time."""

    state: ConnectionState
    # Why the connection is not up ("" while connected): "connection refused", ...
    reason: str
    # Events waiting for the broker, and their bytes (payloads only).
    outbox_depth: int
    outbox_bytes: int
    outbox_capacity: int
    # Events dropped since start, by DropReason value (every reason present).
    dropped: Mapping[str, int] = field(default_factory=dict)
    # Event publishes handed to the client (a republish after a reconnect counts again) ...
    published: int = 0
    # ... and acknowledged by the broker (PUBACK at QoS 1; written to the socket at QoS 0).
    acknowledged: int = 0
    # Every event with seq <= this survives a kill -9 or a power cut (it is on disk or
    # already acknowledged); 0 before the first event.
    synced_seq: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dropped", _frozen(self.dropped))

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED

    @property
    def outbox_fill(self) -> float:
        """outbox_bytes as a fraction of the capacity (the health endpoint's 90 % rule)."""
        return self.outbox_bytes / self.outbox_capacity if self.outbox_capacity else 0.0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def _finite(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


@dataclass(frozen=True)
class DeviceState:
    """What the retained `<topic_prefix>/<device_id>/state` topic says (latest wins).

    The Home Assistant discovery payloads read these keys, so they are fixed here rather
    than in a dict each caller rebuilds. None means "unknown" (no frame yet, or a sensor
    that is unavailable); Home Assistant shows it as unknown.
    """

    label: str | None = None
    score: float | None = None
    fps: float | None = None
    throttle_state: str = "normal"
    cpu_temp_c: float | None = None
    undervoltage: bool | None = None
    model_sha256: str = ""
    paused: bool = False

    def as_dict(self, time: float) -> dict[str, Any]:
        """The JSON object published, stamped with the wall-clock `time` it was taken."""
        return {
            "time": round(time, 6),
            "label": self.label,
            "score": _finite(self.score, 6),
            "fps": _finite(self.fps, 3),
            "throttle_state": self.throttle_state,
            "cpu_temp_c": _finite(self.cpu_temp_c, 2),
            "undervoltage": self.undervoltage,
            "model_sha256": self.model_sha256,
            "paused": self.paused,
        }
