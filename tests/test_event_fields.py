"""Structured log events: the fields a record carries, and that emit() names its caller."""

from __future__ import annotations

import logging
import re

import pytest

from pi_daemon.events import FIELDS, MESSAGE_IDS, Event, emit, fields_for


def test_every_event_has_a_stable_unique_message_id() -> None:
    assert set(MESSAGE_IDS) == set(Event)
    assert all(re.fullmatch(r"[0-9a-f]{32}", mid) for mid in MESSAGE_IDS.values())
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    # Published ids never change (journalctl MESSAGE_ID=... queries depend on them).
    assert MESSAGE_IDS[Event.THROTTLE] == "3723465b72ba4f17afa12dc886261232"
    assert MESSAGE_IDS[Event.READY] == "b4c53f253d244be49c9d7ec216860bd7"


def test_journal_field_names_are_valid() -> None:
    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9_]*", name) for name in FIELDS)
    assert len(set(FIELDS)) == len(FIELDS)


def test_fields_for_uppercases_names_and_leaves_out_none() -> None:
    extra = fields_for(Event.THROTTLE, throttle_state="hot", cpu_temp_c=None, min_interval_ms=0)
    assert extra == {
        "PI_DAEMON_EVENT": "throttle",
        "MESSAGE_ID": MESSAGE_IDS[Event.THROTTLE],
        "THROTTLE_STATE": "hot",
        "MIN_INTERVAL_MS": 0,  # zero is a value, only None means absent
    }


def test_an_undocumented_field_is_refused() -> None:
    with pytest.raises(ValueError, match="undocumented journal field COLOUR"):
        fields_for(Event.RESULT, colour="red")


def test_emit_logs_the_message_with_its_fields_and_its_callers_location(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("pi_daemon.test_events")
    with caplog.at_level(logging.INFO, logger=logger.name):
        emit(
            logger, logging.WARNING, Event.SOURCE_FAULT, "%s failed %d times", "cam", 3, failures=3
        )
        emit(logger, logging.DEBUG, Event.RESULT, "not at this level", frame_id=1)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.getMessage() == "cam failed 3 times"
    assert (record.PI_DAEMON_EVENT, record.FAILURES) == ("source_fault", 3)
    assert MESSAGE_IDS[Event.SOURCE_FAULT] == record.MESSAGE_ID
    # CODE_FUNC/CODE_LINE in the journal name the caller, not emit() itself.
    assert record.funcName == "test_emit_logs_the_message_with_its_fields_and_its_callers_location"
    assert record.pathname == __file__


def test_emit_builds_no_fields_when_the_level_is_off() -> None:
    logger = logging.getLogger("pi_daemon.test_events.quiet")
    logger.setLevel(logging.ERROR)
    try:
        # An undocumented field would raise if the fields were built: they are not.
        emit(logger, logging.INFO, Event.RESULT, "dropped", colour="red")
    finally:
        logger.setLevel(logging.NOTSET)
