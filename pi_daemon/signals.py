"""Signals heard on their own thread, so a stop works even while the main thread is stuck.

A Python signal handler runs on the main thread, between bytecodes. While the main
thread is inside a C call that never returns (a wedged interpreter `invoke()`, a
camera ioctl, a deadlocked native lock), the handler never runs: SIGTERM does
nothing until systemd gives up and SIGKILLs the process at TimeoutStopSec, and the
queued results, the final log lines and the reason are lost with it.

So the C-level handler only writes the signal number to a pipe (`signal.set_wakeup_fd`)
and a small thread reads it and acts: SIGTERM/SIGINT set the stop event, SIGHUP sets
the reload request. After a stop, if the loop has not let go within `grace_s`, the
thread declares it wedged: it dumps every thread's stack (where it is stuck), runs the
emergency shutdown it was given (drain the sinks, flush the logs) and ends the process
with EX_SOFTWARE, well inside TimeoutStopSec.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from pi_daemon.errors import EX_SOFTWARE
from pi_daemon.events import Event, emit

log = logging.getLogger(__name__)

# A healthy loop notices a stop within pause_poll_s (1 s) plus one frame. A cold model
# load may take longer, so allow several seconds. The emergency shutdown needs at most
# the sinks' drain (5 s) and the log flush (1 s): 10 + 6 s fits the unit's 20 s.
STOP_GRACE_S = 10.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_QUIT = 0  # written by close(); never a signal number


def _ignore(_signum: int, _frame: object) -> None:
    """The Python-level handler: the work happens on the relay thread."""


class SignalRelay:
    """Turns SIGTERM/SIGINT into `stop` and SIGHUP into `reload_requested`, off the main
    thread. Install from the main thread; `close()` restores the default handlers."""

    def __init__(self, stop: threading.Event, grace_s: float = STOP_GRACE_S) -> None:
        self.stop = stop
        self.grace_s = grace_s
        # Set by the app once the daemon exists; None: a SIGHUP is ignored with a warning.
        self.reload_requested: threading.Event | None = None
        # Both set once by watch(), read by the relay thread.
        self._loop_left: threading.Event | None = None
        self._emergency: Callable[[], None] | None = None
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in (*_STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, _ignore)
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)
        self._thread.start()

    def watch(self, loop_left: threading.Event, emergency: Callable[[], None]) -> None:
        """`loop_left` is set when the main loop stops; `emergency` shuts down without it."""
        self._emergency = emergency
        self._loop_left = loop_left

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            for signum in data:
                if signum == _QUIT:
                    return
                if signum in _STOP_SIGNALS:
                    self._stop(signum)
                elif signum == signal.SIGHUP:
                    self._reload()

    def _stop(self, signum: int) -> None:
        if self.stop.is_set():
            log.info("%s received: already stopping", signal.Signals(signum).name)
            return
        log.info("%s received: stopping", signal.Signals(signum).name)
        self.stop.set()
        threading.Thread(target=self._await_loop, name="stop-guard", daemon=True).start()

    def _reload(self) -> None:
        if self.reload_requested is None:
            log.warning("SIGHUP received while starting: ignored (nothing to reload yet)")
            return
        log.info("SIGHUP received: reloading config and model")
        self.reload_requested.set()

    def _await_loop(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while (left := deadline - time.monotonic()) > 0:
            loop_left = self._loop_left  # watch() may come while the model still loads
            if loop_left is not None and loop_left.wait(min(left, 0.1)):
                return
            if loop_left is None:
                time.sleep(min(left, 0.1))
        emit(
            log,
            logging.ERROR,
            Event.ERROR,
            "stop requested %.0f s ago but the main thread is stuck (a wedged C call: "
            "interpreter, camera or a native lock; every thread's stack is on stderr); "
            "draining results and exiting with code %d without it",
            self.grace_s,
            EX_SOFTWARE,
            exit_code=EX_SOFTWARE,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            if self._emergency is not None:
                self._emergency()
        finally:
            os._exit(EX_SOFTWARE)

    def close(self) -> None:
        """Restore the default handlers and stop the relay thread; safe twice."""
        if self._write_fd < 0:
            return
        for signum in (*_STOP_SIGNALS, signal.SIGHUP):
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, default)
        signal.set_wakeup_fd(self._previous_fd)
        os.write(self._write_fd, bytes([_QUIT]))
        self._thread.join(1.0)
        os.close(self._write_fd)
        os.close(self._read_fd)
        self._write_fd = self._read_fd = -1
