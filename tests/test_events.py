"""The event hub: identity on every event, sequence order in every sink, journal fields.

(The fields and message ids themselves: test_event_fields.py.)"""

from __future__ import annotations

import json
import logging
import threading

import pytest

from pi_daemon.events import FIELDS, Event, EventHub, EventRecord, emit, install
from pi_daemon.identity import ClockSync, Identity, SequenceNumbers


@pytest.fixture
def hub(tmp_path):
    received: list[EventRecord] = []
    flag = tmp_path / "synchronized"
    hub = EventHub(
        Identity("pi-test", "0123abcd"),
        SequenceNumbers(tmp_path / "seq", block=5),
        ClockSync(str(flag)),
        received.append,
    )
    hub.received = received  # type: ignore[attr-defined]
    install(hub)
    yield hub
    install(None)


def test_emit_records_the_event_with_identity_and_logs_its_fields(hub, caplog):
    log = logging.getLogger("pi_daemon.test")
    with caplog.at_level(logging.INFO, logger="pi_daemon.test"):
        emit(log, logging.WARNING, Event.THROTTLE, "to %s", "hot", throttle_state="hot")
    (record,) = hub.received
    data = record.to_dict(hub.identity)
    assert data["type"] == "throttle" and data["seq"] == 1
    assert data["device_id"] == "pi-test" and data["boot_id"] == "0123abcd"
    assert data["clock_synced"] is False and data["throttle_state"] == "hot"
    assert data["message"] == "to hot"
    assert "pi_daemon_event" not in data and "message_id" not in data
    json.dumps(data)  # JSON-ready
    (logged,) = caplog.records
    assert logged.SEQ == 1 and logged.DEVICE_ID == "pi-test" and logged.CLOCK_SYNCED == 0
    assert logged.PI_DAEMON_EVENT == "throttle" and logged.THROTTLE_STATE == "hot"
    for name in ("DEVICE_ID", "BOOT_ID", "SEQ", "TIME", "MONOTONIC", "CLOCK_SYNCED"):
        assert name in FIELDS


def test_events_below_the_log_level_still_reach_the_sinks(hub, caplog):
    log = logging.getLogger("pi_daemon.quiet")
    log.setLevel(logging.ERROR)
    try:
        emit(log, logging.INFO, Event.READY, "ready")
    finally:
        log.setLevel(logging.NOTSET)
    assert [r.type for r in hub.received] == ["ready"]


def test_sequence_order_is_submit_order_across_threads(hub):
    def many() -> None:
        for _ in range(300):
            hub.record("result", {"n": 1})

    threads = [threading.Thread(target=many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [record.seq for record in hub.received]
    assert seqs == list(range(1, 1201))


def test_without_a_hub_emit_only_logs(caplog):
    install(None)
    log = logging.getLogger("pi_daemon.test")
    with caplog.at_level(logging.INFO, logger="pi_daemon.test"):
        emit(log, logging.INFO, Event.STOP, "stopped", frames=3)
    assert caplog.records[0].FRAMES == 3 and not hasattr(caplog.records[0], "SEQ")
