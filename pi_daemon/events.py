"""Events: what the daemon reports, with one identity and one order for every sink.

Every state change or error the daemon reports goes through `emit()`, and every
classified frame and summary through `EventHub.record()`. Both make an `EventRecord`:
the event's type and fields plus its identity (device id, boot id, a sequence number
that never repeats, wall and monotonic time, whether the clock was synchronised). The
record goes to the sinks (JSONL file, MQTT outbox, metrics) in sequence order, and its
fields go to the journal, where `journalctl -u pi-daemon PI_DAEMON_EVENT=throttle`
filters them; the stderr formatter shows the message only. The README lists every field.

`app.py` installs the one hub for the process (`install()`), the way logging handlers
are installed in one place; without one (tests of a single module, `classify`), `emit()`
only logs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pi_daemon.identity import ClockSync, Identity, SequenceNumbers


class Event(StrEnum):
    """Event types; the value is the PI_DAEMON_EVENT field."""

    START = "start"
    READY = "ready"
    RESULT = "result"
    SUMMARY = "summary"
    THROTTLE = "throttle"
    SENSOR_UNAVAILABLE = "sensor_unavailable"
    SOURCE_FAULT = "source_fault"
    RELOAD = "reload"
    STOP = "stop"
    ERROR = "error"
    MQTT = "mqtt"
    LABEL = "label"


# Stable 128-bit ids (journalctl MESSAGE_ID=...). Never change a published one.
MESSAGE_IDS: dict[Event, str] = {
    Event.START: "41c03dead3bc4057975de770e99d3cd5",
    Event.READY: "b4c53f253d244be49c9d7ec216860bd7",
    Event.RESULT: "a6cb335565f641dea9354cff7ff12647",
    Event.SUMMARY: "ddc1aa513d684b668ca7fcd1b16ef1f3",
    Event.THROTTLE: "3723465b72ba4f17afa12dc886261232",
    Event.SENSOR_UNAVAILABLE: "2ae2ca6c952647f599ba12c6a1c5f230",
    Event.SOURCE_FAULT: "a61dac509ba2411ba200af9b33813d0e",
    Event.RELOAD: "451fc7d561f84334805ea254c80d47cc",
    Event.STOP: "ad17d8a86d594c9aa4fbf61860b2670c",
    Event.ERROR: "8f277f0b5d344dd79a17accc1741f19c",
    Event.MQTT: "7214b89208884a60bc09ae3440a28806",
    Event.LABEL: "e45ba3740b7d45eca62fa488a4f4122d",
}

# Journal field names: A-Z, 0-9 and _, not starting with _. Keep README in step.
FIELDS = (
    "PI_DAEMON_EVENT",
    "MESSAGE_ID",
    "FRAME_ID",
    "LABEL",
    "LABEL_INDEX",
    "SCORE",
    "LATENCY_MS",
    "FPS",
    "LATENCY_P50_MS",
    "LATENCY_P95_MS",
    "FRAMES",
    "DROPPED_FRAMES",
    "CPU_TEMP_C",
    "THROTTLE_STATE",
    "THROTTLE_PREVIOUS",
    "THROTTLE_REASON",
    "MIN_INTERVAL_MS",
    "SENSOR",
    "SOURCE",
    "FAILURES",
    "MODEL",
    "MODEL_SHA256",
    "BACKEND",
    "NUM_THREADS",
    "RESULT",
    "EXIT_CODE",
    "MQTT_STATE",
    "MQTT_REASON",
    "MQTT_COMMAND",
    "OUTBOX_DEPTH",
    "OUTBOX_DROPPED",
    "SKIPPED_FRAMES",
    # Label events (pi_daemon/rules.py): a label started or ended.
    "LABEL_EVENT",
    "PEAK_SCORE",
    "FIRST_FRAME",
    "LAST_FRAME",
    "DURATION_S",
    "END_REASON",
    "SNAPSHOT",
    # Identity, on every event (EventRecord.to_dict has the same names in lower case).
    "DEVICE_ID",
    "BOOT_ID",
    "SEQ",
    "TIME",
    "MONOTONIC",
    "CLOCK_SYNCED",
)


def fields_for(event: Event, **fields: Any) -> dict[str, Any]:
    """The `extra=` mapping for a log record of this event type."""
    extra: dict[str, Any] = {"PI_DAEMON_EVENT": event.value, "MESSAGE_ID": MESSAGE_IDS[event]}
    for key, value in fields.items():
        name = key.upper()
        if name not in FIELDS:
            raise ValueError(f"undocumented journal field {name}")
        if value is not None:
            extra[name] = value
    return extra


class HasFields(Protocol):
    """An event body that is not a plain mapping (a Result, a Summary)."""

    def fields(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event with its identity: what every sink receives."""

    type: str
    seq: int
    time: float
    monotonic: float
    clock_synced: bool
    # A Result or Summary (kept typed for the sinks that read it), or JSON-ready fields.
    body: HasFields | dict[str, Any]

    def fields(self) -> dict[str, Any]:
        body = self.body
        return dict(body) if isinstance(body, dict) else body.fields()

    def to_dict(self, identity: Identity) -> dict[str, Any]:
        """The JSON object written to the events file and published over MQTT."""
        return {
            "type": self.type,
            "device_id": identity.device_id,
            "boot_id": identity.boot_id,
            "seq": self.seq,
            "time": round(self.time, 6),
            "monotonic": round(self.monotonic, 6),
            "clock_synced": self.clock_synced,
            **self.fields(),
        }

    def journal_fields(self, identity: Identity) -> dict[str, Any]:
        """The identity as journal fields, for the log line of this event."""
        return {
            "DEVICE_ID": identity.device_id,
            "BOOT_ID": identity.boot_id,
            "SEQ": self.seq,
            "TIME": f"{self.time:.6f}",
            "MONOTONIC": f"{self.monotonic:.6f}",
            "CLOCK_SYNCED": int(self.clock_synced),
        }


