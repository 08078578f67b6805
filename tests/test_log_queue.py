"""The log queue between the loop and the log handler: it never blocks the caller, it
survives a wedged handler, and a journal that went away falls back to stderr."""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Iterator

import pytest

from pi_daemon import logsetup
from pi_daemon.logsetup import (
    _DroppingQueueHandler,
    make_journal_handler,
    setup_logging,
    shutdown_logging,
)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """setup_logging() takes over the root logger: give it back to pytest afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    shutdown_logging(timeout=0.5)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


class WedgedStream(io.StringIO):
    """A stderr whose write() blocks, like a pipe nobody reads or a stalled journald."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(30)
        return super().write(text)


def test_a_full_queue_drops_and_counts_rather_than_blocking() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(3)
    handler = _DroppingQueueHandler(records)
    logger = logging.Logger("pi_daemon.test_log_queue")
    logger.addHandler(handler)
    started = time.monotonic()
    for number in range(10):
        logger.warning("line %d", number)
    assert time.monotonic() - started < 0.5
    assert (records.qsize(), handler.dropped) == (3, 7)
    assert [records.get_nowait().getMessage() for _ in range(3)] == ["line 0", "line 1", "line 2"]


def test_stderr_lines_go_through_the_queue_and_drain_at_shutdown(root_logger) -> None:
    stream = io.StringIO()
    assert setup_logging("info", target="stderr", stderr=stream) == "stderr"
    assert logsetup.logging_target() == "stderr"
    logging.getLogger("pi_daemon.x").info("ready: %s", "class_0")
    logging.getLogger("pi_daemon.x").debug("not at info level")
    shutdown_logging()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.rstrip().endswith("INFO    ready: class_0")
    # After shutdown, late lines still come out (synchronously, through the same handler).
    logging.getLogger("pi_daemon.x").warning("late")
    assert stream.getvalue().rstrip().endswith("WARNING late")
    shutdown_logging()  # twice is harmless


def test_a_wedged_handler_blocks_neither_the_loop_nor_the_exit(root_logger) -> None:
    stream = WedgedStream()
    setup_logging("info", target="stderr", stderr=stream)
    log = logging.getLogger("pi_daemon.x")
    log.warning("first")  # the handler thread takes it and wedges in write()
    assert stream.entered.wait(5)
    started = time.monotonic()
    for number in range(logsetup.QUEUE_CAPACITY + 50):
        log.info("frame %d", number)  # fills the queue, then drops: never waits
    assert time.monotonic() - started < 5.0
    shutdown_logging(timeout=0.5)
    assert time.monotonic() - started < 5.0, "shutdown waited for the wedged handler"
    # Logging after the shutdown (atexit, the CLI's last words) must not block either.
    log.error("exiting with code 70")
    assert time.monotonic() - started < 5.0
    assert root_logger.handlers and all(
        isinstance(h, logging.NullHandler) for h in root_logger.handlers
    )
    stream.release.set()


def test_journal_send_failure_falls_back_to_stderr_and_says_so_once() -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python (the journald extra)")

    def journald_gone(message: str, **fields: object) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    fallback = io.StringIO()
    handler = make_journal_handler(sender=journald_gone, fallback=fallback)
    assert handler is not None
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger("pi_daemon.test_log_queue")
    logger.addHandler(handler)
    logger.error("source %s failed", "picamera2")
    logger.warning("still here")
    assert fallback.getvalue().splitlines() == [
        "pi-daemon: journal send failed: [Errno 111] Connection refused",
        "ERROR source picamera2 failed",
        "WARNING still here",
    ]


def test_records_dropped_while_full_are_counted_at_shutdown(root_logger) -> None:
    stream = WedgedStream()
    setup_logging("info", target="stderr", stderr=stream)
    log = logging.getLogger("pi_daemon.x")
    log.warning("first")
    assert stream.entered.wait(5)
    for number in range(logsetup.QUEUE_CAPACITY + 25):  # one is in the handler already
        log.info("frame %d", number)
    stream.release.set()  # the handler recovers: everything queued is delivered
    shutdown_logging(timeout=30)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 + logsetup.QUEUE_CAPACITY + 1
    assert lines[-2].endswith(f"frame {logsetup.QUEUE_CAPACITY - 1}")
    assert lines[-1].endswith("25 log records were dropped while the log queue was full")
