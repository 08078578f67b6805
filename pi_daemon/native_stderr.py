"""What native libraries print straight onto file descriptor 2, caught and logged.

The TFLite runtime prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` from
C++ the first time a process allocates an interpreter. Python's logging never sees it, so
under systemd it was a journal line at every start and noise in front of `classify`'s
output. `CapturedStderr` points fd 2 at an anonymous in-memory file for the length of one
call, then sends the runtime's own lines (`INFO: ...`, `WARNING: ...`, `ERROR: ...`) to
logging at DEBUG and hands them to the caller (an error message may quote them). Anything
else that reached fd 2 meanwhile, such as a log line another thread wrote, is written back
to the real stderr afterwards: delayed by milliseconds, never lost. While fd 2 is borrowed,
faulthandler writes to the real stderr, so a crash dump still reaches the journal.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import sys
import threading
from types import TracebackType

# TFLite's minimal logger: "<SEVERITY>: message" (tensorflow/lite/minimal_logging*.cc).
RUNTIME_LINE = re.compile(r"^(VERBOSE|INFO|WARNING|ERROR): ")
# More than any runtime prints at one load; the rest is dropped rather than read into memory.
MAX_CAPTURED_BYTES = 1 << 20

# Only one caller may borrow fd 2 at a time (a reload on the loop thread, say, and a trial).
_borrow = threading.Lock()


def _reset_after_fork() -> None:
    # A forked child (pi_daemon/trial.py) has only the forking thread: a lock another
    # thread held at the fork would never be released there.
    global _borrow
    _borrow = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def anonymous_file(name: str) -> int:
    """A descriptor for a file that lives only in memory (memfd), or an unlinked temp file."""
    try:
        return os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile

        with tempfile.TemporaryFile() as handle:
            return os.dup(handle.fileno())


class CapturedStderr:
    """`with CapturedStderr(log, "interpreter") as lines:` ... `lines` then holds the
    runtime's lines, in order. Without memfd or a usable fd 2 it captures nothing."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.lines: list[str] = []
        self._saved: int | None = None
        self._sink: int | None = None
        self._crash_dumps = False

    def __enter__(self) -> list[str]:
        _borrow.acquire()
        try:
            _flush_python_stderr()
            self._saved = os.dup(2)
            self._sink = anonymous_file("pi-daemon-stderr")
            os.dup2(self._sink, 2)
        except (OSError, AttributeError):  # no fd 2, or no memfd: leave stderr alone
            self._close_fds()
            return self.lines
        except BaseException:
            self._close_fds()
            _borrow.release()
            raise
        self._crash_dumps = faulthandler.is_enabled()
        if self._crash_dumps:
            faulthandler.enable(file=self._saved, all_threads=True)
        return self.lines

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._saved is not None and self._sink is not None:
                _flush_python_stderr()
                os.dup2(self._saved, 2)
                if self._crash_dumps and sys.stderr is not None:
                    faulthandler.enable(file=sys.stderr, all_threads=True)
                self._route(os.pread(self._sink, MAX_CAPTURED_BYTES, 0))
        finally:
            self._close_fds()
            _borrow.release()

    def _route(self, data: bytes) -> None:
        passed_on: list[bytes] = []
        for raw in data.splitlines(keepends=True):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if RUNTIME_LINE.match(line):
                self.lines.append(line)
                self.logger.debug("%s said: %s", self.what, line)
            else:
                passed_on.append(raw)
        if passed_on:
            write_all(2, b"".join(passed_on))

    def _close_fds(self) -> None:
        for fd in (self._sink, self._saved):
            if fd is not None:
                os.close(fd)
        self._sink = self._saved = None


def _flush_python_stderr() -> None:
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a pipe or a terminal may take less at a time)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return  # stderr is gone: nowhere left to say anything
        view = view[written:]
