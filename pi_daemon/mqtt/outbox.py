"""The outbox: every event bound for MQTT waits here until the broker has acknowledged it.

Three threads use it, each through its own methods:

* the sink thread `append()`s: an O(1) dict insert under a lock, never disk or network I/O;
* the network thread `claim()`s the next events in seq order, `ack()`s them when the broker
  has them, and `rewind()`s on every new connection, so whatever is still here is sent again,
  oldest first, with the bytes (and so the timestamps) it was first written with;
* the flusher thread, every `sync_interval_s`, writes in ONE transaction what arrived and is
  still unacknowledged, deletes what was acknowledged since, trims the oldest events while
  the outbox is over its capacity, and fsyncs (sqlite's COMMIT with synchronous=FULL).

An event acknowledged before its flush never touches the disk: with a healthy broker the SD
card sees almost nothing. Loss bound: a kill -9 or a power cut loses only the events that
were appended after the last completed flush began and not yet acknowledged, that is at most
`sync_interval_s` plus the duration of one flush (`synced_seq` in the status says exactly
which). Between flushes the bytes held may exceed the capacity by what one interval brings;
each flush trims back to it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pi_daemon.events import Event, emit
from pi_daemon.mqtt.status import DropReason
from pi_daemon.mqtt.store import open_store

log = logging.getLogger(__name__)

# A drop episode ends when the outbox has drained below this fraction of its capacity.
EPISODE_END_FILL = 0.5
# Rows per query when trimming or reading the backlog.
QUERY_ROWS = 512


@dataclass(frozen=True)
class OutboxCounts:
    depth: int
    bytes: int
    capacity: int
    dropped: dict[str, int]
    synced_seq: int


class Outbox:
    """A bounded, seq-ordered, durable queue of JSON payloads (see the module docstring)."""

    def __init__(self, path: Path, capacity: int, sync_interval_s: float) -> None:
        """Open (or create, or repair) the file; StoreError if it cannot be had at all."""
        opened = open_store(path)
        for warning in opened.warnings:
            emit(log, logging.WARNING, Event.MQTT, "mqtt outbox %s: %s", path, warning)
        self.path = path
        self.capacity = capacity
        self.sync_interval_s = sync_interval_s
        self._store = opened.store  # the flusher thread's connection
        self._reader = self._store.reader()  # the network thread's connection
        count, size, top = self._store.stats()
        # _lock guards every attribute below. It is held only for in-memory work, never for
        # disk or network I/O, so append() cannot wait on either.
        self._lock = threading.Lock()
        self._memory: dict[int, bytes] = {}  # appended, not yet committed (seq order)
        self._memory_bytes = 0
        self._flushing: set[int] = set()  # memory seqs that the running flush is writing
        self._doomed: set[int] = set()  # acked or dropped, maybe on disk: delete next flush
        self._count, self._bytes = count, size  # live events: not acked, not dropped
        self._committed_max = top  # highest seq ever committed to the file
        self._last_seq = top  # highest seq appended (seqs must rise)
        self._cursor = 0  # highest seq claimed on the current connection
        self._generation = 0  # +1 per completed flush (claim() retries across one)
        self._dropped: Counter[str] = Counter()
        self._full_episode = False
        self._episode_dropped = 0
        self._oversized_warned = False
        self._write_failing = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        if count:
            log.info("mqtt outbox %s: %d events (%d bytes) waiting from before", path, count, size)

    # -- the sink thread -----------------------------------------------------------------

    def append(self, seq: int, payload: bytes) -> None:
        """Queue one event. Never waits on the disk or the network."""
        size = len(payload)
        overflow = 0
        with self._lock:
            if seq <= self._last_seq:
                raise ValueError(f"seq {seq} is not above the last one queued ({self._last_seq})")
            self._last_seq = seq
            if size > self.capacity:
                self._dropped[DropReason.OVERSIZED] += 1
                warn, self._oversized_warned = not self._oversized_warned, True
            else:
                warn = False
                self._memory[seq] = payload
                self._memory_bytes += size
                self._count += 1
                self._bytes += size
                # The flusher trims to capacity, oldest first. This only bounds memory while
                # it cannot write (a failing disk, or one stuck for a whole capacity's worth
                # of events): then the oldest in memory go, the file being out of reach.
                limit = self.capacity if self._write_failing else 2 * self.capacity
                if self._memory_bytes > limit:
                    overflow = self._drop_from_memory(self._memory_bytes - self.capacity)
        if overflow:
            self._note_full(overflow)
        if warn:
            emit(
                log,
                logging.WARNING,
                Event.MQTT,
                "mqtt outbox: dropped event seq %d: %d bytes is more than the whole outbox "
                "(mqtt.outbox_max_bytes = %d); later ones are only counted",
                seq,
                size,
                self.capacity,
                outbox_dropped=1,
            )

    # -- the network thread ----------------------------------------------------------------

    def rewind(self) -> None:
        """A new connection: everything still here goes out again, oldest first."""
        with self._lock:
            self._cursor = 0

    def claim(self, limit: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The next events after the last claimed, in seq order: at most `limit` of them
        and `max_bytes` (but at least one, if there is one)."""
        while True:
            with self._lock:
                if self._closed:
                    return []
                cursor, generation = self._cursor, self._generation
                committed_max = self._committed_max
                memory: list[tuple[int, bytes]] = []
                for seq, payload in self._memory.items():
                    if seq > cursor:
                        memory.append((seq, payload))
                        if len(memory) >= limit:
                            break
            rows: list[tuple[int, bytes]] = []
            if committed_max > cursor:
                below = memory[0][0] if memory else committed_max + 1
                rows = self._reader.read_after(cursor, below, limit)
            with self._lock:
                if self._generation != generation:
                    continue  # a flush moved events from memory to the file meanwhile
                claimed: list[tuple[int, bytes]] = []
                size = 0
                for seq, payload in (*rows, *memory):
                    if len(claimed) >= limit or (claimed and size + len(payload) > max_bytes):
                        break
                    if seq <= self._cursor or not self._live(seq):
                        continue
                    claimed.append((seq, payload))
                    size += len(payload)
                    self._cursor = seq
                return claimed

    def _live(self, seq: int) -> bool:
        # With _lock held: not acknowledged and not dropped since it was read.
        if seq in self._memory:
            return True
        return seq <= self._committed_max and seq not in self._doomed

    def ack(self, seq: int, size: int) -> None:
        """The broker has event `seq`: it leaves the outbox."""
        with self._lock:
            self._remove(seq, size)
            if self._full_episode and self._bytes <= EPISODE_END_FILL * self.capacity:
                ended, self._full_episode = self._episode_dropped, False
            else:
                ended = None
        if ended is not None:
            emit(
                log,
                logging.INFO,
                Event.MQTT,
                "mqtt outbox below %d%% again: %d events were dropped while it was full",
                int(EPISODE_END_FILL * 100),
                ended,
                outbox_dropped=ended,
            )

    def _remove(self, seq: int, size: int) -> None:
        # With _lock held. Gone from memory at once; from the file at the next flush (an
        # event that never reached the file needs no delete).
        body = self._memory.pop(seq, None)
        if body is not None:
            self._memory_bytes -= len(body)
        if body is None or seq in self._flushing:
            self._doomed.add(seq)
        self._count -= 1
        self._bytes -= size

    # -- any thread --------------------------------------------------------------------------

    def counts(self) -> OutboxCounts:
        with self._lock:
            synced = next(iter(self._memory)) - 1 if self._memory else self._last_seq
            return OutboxCounts(
                self._count, self._bytes, self.capacity, dict(self._dropped), synced
            )

    # -- the flusher thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closing.wait(self.sync_interval_s):
            self.flush()

    def flush(self) -> None:
        """Trim to capacity, then write and delete in one synced transaction. Only ever
        called by one thread at a time (the flusher, or close() after it stopped)."""
        self._trim()
        with self._lock:
            batch = list(self._memory.items())
            deletes = list(self._doomed)
            self._flushing = {seq for seq, _ in batch}
        if not batch and not deletes:
            return
        try:
            self._store.write(batch, deletes)
        except Exception as error:  # sqlite3.Error, OSError: the disk is full or failing
            with self._lock:
                self._flushing = set()
            self._write_failed(error, len(batch))
            return
        with self._lock:
            for seq, _payload in batch:
                body = self._memory.pop(seq, None)  # None: acked meanwhile (and doomed)
                if body is not None:
                    self._memory_bytes -= len(body)
            self._flushing = set()
            self._doomed.difference_update(deletes)
            if batch:
                self._committed_max = max(self._committed_max, batch[-1][0])
            self._generation += 1
        if self._write_failing:
            self._write_failing = False
            emit(log, logging.INFO, Event.MQTT, "mqtt outbox %s: writing works again", self.path)

    def _write_failed(self, error: Exception, held: int) -> None:
        if self._write_failing:
            return
        self._write_failing = True
        emit(
            log,
            logging.ERROR,
            Event.MQTT,
            "mqtt outbox %s: cannot write (%s); %d events held in memory until it works "
            "(lost if the daemon stops first)",
            self.path,
            error,
            held,
            mqtt_reason=str(error),
        )

    def _trim(self) -> None:
        """Drop the oldest unclaimed events until the outbox is within its capacity."""
        with self._lock:
            excess = self._bytes - self.capacity
            after = self._cursor
            on_disk = self._committed_max > after
        dropped = 0
        while excess > 0 and on_disk:
            candidates = self._store.sizes_after(after, QUERY_ROWS)
            if not candidates:
                break
            with self._lock:
                for seq, size in candidates:
                    if excess <= 0:
                        break
                    if seq <= self._cursor or seq in self._doomed:
                        continue
                    self._remove(seq, size)
                    self._dropped[DropReason.FULL] += 1
                    excess -= size
                    dropped += 1
            after = candidates[-1][0]
        with self._lock:
            excess = self._bytes - self.capacity
            if excess > 0:
                dropped += self._drop_from_memory(excess)
        if dropped:
            self._note_full(dropped)

    def _drop_from_memory(self, excess: int) -> int:
        # With _lock held: the oldest unclaimed events not yet on disk.
        dropped = 0
        for seq, payload in list(self._memory.items()):
            if excess <= 0:
                break
            if seq <= self._cursor or seq in self._flushing:
                continue
            self._remove(seq, len(payload))
            excess -= len(payload)
            dropped += 1
        self._dropped[DropReason.FULL] += dropped
        return dropped

    def _note_full(self, dropped: int) -> None:
        with self._lock:
            started = not self._full_episode
            self._full_episode = True
            self._episode_dropped = (0 if started else self._episode_dropped) + dropped
        if started:
            emit(
                log,
                logging.WARNING,
                Event.MQTT,
                "mqtt outbox full (%d bytes): dropping the oldest events until the broker "
                "takes them again (each one counted, reason full)",
                self.capacity,
                outbox_dropped=dropped,
            )

    def close(self) -> None:
        """Stop the flusher, write what is left, fold the log into the file. Safe twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        try:
            self._store.checkpoint(truncate=True)
        except Exception as error:  # a busy reader or a failing disk: the log stays
            log.warning("mqtt outbox %s: final checkpoint failed: %s", self.path, error)
        self._reader.close()
        self._store.close()
