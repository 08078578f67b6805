"""Run the real daemon (`pi_daemon.cli.main`) with an interpreter whose invoke() wedges in C.

Test-only, at the hardware edge: the interpreter's `invoke()` is where the native code
runs (XNNPACK, ruy), with the GIL released. After `PI_DAEMON_TEST_WEDGE_AFTER` invokes
(default 20), the next one locks an already-locked pthread mutex through ctypes: a real
C-level deadlock. Nothing can release it: not the stop event, not a signal (the futex
wait resumes after the C signal handler returns, and the Python-level handler would only
run on this thread once the call returned, which it never does).

Usage: python tests/wedged_invoke.py run --config PATH
"""

from __future__ import annotations

import ctypes
import os
import sys

from pi_daemon.backends import load_interpreter as real_load_interpreter

WEDGE_AFTER = int(os.environ.get("PI_DAEMON_TEST_WEDGE_AFTER", "20"))
WEDGE_MESSAGE = "wedged_invoke: invoke() is now stuck in pthread_mutex_lock"

_libc = ctypes.CDLL(None)  # foreign calls release the GIL, as invoke() does
_mutex = ctypes.create_string_buffer(64)  # zeroed memory is PTHREAD_MUTEX_INITIALIZER (glibc)


def _wedge() -> None:
    print(WEDGE_MESSAGE, file=sys.stderr, flush=True)
    _libc.pthread_mutex_lock(_mutex)
    _libc.pthread_mutex_lock(_mutex)  # a default mutex locked twice: never returns


def _install() -> None:
    import pi_daemon.model

    def load_interpreter(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded = real_load_interpreter(*args, **kwargs)
        cls = type(loaded.interpreter)
        real_invoke, calls = cls.invoke, [0]

        def invoke(self):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] > WEDGE_AFTER:
                _wedge()
            return real_invoke(self)

        cls.invoke = invoke
        return loaded

    pi_daemon.model.load_interpreter = load_interpreter


if __name__ == "__main__":
    _install()
    from pi_daemon.cli import main

    sys.exit(main(sys.argv[1:]))
