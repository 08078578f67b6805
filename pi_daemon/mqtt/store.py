"""The outbox's file: an sqlite3 database in WAL mode, and what to do when a crash tore it.

Why sqlite (the standard library's sqlite3): it is the most widely deployed and tested
storage engine there is, its write-ahead log checksums every frame, and a transaction
either is in the file after a crash or is not: a kill -9 or a power cut leaves a torn tail
that sqlite itself skips. What it does not do is say so, so `open_store` compares what the
log holds with what sqlite accepted and warns once (`torn tail`). A file sqlite cannot read
at all (a truncated page, garbage) is moved aside and every row that still reads is kept,
so the outbox always opens.

One process owns an outbox at a time (an flock on `<file>.lock`): a second daemon on the same
state directory is refused instead of sending everything twice.

Durability: `synchronous=FULL` makes each COMMIT fsync the log, and the outbox commits once
per `outbox_fsync_interval_s` (never per event), so a batch is durable when `write()`
returns. Checkpoints (the log copied into the database file, about every 4 MB of log) run on
the same, flushing, thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
# https://www.sqlite.org/fileformat2.html#walformat: a 32-byte header, then frames of a
# 24-byte header and one page each; all numbers big-endian.
WAL_HEADER = struct.Struct(">IIIIIIII")
WAL_FRAME_HEADER = struct.Struct(">IIIIII")
WAL_MAGIC = (0x377F0682, 0x377F0683)
# After a checkpoint the log restarts; keep at most this much of the old file around.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
BUSY_TIMEOUT_S = 5.0

_SCHEMA = "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)"


class StoreError(Exception):
    """The outbox file cannot be created or opened at all (a permission, a full disk)."""


@dataclass(frozen=True)
class WalScan:
    """What a write-ahead log holds, read before sqlite opens it."""

    page_size: int = 0
    # Frames of the log's current generation (the header's salts), counted from the start;
    # frames left over from an earlier generation carry other salts and are ignored.
    frames: int = 0
    # Bytes after the last whole frame of the current generation, when they end the file:
    # a frame cut short (a write torn by a crash, or a truncated file).
    partial_bytes: int = 0

    @property
    def frame_size(self) -> int:
        return WAL_FRAME_HEADER.size + self.page_size


def scan_wal(path: Path) -> WalScan:
    """Count the log's frames by their headers; an absent or headerless log is empty."""
    try:
        with open(path, "rb") as wal:
            header = wal.read(WAL_HEADER.size)
            if len(header) < WAL_HEADER.size:
                return WalScan()
            magic, _version, page_size, _checkpoint, salt1, salt2, _c1, _c2 = WAL_HEADER.unpack(
                header
            )
            if magic not in WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
                return WalScan()
            size = os.fstat(wal.fileno()).st_size
            frame_size = WAL_FRAME_HEADER.size + page_size
            frames = 0
            offset = WAL_HEADER.size
            while offset + frame_size <= size:
                wal.seek(offset)
                fields = WAL_FRAME_HEADER.unpack(wal.read(WAL_FRAME_HEADER.size))
                if (fields[2], fields[3]) != (salt1, salt2):
                    return WalScan(page_size, frames, 0)
                frames += 1
                offset += frame_size
            return WalScan(page_size, frames, size - offset)
    except FileNotFoundError:
        return WalScan()


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; write() says BEGIN and COMMIT itself.
    # check_same_thread=False: the writer is opened by the constructor's thread and then
    # used by the flusher (and by close() once the flusher has stopped), one at a time.
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )


def _configure_writer(connection: sqlite3.Connection) -> None:
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"the filesystem does not support sqlite's WAL mode (got {mode!r})")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")