class EventHub:
    """Gives each event its identity and hands it to the sinks, in sequence order.

    `submit` must not block (the sink dispatcher's is a non-blocking queue put): it is
    called under the hub's lock, so that the queue order is the sequence order even when
    events come from several threads at once.
    """

    def __init__(
        self,
        identity: Identity,
        sequence: SequenceNumbers,
        clock: ClockSync,
        submit: Callable[[EventRecord], None],
    ) -> None:
        self.identity = identity
        self._sequence = sequence
        self._clock = clock
        self._submit = submit
        self._lock = threading.Lock()  # protects the seq -> submit order

    def record(
        self,
        event_type: str,
        body: HasFields | dict[str, Any],
        wall: float | None = None,
        monotonic: float | None = None,
    ) -> EventRecord:
        with self._lock:
            record = EventRecord(
                event_type,
                self._sequence.next(),
                time.time() if wall is None else wall,
                time.monotonic() if monotonic is None else monotonic,
                self._clock.synced(),
                body,
            )
            self._submit(record)
        return record


def local_hub(submit: Callable[[EventRecord], None]) -> EventHub:
    """A hub that numbers events in memory only (tests, `pi-daemon bench`): for a daemon
    whose events need not be ordered across restarts."""
    import socket

    from pi_daemon.identity import read_boot_id

    identity = Identity(socket.gethostname().lower() or "localhost", read_boot_id())
    return EventHub(identity, SequenceNumbers(None), ClockSync(), submit)


_hub: EventHub | None = None


def install(hub: EventHub | None) -> None:
    """Make `hub` the process's event hub (None: events are only logged)."""
    global _hub
    _hub = hub


def installed() -> EventHub | None:
    return _hub


def emit(
    logger: logging.Logger,
    level: int,
    event: Event,
    message: str,
    *args: Any,
    body: HasFields | None = None,
    **fields: Any,
) -> None:
    """Record an event and log `message % args` with its structured fields attached.

    The sinks get the fields in lower case plus `message`, unless `body` gives the
    event's JSON fields itself (a label event's names differ from its journal fields).
    """
    hub = _hub
    if hub is None and not logger.isEnabledFor(level):
        return  # nothing records it and nothing logs it: build nothing
    extra = fields_for(event, **fields)
    if hub is not None:
        record_body: HasFields | dict[str, Any]
        if body is not None:
            record_body = body
        else:
            record_body = {
                name.lower(): value for name, value in extra.items() if name not in _NOT_IN_BODY
            }
            record_body["message"] = message % args if args else message
        record = hub.record(event.value, record_body)
        extra.update(record.journal_fields(hub.identity))
    if logger.isEnabledFor(level):
        # stacklevel=2: CODE_FILE/CODE_LINE/CODE_FUNC name emit()'s caller, not emit().
        logger.log(level, message, *args, extra=extra, stacklevel=2)


def log_event(
    logger: logging.Logger,
    level: int,
    event: Event,
    identity_fields: dict[str, Any],
    message: str,
    *args: Any,
    **fields: Any,
) -> None:
    """Log an event already recorded (a result, a summary) with its fields and identity."""
    if logger.isEnabledFor(level):
        extra = fields_for(event, **fields)
        extra.update(identity_fields)
        logger.log(level, message, *args, extra=extra, stacklevel=2)


# Journal-only fields: the type is the record's own, and MESSAGE_ID is journald's.
_NOT_IN_BODY = frozenset({"PI_DAEMON_EVENT", "MESSAGE_ID"})
