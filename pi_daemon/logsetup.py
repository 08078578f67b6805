"""Log handler setup, in one place: journald under systemd, stderr otherwise.

Where logs go (`choose_target`), first match wins:

1. `PI_DAEMON_LOG_TARGET=journal|stderr` forces a target (for tests and odd setups); any
   other value is ignored with a warning.
2. `JOURNAL_STREAM` names the device:inode of our stderr: systemd connected stderr to the
   journal, so we are a service and talk to journald natively instead.
3. `INVOCATION_ID` is set (systemd sets it for every service process) and the journal socket
   exists: a service whose stderr was sent elsewhere (StandardError=null/file).
4. Otherwise stderr: a person at a shell wants to read the lines, even on a systemd host.

The journal handler is systemd-python's `JournalHandler`, imported lazily; without it, or
without a journald listening on its socket (libsystemd then drops every line and reports
success), we fall back to stderr with one warning. A line logged while the socket is gone
later is written to stderr too. Every handler runs on a `QueueListener` thread, so a slow
SD card or a stalled journald never blocks the inference loop (and with it the watchdog).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any, TextIO

from pi_daemon.environment import decimal, shown
from pi_daemon.events import FIELDS

STDERR_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
TARGET_ENV = "PI_DAEMON_LOG_TARGET"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "pi-daemon"
# Records waiting for the handler thread. Normal volume is a few lines a minute; the bound
# only matters if journald stalls, and then dropping beats growing without limit on a Pi.
QUEUE_CAPACITY = 10_000

# Journal fields sent besides our documented FIELDS (everything else on a LogRecord is
# Python plumbing: msg, args, created, taskName, ... and would only clutter the journal).
_FIELD_NAMES = frozenset(FIELDS)


def forced_target(env: Mapping[str, str]) -> tuple[str | None, str]:
    """(target forced by PI_DAEMON_LOG_TARGET or None, a warning if its value is odd)."""
    raw = env.get(TARGET_ENV, "")
    forced = raw.strip().lower()
    if forced in ("journal", "stderr"):
        return forced, ""
    if forced:
        return None, f"{TARGET_ENV}={shown(raw)} is neither journal nor stderr; ignored"
    return None, ""


def journal_available(journal_socket: Path = JOURNAL_SOCKET) -> str:
    """'' when journald listens on its socket, else why not.

    Checked because libsystemd reports success when the socket is missing ("fail silently
    if the journal is not available", journal-send.c): every line would vanish.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(os.fsencode(journal_socket))
    except OSError as error:
        return f"{journal_socket}: {error.strerror or error}"
    finally:
        probe.close()
    return ""


def choose_target(
    env: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> str:
    """'journal' or 'stderr', by the rules in the module docstring."""
    env = os.environ if env is None else env
    forced, _ = forced_target(env)
    if forced is not None:
        return forced
    if _stderr_is_journal_stream(env.get("JOURNAL_STREAM", ""), stderr or sys.stderr):
        return "journal"
    if env.get("INVOCATION_ID") and journal_socket.exists():
        return "journal"
    return "stderr"


def _stderr_is_journal_stream(value: str, stderr: TextIO) -> bool:
    # A child that inherited JOURNAL_STREAM but has stderr redirected must not count
    # (systemd.exec(5) says to compare device and inode).
    text_device, _, text_inode = value.partition(":")
    device, inode = decimal(text_device), decimal(text_inode)
    if device is None or inode is None:
        return False
    try:
        stat = os.fstat(stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


class _DroppingQueueHandler(QueueHandler):
    """Never blocks the caller: when the queue is full the record is dropped and counted."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Listener(QueueListener):
    def stop_within(self, timeout: float) -> bool:
        """Like stop(), but gives up after `timeout` s if a handler is wedged."""
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.enqueue_sentinel()  # put_nowait: the queue may be full of records
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None
        return not thread.is_alive()


def make_journal_handler(
    sender: Callable[..., Any] | None = None,
    fallback: TextIO | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> logging.Handler | None:
    """A JournalHandler that sends only our documented fields; None without systemd-python."""
    try:
        journal: Any = importlib.import_module("systemd.journal")  # no type information
    except ImportError:
        return None

    class FieldJournalHandler(journal.JournalHandler):
        """JournalHandler.emit() sends every LogRecord attribute (record.__dict__) as a field;
        this one sends MESSAGE, the standard code/thread fields and our FIELDS only."""

        def __init__(self) -> None:
            kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
            if sender is not None:
                kwargs["sender_function"] = sender
            super().__init__(**kwargs)
            self._fallback = fallback or sys.stderr
            self._failed = False

        def emit(self, record: logging.LogRecord) -> None:
            message = self.format(record)
            fields = {k: v for k, v in record.__dict__.items() if k in _FIELD_NAMES}
            if sender is None and not journal_socket.exists():
                # libsystemd drops the line and reports success when journald is gone.
                self._fall_back(record, message, f"{journal_socket} is gone")
                return
            try:
                self.send(
                    message,
                    PRIORITY=str(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **self._extra,
                    **fields,
                )
            except (OSError, UnicodeError) as error:
                # journald gone (shutdown, restart): keep the line, say why once.
                self._fall_back(record, message, str(error))

        def _fall_back(self, record: logging.LogRecord, message: str, why: str) -> None:
            try:
                if not self._failed:
                    self._failed = True
                    self._fallback.write(f"pi-daemon: journal send failed: {why}\n")
                self._fallback.write(f"{record.levelname} {message}\n")
                self._fallback.flush()
            except (OSError, ValueError):
                pass  # stderr is gone too: nowhere left to write

    return FieldJournalHandler()


class _Stream:
    """What setup_logging installed, so shutdown_logging can undo it."""

    listener: _Listener | None = None
    queue_handler: _DroppingQueueHandler | None = None
    handlers: list[logging.Handler] = []  # noqa: RUF012 - replaced, never mutated
    target: str = "stderr"


def setup_logging(
    level: str = "info",
    target: str | None = None,
    stderr: TextIO | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> str:
    """Route all loggers to the journal or stderr through a queue; return the target used."""
    shutdown_logging()
    stream = stderr or sys.stderr
    _, odd_value = forced_target(os.environ)
    warnings = [odd_value] if odd_value and target is None else []
    chosen = target or choose_target(stderr=stream, journal_socket=journal_socket)
    handler: logging.Handler | None = None
    if chosen == "journal":
        handler = make_journal_handler(None, stream, journal_socket)
        missing = journal_available(journal_socket) if handler is not None else ""
        if handler is None:
            chosen = "stderr"
            warnings.append(
                "systemd-python is not installed: logging to stderr without journal fields "
                "(pip install 'pi-daemon[journald]', or apt install python3-systemd)"
            )
        elif missing:
            chosen, handler = "stderr", None
            warnings.append(f"journald is not running here ({missing}): logging to stderr")
        else:
            handler.setFormatter(logging.Formatter("%(message)s"))
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT, "%Y-%m-%d %H:%M:%S"))

    records: queue.Queue[Any] = queue.Queue(QUEUE_CAPACITY)
    queue_handler = _DroppingQueueHandler(records)
    listener = _Listener(records, handler, respect_handler_level=True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(queue_handler)
    root.setLevel(level.upper())
    listener.start()
    _Stream.listener, _Stream.queue_handler = listener, queue_handler
    _Stream.handlers, _Stream.target = [handler], chosen
    for warning in warnings:
        logging.getLogger(__name__).warning("%s", warning)
    return chosen


def logging_target() -> str:
    """Where setup_logging sent the logs ('journal' or 'stderr')."""
    return _Stream.target


def shutdown_logging(timeout: float = 2.0) -> None:
    """Deliver queued records, stop the handler thread, and log synchronously from then on.

    Safe to call twice; also runs at exit. A wedged handler is abandoned after `timeout`
    so exit stays well inside systemd's TimeoutStopSec.
    """
    listener, queue_handler = _Stream.listener, _Stream.queue_handler
    if listener is None or queue_handler is None:
        return
    _Stream.listener = _Stream.queue_handler = None
    root = logging.getLogger()
    root.removeHandler(queue_handler)
    drained = listener.stop_within(timeout)
    dropped = queue_handler.dropped
    if not drained:
        # The abandoned thread is stuck inside the handler, holding its lock: logging
        # through it now would block this thread too (and the exit with it). Late records
        # go nowhere (a NullHandler keeps logging's lastResort off a stderr that may be
        # the wedged stream), and the reason goes out on a thread that may block instead.
        root.addHandler(logging.NullHandler())
        _write_without_waiting(
            f"pi-daemon: log handler did not drain within {timeout:.1f} s; some lines "
            f"are lost ({dropped} dropped while the log queue was full)\n"
        )
        return
    for handler in _Stream.handlers:
        # Late messages (atexit, the CLI's last words) still get out, just synchronously.
        root.addHandler(handler)
    if dropped:
        logging.getLogger(__name__).warning(
            "%d log records were dropped while the log queue was full", dropped
        )


def _write_without_waiting(text: str) -> None:
    def write() -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    threading.Thread(target=write, name="log-notice", daemon=True).start()


atexit.register(shutdown_logging)