def _check(connection: sqlite3.Connection) -> str | None:
    """Why the open database cannot be used as our outbox, or None if it can."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return f"written by a newer pi-daemon (schema {version})"
    verdict = [row[0] for row in connection.execute("PRAGMA quick_check")]
    if verdict != ["ok"]:
        return f"damaged: {'; '.join(verdict[:3])}"
    return None


class OutboxStore:
    """One connection to the outbox database. Not thread-safe: one object per thread
    (`reader()` makes the second)."""

    def __init__(
        self, path: Path, connection: sqlite3.Connection, lock_fd: int | None = None
    ) -> None:
        self.path = path
        self._connection = connection
        self._lock_fd = lock_fd  # the writer's: this process owns the outbox

    def reader(self) -> OutboxStore:
        """A read-only connection for another thread (WAL readers never block the writer)."""
        connection = _connect(self.path)
        connection.execute("PRAGMA query_only=ON")
        return OutboxStore(self.path, connection)

    def stats(self) -> tuple[int, int, int]:
        """(events, payload bytes, highest seq or 0)."""
        count, size, top = self._connection.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(max(seq), 0) FROM events"
        ).fetchone()
        return int(count), int(size), int(top)

    def write(self, rows: Sequence[tuple[int, bytes]], deletes: Iterable[int]) -> None:
        """Insert `rows` and delete `deletes` in one transaction, durable on return."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("INSERT INTO events (seq, payload) VALUES (?, ?)", rows)
            connection.executemany("DELETE FROM events WHERE seq = ?", ((s,) for s in deletes))
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def sizes_after(self, after: int, limit: int) -> list[tuple[int, int]]:
        """(seq, payload bytes) of the oldest `limit` events with seq > after."""
        return self._connection.execute(
            "SELECT seq, length(payload) FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def read_after(self, after: int, below: int, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` events with after < seq < below, in seq order."""
        return self._connection.execute(
            "SELECT seq, payload FROM events WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
            (after, below, limit),
        ).fetchall()

    def checkpoint(self, truncate: bool = False) -> None:
        mode = "TRUNCATE" if truncate else "PASSIVE"
        self._connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def close(self) -> None:
        self._connection.close()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock


@dataclass(frozen=True)
class Opened:
    store: OutboxStore
    # One line each: what was wrong with the file and what was done about it.
    warnings: tuple[str, ...] = ()


def open_store(path: Path) -> Opened:
    """Open (or create) the outbox at `path`, repairing what a crash may have left.

    StoreError if the file cannot be had at all (the directory is not writable, ...).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise StoreError(f"{path} is not a regular file")
        lock_fd = _lock(path)
    except (OSError, sqlite3.Error) as error:
        raise StoreError(f"{path}: {_reason(error)}") from None
    try:
        connection, warnings = _open_locked(path)
    except BaseException:
        os.close(lock_fd)
        raise
    return Opened(OutboxStore(path, connection, lock_fd), tuple(warnings))


def _lock(path: Path) -> int:
    """An exclusive lock on `<path>.lock`, held while the outbox is open: one process per
    outbox (two would send every event twice, and read each other's live log as torn)."""
    lock_fd = os.open(_sidecar(path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise StoreError(
            f"{path} is in use by another process (another pi-daemon on this state directory?)"
        ) from None
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd


def _open_locked(path: Path) -> tuple[sqlite3.Connection, list[str]]:
    try:
        wal = scan_wal(_sidecar(path, "-wal"))
        connection = _connect(path)
    except (OSError, sqlite3.Error) as error:
        raise StoreError(f"{path}: {_reason(error)}") from None
    warnings: list[str] = []
    try:
        _configure_writer(connection)
        problem = _check(connection)
    except sqlite3.DatabaseError as error:
        problem = f"unreadable: {_reason(error)}"
    if problem is None:
        torn = _torn_tail(connection, wal)
        if torn:
            warnings.append(torn)
    else:
        connection.close()
        connection, note = _replace_damaged(path, problem)
        warnings.append(note)
    try:
        connection.execute(_SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as error:
        connection.close()
        raise StoreError(f"{path}: {_reason(error)}") from None
    return connection, warnings


def _torn_tail(connection: sqlite3.Connection, wal: WalScan) -> str | None:
    """A warning if the log held frames (or part of one) that sqlite did not accept."""
    if not wal.frames and not wal.partial_bytes:
        return None
    # PASSIVE never waits; its second column is how many frames the log holds as valid.
    _busy, valid, _done = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    skipped_frames = wal.frames - max(0, valid)
    if skipped_frames <= 0 and not wal.partial_bytes:
        return None
    skipped = max(0, skipped_frames) * wal.frame_size + wal.partial_bytes
    return (
        f"skipped a torn tail of {skipped} bytes at the end of the outbox's write-ahead log "
        "(a write cut short by a crash or power loss; the transactions before it are intact)"
    )


def _replace_damaged(path: Path, problem: str) -> tuple[sqlite3.Connection, str]:
    """Move a damaged outbox aside, start a new one, copy over every row that still reads."""
    damaged = path.with_name(path.name + ".damaged")
    for suffix in ("", "-wal", "-shm"):
        _sidecar(damaged, suffix).unlink(missing_ok=True)
    for suffix in ("-wal", ""):  # the database last, so a crash here leaves it in place
        source = _sidecar(path, suffix)
        if source.exists():
            source.replace(_sidecar(damaged, suffix))
    _sidecar(path, "-shm").unlink(missing_ok=True)
    connection = _connect(path)
    _configure_writer(connection)
    connection.execute(_SCHEMA)
    kept = _copy_readable_rows(damaged, connection)
    return connection, (
        f"the outbox file was {problem}; kept the {kept} events that still read, moved "
        f"the old file to {damaged.name}"
    )


def _copy_readable_rows(damaged: Path, target: sqlite3.Connection) -> int:
    """Rows in seq order until the first unreadable page; a file that is no database
    yields none."""
    kept = 0
    try:
        source = _connect(damaged)
    except sqlite3.Error:
        return 0
    try:
        cursor = source.execute("SELECT seq, payload FROM events ORDER BY seq")
        target.execute("BEGIN IMMEDIATE")
        while True:
            try:
                rows = cursor.fetchmany(500)
            except sqlite3.DatabaseError:
                break
            if not rows:
                break
            target.executemany("INSERT INTO events (seq, payload) VALUES (?, ?)", rows)
            kept += len(rows)
        target.execute("COMMIT")
    except sqlite3.DatabaseError:
        with contextlib.suppress(sqlite3.Error):
            target.execute("COMMIT" if kept else "ROLLBACK")
    finally:
        source.close()
    return kept


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
