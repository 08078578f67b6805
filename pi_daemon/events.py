"""Structured log events: one MESSAGE_ID per event type, fields journald can filter.

Every state change or error the daemon reports goes through `emit()`, which puts
the fields on the `logging` record as `extra=`. The journald handler passes them
to the journal as fields (`journalctl -u pi-daemon PI_DAEMON_EVENT=throttle`);
the stderr formatter shows the message only. The README lists every field.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any


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


def emit(
    logger: logging.Logger, level: int, event: Event, message: str, *args: Any, **fields: Any
) -> None:
    """Log `message % args` with the event's structured fields attached."""
    if logger.isEnabledFor(level):
        # stacklevel=2: CODE_FILE/CODE_LINE/CODE_FUNC name emit()'s caller, not emit().
        logger.log(level, message, *args, extra=fields_for(event, **fields), stacklevel=2)
