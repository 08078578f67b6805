"""Who made an event and in what order: device id, boot id, sequence numbers, clock state.

Every event the daemon reports (JSONL, MQTT, journal) carries these, so a consumer that
collects events from a fleet can tell devices apart, order a device's events, notice a
lost one, and know whether the timestamp can be trusted:

* `device_id`: the configured `mqtt.device_id`, else the host name, lower-cased; with the
  systemd instance name (`pi-daemon@cam1`) appended when there is one;
* `boot_id`: the kernel's random id of this boot;
* `seq`: rises by exactly 1 per event and never repeats on this device, across restarts,
  crashes and reboots (`SequenceNumbers`);
* `clock_synced`: whether the wall clock was synchronised when the event was made. A Pi has
  no real-time clock: until NTP answers, its clock starts where it was last saved.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pi_daemon import fileio
from pi_daemon.errors import ConfigError

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# systemd's template units pass the instance name in (pi-daemon@.service sets it).
INSTANCE_ENV = "PI_DAEMON_INSTANCE"


@dataclass(frozen=True)
class Identity:
    device_id: str
    boot_id: str


def device_id_for(
    configured: str = "", hostname: str | None = None, instance: str | None = None
) -> str:
    """`mqtt.device_id` if set, else the host name in lower case (issue 12 pins this),
    with `-<instance>` for a template unit's instance (pi-daemon@cam1 → "pi4-cam1").
    ConfigError when the result is not a valid MQTT topic level."""
    from pi_daemon.config import topic_level_problem

    if instance is None:
        instance = os.environ.get(INSTANCE_ENV, "")
    if configured:
        device_id, source = configured, "mqtt.device_id"
    else:
        device_id = (hostname if hostname is not None else socket.gethostname()).lower()
        source = "mqtt.device_id (from the hostname)"
    if instance:
        device_id = f"{device_id}-{instance.lower()}"
        source += f" and the instance {instance!r}"
    problem = topic_level_problem(device_id)
    if problem:
        raise ConfigError(f"{source}: {device_id!r} {problem}")
    return device_id


def read_boot_id(path: str | Path = BOOT_ID_PATH) -> str:
    """The boot id without dashes (journald's form), or "unknown" off Linux."""
    try:
        text = fileio.read_text(path, 4096).strip()
    except OSError:
        return "unknown"
    return text.replace("-", "") or "unknown"


class SequenceNumbers:
    """Event sequence numbers that are never reused, persisted under the state directory.

    The file holds the first number no run has handed out yet. Numbers are reserved in
    blocks: before handing out the first number of a block, the file is rewritten (via a
    temporary file, fsync and rename) to the end of that block, so a crash or power cut
    can only skip the rest of a block (a gap), never repeat a number. `close()` writes
    back the exact next number, so a clean restart continues without a gap. One file
    write per `block` events keeps SD-card wear negligible.
    """

    def __init__(self, path: Path | None, block: int = 4096) -> None:
        """`path` None: numbers from 1, kept in memory only (tests, the bench)."""
        if block < 1:
            raise ValueError("block must be >= 1")
        self.path = path
        self.block = block
        # _lock protects _next and _reserved_until: events come from several threads.
        self._lock = threading.Lock()
        self._next = self._load()
        self._reserved_until = self._next
        self._closed = False

    def _load(self) -> int:
        if self.path is None:
            return 1
        try:
            text = fileio.read_text(self.path, 64).strip()
        except fileio.FileProblem as error:
            if error.missing:
                return 1
            raise
        if not text.isascii() or not text.isdigit():
            # Never guess downwards: a damaged file must not lead to reused numbers.
            raise fileio.FileProblem(self.path, f"not a sequence number: {text[:20]!r}")
        return int(text)

    def _store(self, value: int) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        fd = fileio.open_regular(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def reserve_first_block(self) -> None:
        """Write the first reservation now, so an unwritable state directory shows at start."""
        with self._lock:
            self._reserve()

    def _reserve(self) -> None:
        self._store(self._next + self.block)
        self._reserved_until = self._next + self.block

    def next(self) -> int:
        with self._lock:
            if self._next >= self._reserved_until:
                try:
                    self._reserve()
                except OSError as error:
                    # Keep counting: the only risk is a repeat after a crash, and refusing
                    # events would lose them for certain. Say so once per failure.
                    log.error("cannot reserve event sequence numbers in %s: %s", self.path, error)
                    self._reserved_until = self._next + self.block
            value = self._next
            self._next += 1
            return value

    def close(self) -> None:
        """Persist the exact next number (a clean stop leaves no gap). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._store(self._next)
            except OSError as error:
                log.warning("cannot save the event sequence number: %s", error)


# -- is the wall clock synchronised? ------------------------------------------------------------

TIMESYNC_SYNCHRONIZED = "/run/systemd/timesync/synchronized"
_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
_RECHECK_S = 1.0


class _Timex(ctypes.Structure):
    # struct timex starts with `unsigned int modes`; the rest is read-only for a query.
    # Generously sized: the kernel writes about 208 bytes on 64-bit Linux.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 508)]


def kernel_clock_synced() -> bool | None:
    """adjtimex(2) with no changes: False when the kernel says TIME_ERROR, None if unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the process already has
        state = libc.adjtimex(ctypes.byref(_Timex()))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class ClockSync:
    """`synced()`: whether the wall clock is synchronised now, cheaply (checked ≤ 1/s).

    With a path (default systemd-timesyncd's flag file, which it creates on first sync)
    the file's existence decides; with "" the kernel's adjtimex state does (for chrony or
    ntpd). Once synchronised it stays so until reboot, so after that nothing is checked.
    """

    def __init__(self, flag_path: str = TIMESYNC_SYNCHRONIZED) -> None:
        self.flag_path = flag_path
        self._synced = False
        self._checked_at = -float("inf")

    def synced(self) -> bool:
        if self._synced:
            return True
        now = time.monotonic()
        if now - self._checked_at >= _RECHECK_S:
            self._checked_at = now
            if self.flag_path:
                self._synced = os.path.exists(self.flag_path)
            else:
                self._synced = bool(kernel_clock_synced())
        return self._synced
