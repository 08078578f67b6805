"""sd_notify(3) spoken directly over `$NOTIFY_SOCKET`: readiness, watchdog, status, reload.

The protocol is one AF_UNIX datagram of `KEY=VALUE` lines, so it is written here in a few
lines rather than pulling in a library: systemd-python's `daemon.notify()` needs a C build
(or apt's python3-systemd), which the daemon should not require just to start, and the
pure-Python `sdnotify` package (last release 2017) only sends strings: it reads neither
WATCHDOG_USEC nor WATCHDOG_PID, which is the part worth getting right.

Without `NOTIFY_SOCKET` (a shell, a test, another init) every method does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from pi_daemon.environment import decimal, shown

log = logging.getLogger(__name__)

# STATUS is shown by `systemctl status` on one line; keep it readable there.
MAX_STATUS_CHARS = 200


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, the clock systemd compares MONOTONIC_USEC against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(value: str) -> bytes | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None if unusable.

    '@name' is a Linux abstract-namespace socket: a leading NUL byte instead of '@'. The
    address is the variable's own bytes (os.fsencode undoes the surrogates os.environ uses
    for bytes that are not UTF-8), so any name the kernel accepts works.
    """
    raw = os.fsencode(value)
    if raw.startswith(b"@"):
        return b"\0" + raw[1:]
    if raw.startswith(b"/"):
        return raw
    return None  # e.g. systemd ≥ 254's "vsock:..." addresses: not for a Pi service


def watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout systemd asked for, or None when there is none for this process.

    WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
    environment must not ping on its parent's behalf (sd_watchdog_enabled(3)).
    """
    usec = decimal(env.get("WATCHDOG_USEC"))
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and decimal(pid) != os.getpid():
        return None
    return usec / 1e6


class SystemdNotifier:
    """Implements the daemon's Notifier protocol on top of sd_notify.

    Sends never raise: a failure is logged once (the service manager may be gone during
    shutdown, and a logging loop about it would be worse than silence).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%s is not a supported address; not notifying", shown(raw))
        self.watchdog_s = watchdog_interval_s(env) if self.address is not None else None
        usec = env.get("WATCHDOG_USEC", "")
        if self.address is not None and usec and decimal(usec) is None:
            log.warning(
                "WATCHDOG_USEC=%s is not a number of microseconds; sending no watchdog pings",
                shown(usec),
            )
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is survivable.
        self.ping_every_s = self.watchdog_s / 2 if self.watchdog_s else None
        self._last_ping: float | None = None
        self._failed = False
        self._stopping = False
        # Protects _sock and _failed. The loop thread sends today; a send from any other
        # thread (a future status reporter) must not race the socket's creation.
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one notification; True if it went out (False also when disabled)."""
        if self.address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        payload = text.encode("utf-8", "backslashreplace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, self.address)
                return True
            except OSError as error:
                if not self._failed:
                    self._failed = True
                    log.warning(
                        "sd_notify to %s failed: %s (further failures not logged)",
                        shown(os.fsdecode(self.address)),
                        error,
                    )
                return False

    # -- the Notifier protocol ------------------------------------------------

    def ready(self, status: str) -> None:
        """Startup (or a reload) is complete: the daemon has classified a frame."""
        self.send(READY=1, STATUS=_one_line(status))

    def progress(self, now: float) -> None:
        """Work moved forward at monotonic time `now`: ping the watchdog if one is due."""
        if self.ping_every_s is None:
            return
        if self._last_ping is not None and now - self._last_ping < self.ping_every_s:
            return
        self._last_ping = now
        self.send(WATCHDOG=1)

    def status(self, text: str) -> None:
        if not self._stopping:  # the final summary must not paint over "stopping"
            self.send(STATUS=_one_line(text))

    def stopping(self) -> None:
        self._stopping = True
        self.send(STOPPING=1, STATUS="stopping")

    def reloading(self) -> None:
        """A reload starts; `ready()` must follow when it is over, whatever its outcome."""
        self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS="reloading")

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_STATUS_CHARS else line[: MAX_STATUS_CHARS - 1] + "…"
