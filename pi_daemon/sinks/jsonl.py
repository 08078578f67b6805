"""Append-only JSON Lines file of every event (results, summaries, state changes), rotated by size.

Each event is one complete line, encoded first and handed to the kernel in a single
`write()` on an O_APPEND descriptor, so a crash or SIGKILL loses nothing already written
and never leaves half a line that a reader could not parse. (It is not fsync'd per line:
that would wear SD cards.) The faults a long-running service meets are handled here:

* **Disk full** (or any write error): a write that fails, or writes only part of the
  record, is rolled back by truncating the file to where the record began, so the file
  never holds a partial record. One ERROR says that writing stopped, one WARNING says
  when it works again and how many records were lost; classification is never stopped.
* **Renamed or deleted under us** (logrotate's default `create` mode, an operator's `rm`):
  noticed before the next record, which goes to a new file at the configured path.
* **Rotation** by size in bytes (UTF-8 labels are longer in bytes than in characters):
  `events.jsonl` → `.1` → ... → `.N`; any of them may be missing. With no backups
  (`events_backup_count = 0`) the file is emptied in place and starts over.
* A FIFO, device or directory at the path is refused (pi_daemon/fileio.py) instead of
  blocking in `open()`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

from pi_daemon import fileio
from pi_daemon.errors import ConfigError
from pi_daemon.events import EventRecord
from pi_daemon.identity import Identity
from pi_daemon.sinks.base import Sink

log = logging.getLogger(__name__)

# Errors that may pass (a full disk, a quota, a flaky card, too many open files): at start
# they only pause writing. Any other error at start means the path is wrong (exit 78).
_TRANSIENT_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)
# How far back to look for the end of the last whole line in a file a crash left torn.
_TAIL_SCAN_BYTES = 1 << 16


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, path: Path, max_bytes: int, backup_count: int, identity: Identity) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.identity = identity  # device and boot, on every line
        self._fd = -1
        self._closed = False  # close() was called: later records are dropped, not reopened
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of what _fd is
        self._failing = False
        self.lost = 0  # records never written, over the sink's life
        self._lost_while_failing = 0
        try:
            self._open()
        except OSError as error:
            if error.errno not in _TRANSIENT_ERRORS:
                raise ConfigError(
                    f"output.events_file: {self.path}: cannot open for append: "
                    f"{fileio.describe(error)}"
                ) from None
            self._failed(error)

    # -- the file ------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = fileio.open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            info = os.fstat(fd)
            _drop_torn_tail(fd, info.st_size)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._file_id = fd, (info.st_dev, info.st_ino)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _moved(self) -> bool:
        """True when the path no longer names the file we have open (renamed, deleted)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell (EACCES on a parent...): keep the file we have
        return (info.st_dev, info.st_ino) != self._file_id

    def _ready(self) -> bool:
        """An open descriptor for the configured path, reopening if needed."""
        if self._closed:
            return False
        if self._fd >= 0 and self._moved():
            log.info("events file %s was moved or deleted; starting a new one", self.path)
            self._close_fd()
        if self._fd < 0:
            try:
                self._open()
            except OSError as error:
                self._failed(error)
                return False
        return True

    def _rotate(self) -> None:
        if self.backup_count == 0:
            os.ftruncate(self._fd, 0)  # keep none: start over, in place
            return
        self._close_fd()
        for index in range(self.backup_count, 0, -1):
            # events.jsonl.{index-1} (or events.jsonl itself) -> events.jsonl.{index}
            source = self.path.with_name(f"{self.path.name}.{index - 1}")
            if index == 1:
                source = self.path
            try:
                source.replace(self.path.with_name(f"{self.path.name}.{index}"))
            except FileNotFoundError:
                continue  # a backup (or the file itself) was removed meanwhile: fine
        self._open()

    # -- writing -------------------------------------------------------------------------

    def _write(self, record: dict[str, object]) -> None:
        data = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        if not self._ready():
            self._lose()
            return
        start: int | None = None
        try:
            end = os.lseek(self._fd, 0, os.SEEK_END)
            if end and end + len(data) > self.max_bytes:
                self._rotate()
                end = 0
            start = end
            _write_all(self._fd, data)
        except OSError as error:
            self._roll_back(start)
            self._failed(error)
            self._lose()
            return
        if self._failing:
            self._failing = False
            log.warning(
                "events file %s: writing again; %d records were lost while it could not be",
                self.path,
                self._lost_while_failing,
            )
            self._lost_while_failing = 0

    def _lose(self) -> None:
        self.lost += 1
        self._lost_while_failing += 1

    def _roll_back(self, start: int | None) -> None:
        """Cut a torn record off the end (a short write on a full disk)."""
        if self._fd < 0 or start is None:
            return
        try:
            if os.fstat(self._fd).st_size > start:
                os.ftruncate(self._fd, start)
        except OSError:
            self._close_fd()  # reopened (and its tail checked) before the next record

    def _failed(self, error: OSError) -> None:
        if self._failing:
            return
        self._failing = True
        log.error(
            "events file %s: cannot write (%s); results are not recorded until it can, "
            "classification goes on",
            self.path,
            fileio.describe(error),
        )

    def on_event(self, record: EventRecord) -> None:
        self._write(record.to_dict(self.identity))

    def close(self) -> None:
        self._closed = True
        self._close_fd()


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte or raise: a short write (the disk filled up mid-record) is retried
    for the rest, which then fails with the real reason (ENOSPC) for the caller to roll back."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.EIO, "the file accepted no data")
        view = view[written:]


def _drop_torn_tail(fd: int, size: int) -> None:
    """Truncate after the last newline: a crash of an older writer (or a full disk that
    another program filled) may have left half a record that no reader can parse."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        begin = max(0, end - _TAIL_SCAN_BYTES)
        chunk = os.pread(fd, end - begin, begin)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, begin + newline + 1)
            return
        end = begin
    os.ftruncate(fd, 0)
