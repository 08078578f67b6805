"""The outbox on real files: order, acknowledgement, the cap, crashes (kill -9), torn tails
and damaged files, and how little it writes. No broker here; tests/test_mqtt_delivery.py
has the broker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pi_daemon.mqtt.outbox import Outbox
from pi_daemon.mqtt.store import StoreError, open_store, scan_wal
from tests.conftest import REPO

MIB = 1024 * 1024


def payload(seq: int, size: int = 100) -> bytes:
    return json.dumps({"seq": seq}).ljust(size).encode()


def rows(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [seq for (seq,) in connection.execute("SELECT seq FROM events ORDER BY seq")]


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "mqtt-outbox.sqlite3"


def drain(outbox: Outbox, limit: int = 1000) -> list[int]:
    """Claim and acknowledge everything, like a healthy broker; the seqs in order."""
    seen = []
    while batch := outbox.claim(limit, 1 << 30):
        for seq, body in batch:
            outbox.ack(seq, len(body))
            seen.append(seq)
    return seen


def test_events_come_out_in_seq_order_from_memory_and_file(outbox_path):
    outbox = Outbox(outbox_path, MIB, 1.0)
    for seq in range(1, 6):
        outbox.append(seq, payload(seq))
    outbox.flush()  # 1-5 on disk
    for seq in range(6, 9):
        outbox.append(seq, payload(seq))  # 6-8 in memory
    assert [s for s, _ in outbox.claim(3, 1 << 20)] == [1, 2, 3]
    assert [s for s, _ in outbox.claim(100, 1 << 20)] == [4, 5, 6, 7, 8]
    assert outbox.claim(100, 1 << 20) == []
    # A new connection: nothing was acknowledged, so everything goes again, in order.
    outbox.rewind()
    assert drain(outbox) == list(range(1, 9))
    counts = outbox.counts()
    assert (counts.depth, counts.bytes, counts.synced_seq) == (0, 0, 8)
    outbox.close()
    assert rows(outbox_path) == []


def test_claim_respects_the_byte_budget_but_always_gives_one(outbox_path):
    outbox = Outbox(outbox_path, MIB, 1.0)
    for seq in range(1, 4):
        outbox.append(seq, payload(seq, 1000))
    assert [s for s, _ in outbox.claim(10, 2500)] == [1, 2]
    assert [s for s, _ in outbox.claim(10, 10)] == [3]  # larger than the budget: still one
    outbox.close()


def test_events_acknowledged_before_the_flush_never_reach_the_file(outbox_path):
    outbox = Outbox(outbox_path, MIB, 1.0)
    wal = outbox_path.with_name(outbox_path.name + "-wal")
    created = scan_wal(wal).frames  # the schema, at the first open
    for seq in range(1, 101):
        outbox.append(seq, payload(seq))
    drain(outbox)
    outbox.flush()
    assert scan_wal(wal).frames == created, "nothing more was written"
    outbox.close()


def test_acknowledged_events_are_deleted_from_the_file(outbox_path):
    outbox = Outbox(outbox_path, MIB, 1.0)
    for seq in range(1, 11):
        outbox.append(seq, payload(seq))
    outbox.flush()
    for seq, body in outbox.claim(4, 1 << 20):
        outbox.ack(seq, len(body))
    outbox.close()
    assert rows(outbox_path) == list(range(5, 11))
    reopened = Outbox(outbox_path, MIB, 1.0)
    assert reopened.counts().depth == 6
    assert drain(reopened) == list(range(5, 11))
    reopened.close()


def test_an_ack_during_a_flush_deletes_the_event_at_the_next(outbox_path, monkeypatch):
    outbox = Outbox(outbox_path, MIB, 1.0)
    for seq in range(1, 4):
        outbox.append(seq, payload(seq))
    claimed = outbox.claim(10, 1 << 20)
    write = outbox._store.write

    def write_while_acked(batch, deletes):
        for seq, body in claimed:  # the broker's PUBACKs arrive while the batch is written
            outbox.ack(seq, len(body))
        write(batch, deletes)

    monkeypatch.setattr(outbox._store, "write", write_while_acked)
    outbox.flush()
    monkeypatch.undo()
    assert rows(outbox_path) == [1, 2, 3]
    outbox.flush()
    assert rows(outbox_path) == []
    assert outbox.counts().depth == 0
    outbox.close()


def test_seq_must_rise(outbox_path):
    outbox = Outbox(outbox_path, MIB, 1.0)
    outbox.append(5, payload(5))
    with pytest.raises(ValueError, match="not above"):
        outbox.append(5, payload(5))
    outbox.close()
    reopened = Outbox(outbox_path, MIB, 1.0)  # the file remembers the highest
    with pytest.raises(ValueError, match="not above"):
        reopened.append(3, payload(3))
    reopened.close()


def test_the_cap_drops_the_oldest_and_counts_each_logged_once(outbox_path, caplog):
    capacity, size, total = 64 * 1024, 1000, 300
    outbox = Outbox(outbox_path, capacity, 1.0)
    caplog.set_level(logging.INFO, logger="pi_daemon.mqtt.outbox")
    for seq in range(1, total + 1):
        outbox.append(seq, payload(seq, size))
        if seq % 25 == 0:
            outbox.flush()  # the flusher's cadence: several flushes over the cap
    outbox.flush()
    kept = capacity // size
    counts = outbox.counts()
    assert counts.dropped["full"] == total - kept
    assert (counts.depth, counts.bytes) == (kept, kept * size)
    full = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in caplog.records]
    assert full[0].levelno == logging.WARNING and full[0].PI_DAEMON_EVENT == "mqtt"
    # The newest survive, in order; draining below half ends the episode (one INFO line).
    assert drain(outbox) == list(range(total - kept + 1, total + 1))
    ended = [r for r in caplog.records if "dropped while it was full" in r.getMessage()]
    assert len(ended) == 1 and f"{total - kept} events" in ended[0].getMessage()
    outbox.close()
    assert rows(outbox_path) == []


def test_the_cap_keeps_the_newest_with_the_flusher_running(outbox_path):
    # More than the whole capacity arrives between two flushes: still the oldest go.
    capacity, size, total = 64 * 1024, 1000, 400
    outbox = Outbox(outbox_path, capacity, 0.2)
    outbox.start()
    for seq in range(1, total + 1):
        outbox.append(seq, payload(seq, size))
        time.sleep(0.001)
    time.sleep(0.5)
    kept = capacity // size
    assert outbox.counts().dropped["full"] == total - kept
    assert drain(outbox) == list(range(total - kept + 1, total + 1))
    outbox.close()


def test_the_cap_never_drops_events_in_flight(outbox_path):
    capacity, size = 64 * 1024, 1000
    outbox = Outbox(outbox_path, capacity, 1.0)
    for seq in range(1, 61):
        outbox.append(seq, payload(seq, size))
    in_flight = [s for s, _ in outbox.claim(5, 1 << 20)]  # handed to the client
    for seq in range(61, 121):
        outbox.append(seq, payload(seq, size))
    outbox.flush()
    counts = outbox.counts()
    assert counts.bytes <= capacity
    assert counts.dropped["full"] == 120 - capacity // size
    outbox.rewind()
    survivors = drain(outbox)
    assert survivors[:5] == in_flight == [1, 2, 3, 4, 5]
    assert survivors[5:] == list(range(120 - len(survivors) + 6, 121))
    outbox.close()


def test_a_restart_with_a_smaller_cap_trims_at_the_first_flush(outbox_path):
    outbox = Outbox(outbox_path, MIB, 1.0)
    for seq in range(1, 201):
        outbox.append(seq, payload(seq, 1000))
    outbox.close()
    smaller = Outbox(outbox_path, 64 * 1024, 1.0)
    smaller.flush()
    assert smaller.counts().dropped["full"] == 200 - 65
    assert rows(outbox_path) == list(range(136, 201))
    smaller.close()


def test_an_event_larger_than_the_outbox_is_dropped_and_counted(outbox_path, caplog):
    outbox = Outbox(outbox_path, 64 * 1024, 1.0)
    outbox.append(1, payload(1))
    for seq in (2, 3):
        outbox.append(seq, b"x" * (65 * 1024))
    outbox.append(4, payload(4))
    assert outbox.counts().dropped == {"oversized": 2}
    assert drain(outbox) == [1, 4]
    assert sum("more than the whole outbox" in r.getMessage() for r in caplog.records) == 1
    outbox.close()


def test_memory_stays_bounded_while_the_disk_cannot_be_written(outbox_path, caplog):
    outbox = Outbox(outbox_path, 64 * 1024, 1.0)

    def broken(*_args):
        raise sqlite3.OperationalError("disk I/O error")

    outbox._store.write = broken  # the SD card fails: only this adapter edge is faked
    for seq in range(1, 1001):
        outbox.append(seq, payload(seq, 1000))
        if seq % 100 == 0:
            outbox.flush()
    counts = outbox.counts()
    assert counts.bytes <= 2 * 64 * 1024
    assert counts.dropped["full"] == 1000 - counts.depth
    errors = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert drain(outbox)[-1] == 1000


def test_three_threads_lose_and_duplicate_nothing(outbox_path):
    """Sink, network and flusher threads at once, with reconnects and a cap; afterwards
    every event was acknowledged or counted as dropped, never both, never neither."""
    outbox = Outbox(outbox_path, 64 * 1024, 0.01)
    outbox.start()
    acked: set[int] = set()
    stop = threading.Event()
    rng = random.Random(7)

    def network() -> None:
        while not stop.is_set() or outbox.counts().depth:
            if rng.random() < 0.05:
                outbox.rewind()  # a reconnect: the unacknowledged come again
            batch = outbox.claim(rng.randint(1, 64), 1 << 20)
            for seq, body in batch:
                if rng.random() < 0.9:
                    outbox.ack(seq, len(body))
                    assert seq not in acked, f"{seq} acknowledged twice"
                    acked.add(seq)
            if not batch or rng.random() < 0.5:
                time.sleep(0.002)  # sometimes the broker is slower than the sink

    thread = threading.Thread(target=network)
    thread.start()
    total = 20_000
    for seq in range(1, total + 1):
        outbox.append(seq, payload(seq, rng.randint(50, 400)))
    deadline = time.monotonic() + 60
    while outbox.counts().depth and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(60)
    counts = outbox.counts()
    assert counts.depth == 0
    assert len(acked) + counts.dropped["full"] == total
    outbox.close()
    assert rows(outbox_path) == []


# -- crashes: kill -9, torn tails, damaged files -------------------------------------------


def writer(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_writer", str(path), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def kill_after(process: subprocess.Popen[str], seconds: float) -> list[dict]:
    """Read its lines for `seconds`, SIGKILL it, return every line it printed."""
    lines: list[dict] = []
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(json.loads(line))
    process.send_signal(signal.SIGKILL)
    for line in process.stdout:
        lines.append(json.loads(line))
    process.wait(30)
    return lines


def test_kill_9_keeps_everything_synced(outbox_path):
    process = writer(outbox_path, "--rate", "400", "--interval", "0.5")
    lines = kill_after(process, 3.3)
    synced = max(line["synced"] for line in lines)
    last = lines[-1]["seq"]
    on_disk = rows(outbox_path)
    # What the outbox said was synced is there, as an unbroken run from the first event.
    assert synced >= 400, lines[-1]
    assert on_disk == list(range(1, len(on_disk) + 1))
    assert on_disk[-1] >= synced
    # The rest, unsynced at the kill, is what was appended in the last interval.
    appended_at = {line["seq"]: line["t"] for line in lines}
    lost_window = appended_at[last] - appended_at.get(on_disk[-1] + 1, appended_at[last])
    print(
        f"kill -9: {last - on_disk[-1]} of {last} events lost, appended in the last "
        f"{lost_window:.2f} s (fsync interval 0.5 s)"
    )
    # It opens again without complaint, and goes on from there.
    outbox = Outbox(outbox_path, MIB, 0.5)
    outbox.append(last + 1, payload(last + 1))
    assert drain(outbox) == [*on_disk, last + 1]
    outbox.close()


def test_a_torn_write_ahead_log_tail_is_skipped_with_a_warning(outbox_path, caplog):
    process = writer(outbox_path, "--rate", "500", "--interval", "0.2")
    lines = kill_after(process, 1.5)
    wal = outbox_path.with_name(outbox_path.name + "-wal")
    scan = scan_wal(wal)
    assert scan.frames >= 3, scan
    # Cut the log in the middle of its last frame: a write torn by a power cut.
    with open(wal, "r+b") as handle:
        handle.truncate(32 + (scan.frames - 1) * scan.frame_size + scan.frame_size // 2)
    caplog.set_level(logging.WARNING)
    outbox = Outbox(outbox_path, MIB, 1.0)
    warnings = [r.getMessage() for r in caplog.records if "torn tail" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    survivors = drain(outbox)
    # The transactions before the tear: an unbroken run from the first event.
    assert survivors == list(range(1, len(survivors) + 1))
    assert 1 <= len(survivors) <= lines[-1]["seq"]
    outbox.append(survivors[-1] + 10_000, payload(0))
    outbox.close()
    # A clean close leaves no log, and the next open says nothing.
    caplog.clear()
    Outbox(outbox_path, MIB, 1.0).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.1])
def test_a_truncated_outbox_file_still_opens_and_keeps_what_reads(outbox_path, caplog, cut):
    outbox = Outbox(outbox_path, 4 * MIB, 1.0)
    for seq in range(1, 3001):
        outbox.append(seq, payload(seq, 300))
    outbox.close()  # everything checkpointed into the database file
    size = outbox_path.stat().st_size
    with open(outbox_path, "r+b") as handle:
        handle.truncate(int(size * cut) // 4096 * 4096 + 1234)  # mid-page
    reopened = Outbox(outbox_path, 4 * MIB, 1.0)
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notes) == 1 and "moved the old file" in notes[0], notes
    survivors = drain(reopened)
    assert survivors == list(range(1, len(survivors) + 1))  # an unbroken run from the start
    assert outbox_path.with_name(outbox_path.name + ".damaged").exists()
    reopened.append(5000, payload(5000))
    assert drain(reopened) == [5000]
    reopened.close()


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 1000, b"SQLite format 3\x00" + b"\xff" * 5000],
)
def test_a_file_that_is_no_database_is_replaced(outbox_path, caplog, content):
    outbox_path.parent.mkdir(parents=True)
    outbox_path.write_bytes(content)
    outbox = Outbox(outbox_path, MIB, 1.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if content else 0), [r.getMessage() for r in warnings]
    outbox.append(1, payload(1))
    assert drain(outbox) == [1]
    outbox.close()


def test_an_outbox_from_a_newer_version_is_moved_aside(outbox_path, caplog):
    Outbox(outbox_path, MIB, 1.0).close()
    with sqlite3.connect(outbox_path) as connection:
        connection.execute("PRAGMA user_version=7")
    Outbox(outbox_path, MIB, 1.0).close()
    assert any("newer pi-daemon" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "outbox",
        lambda tmp: (tmp / "outbox").mkdir() or tmp / "outbox",
    ],
)
def test_an_outbox_that_cannot_be_had_is_a_store_error(tmp_path, make):
    with pytest.raises(StoreError):
        open_store(make(tmp_path))


def test_one_process_per_outbox(outbox_path):
    process = writer(outbox_path, "--rate", "100")
    assert process.stdout is not None and process.stdout.readline()  # it has the outbox
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            Outbox(outbox_path, MIB, 1.0)
    finally:
        kill_after(process, 0)
    Outbox(outbox_path, MIB, 1.0).close()  # the kill released it


def test_an_unwritable_state_directory_is_a_store_error(tmp_path):
    if os.geteuid() == 0:
        code = (
            "import os, sys; from pathlib import Path\n"
            "from pi_daemon.mqtt.store import open_store, StoreError\n"
            "os.setgid(54321); os.setuid(54321)\n"
            "try:\n    open_store(Path(sys.argv[1]))\n"
            "except StoreError as e:\n    print(e); sys.exit(3)\n"
        )
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o755)
        tmp_path.chmod(0o755)
        result = subprocess.run(
            [sys.executable, "-c", code, str(folder / "x" / "outbox")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 3, result.stderr
        assert "Permission denied" in result.stdout
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        with pytest.raises(StoreError, match="Permission denied"):
            open_store(folder / "x" / "outbox")


# -- the SD card: bytes written per event ---------------------------------------------------


def run_writer(path: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tests.outbox_writer", str(path), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_bytes_written_per_event(tmp_path):
    """Measured with /proc/self/io write_bytes (bytes the process sent to the block layer:
    the log, checkpoints into the database file, the final checkpoint at close)."""
    count, size = 2000, 400
    common = ["--rate", "1000", "--count", str(count), "--size", str(size), "--interval", "0.5"]
    down = run_writer(tmp_path / "down" / "outbox", *common)
    healthy = run_writer(tmp_path / "up" / "outbox", *common, "--ack")
    down_per_event = down["write_bytes"] / count
    print(
        f"disk bytes per {size}-byte event: broker away {down_per_event:.0f} "
        f"({down_per_event / size:.2f}x the payload), broker acknowledging "
        f"{healthy['write_bytes'] / count:.1f}"
    )
    assert down["write_bytes"] > 0, "write_bytes counts nothing on this filesystem"
    # Acknowledged before its flush, an event never touches the disk.
    assert healthy["write_bytes"] < down["write_bytes"] / 20
