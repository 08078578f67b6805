"""The JSONL events file against a real full disk, real renames and special files.

Disk full is a real, tiny tmpfs (root only: CI runs as root), filled with a real file; a
rotated or deleted file is a real rename/unlink under the running daemon, as logrotate
does. After every scenario each line of every events file must parse: never half a record.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pi_daemon.prediction import Prediction
from pi_daemon.results import Result, StageTimes
from pi_daemon.sinks.jsonl import JsonlSink
from tests.conftest import assert_one_line_error
from tests.test_notify import (
    DaemonProcess,
    start_daemon_fixture,  # noqa: F401 - the start_daemon fixture
    write_config,
)
from tests.test_sinks import IDENTITY, make_hub, record_of


def _result(i: int, label: str = "cat") -> Result:
    return Result(i, 1.0, 2.0, [Prediction(0, label, 0.9)], StageTimes(0, 0, 0.001, 0))


def _writer(sink: JsonlSink) -> Callable[[Result], None]:
    """Records results as the daemon does (seq from 1) and hands each to `sink`."""
    hub = make_hub(sink.on_event)

    def write(result: Result) -> None:
        record_of(hub, result)

    return write


def parsed(*paths: Path) -> list[dict[str, object]]:
    """Every record in the files; fails on any line that is not whole JSON."""
    records = []
    for path in paths:
        if path.exists():
            text = path.read_text(encoding="utf-8")
            assert not text or text.endswith("\n"), f"{path} ends in a partial record"
            records += [json.loads(line) for line in text.splitlines()]
    return records


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, so ENOSPC comes from the kernel, not from a mock."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: mounting a tmpfs for the disk-full tests needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", mount], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem with a real file, leaving about `leave_bytes` free."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    if leave_bytes:
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave_bytes))
    os.close(fd)
    return filler


def test_disk_full_one_error_whole_records_then_recovery(
    small_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = small_tmpfs / "events.jsonl"
    filler = fill(small_tmpfs, leave_bytes=6000)
    sink = JsonlSink(events, max_bytes=1 << 20, backup_count=1, identity=IDENTITY)
    write = _writer(sink)
    with caplog.at_level(logging.INFO, logger="pi_daemon.sinks.jsonl"):
        for i in range(300):  # ~30 KB of records into ~6 KB of space
            write(_result(i, "a fairly long label, to cross page boundaries"))
        assert sink.lost > 200
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        assert "No space left on device" in errors[0].getMessage()
        written = parsed(events)
        assert [r["frame_id"] for r in written] == list(range(len(written)))
        filler.unlink()
        for i in range(300, 310):
            write(_result(i))
    sink.close()
    recovered = [r.getMessage() for r in caplog.records if "writing again" in r.getMessage()]
    assert recovered == [
        f"events file {events}: writing again; {sink.lost} records were lost while it could not be"
    ]
    records = parsed(events)
    assert len(records) + sink.lost == 310
    assert [r["frame_id"] for r in records][-10:] == list(range(300, 310))


def test_disk_full_under_the_running_daemon(
    small_tmpfs: Path, tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    config = write_config(tmp_path, fps=50)
    config.write_text(
        config.read_text().replace(str(tmp_path / "events.jsonl"), str(small_tmpfs / "e.jsonl"))
    )
    filler = fill(small_tmpfs, leave_bytes=3000)
    daemon = start_daemon(config)
    daemon.wait_for_log("cannot write (No space left on device)", 30)
    daemon.wait_for_log(" frames in 1 s: ", 5)  # classification goes on: summaries come
    filler.unlink()
    daemon.wait_for_log("writing again", 10)
    code, _ = daemon.stop()
    log = daemon.log()
    assert code == 0, log
    assert log.count("cannot write") == 1 and log.count("writing again") == 1, log
    assert "Traceback" not in log and "failed on an event" not in log
    records = parsed(small_tmpfs / "e.jsonl")
    # The final summary got out whole, and the stop event after it.
    assert [r["type"] for r in records[-2:]] == ["summary", "stop"], records[-3:]
    assert records[-1]["exit_code"] == 0


def test_renamed_then_deleted_while_running(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """logrotate's default: rename the file away (then a new one appears); an operator
    deletes the new one. Every result reaches some file, whole."""
    events = tmp_path / "events.jsonl"
    daemon = start_daemon(write_config(tmp_path, fps=50))
    daemon.wait_for_log("ready: first frame", 30)
    enough = 20

    def wait_for_results(path: Path, count: int) -> None:
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if path.exists() and sum(r["type"] == "result" for r in parsed(path)) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{path}: fewer than {count} results:\n{daemon.log()}")

    wait_for_results(events, enough)
    os.rename(events, tmp_path / "events.jsonl.1")
    wait_for_results(events, enough)  # a new file at the configured path
    removed = parsed(events)
    events.unlink()
    wait_for_results(events, enough)
    code, _ = daemon.stop()
    assert code == 0, daemon.log()
    log = daemon.log()
    assert log.count("was moved or deleted; starting a new one") == 2, log
    kept = parsed(tmp_path / "events.jsonl.1", events)
    ids = sorted(r["frame_id"] for r in kept + removed if r["type"] == "result")
    frames = int(log.split("stopped after ")[1].split()[0])
    # The deleted file's records were read just before the unlink; a few written between
    # that read and the unlink went with it. (Frame ids have gaps: a paced source is live,
    # and a frame the loop was busy for is dropped.)
    assert len(ids) == len(set(ids)) >= frames - 10, (len(ids), frames)


def test_rotation_survives_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=3, identity=IDENTITY)
    write = _writer(sink)
    for i in range(400):
        write(_result(i))
        if i == 100:
            path.unlink()  # the live file
        if i == 200:
            path.with_name("ev.jsonl.2").unlink()  # a backup in the middle of the chain
        if i == 300:
            for old in tmp_path.glob("ev.jsonl.*"):
                old.unlink()
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ev.jsonl", "ev.jsonl.1", "ev.jsonl.2", "ev.jsonl.3"], names
    for name in names:
        assert (tmp_path / name).stat().st_size <= 4096
    assert parsed(path)[-1]["frame_id"] == 399


def test_size_is_counted_in_bytes_not_characters(tmp_path: Path) -> None:
    """A label of CJK characters is three times longer in UTF-8 than in characters."""
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=2, identity=IDENTITY)
    write = _writer(sink)
    for i in range(100):
        write(_result(i, "猫" * 60))
    sink.close()
    for file in tmp_path.iterdir():
        assert file.stat().st_size <= 4096, (file.name, file.stat().st_size)
    assert parsed(path)[-1]["top"][0]["label"] == "猫" * 60


def test_no_backups_starts_the_file_over_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=0, identity=IDENTITY)
    write = _writer(sink)
    write(_result(0))
    inode = path.stat().st_ino
    sizes, held = [], []
    for i in range(1, 200):
        write(_result(i))
        sizes.append(path.stat().st_size)
        held.append([r["frame_id"] for r in parsed(path)])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.jsonl"]
    assert max(sizes) <= 4096
    # It did start over: after some write the file held only the record just written.
    assert any(ids == [i] for i, ids in enumerate(held, 1)), held
    assert path.stat().st_ino == inode  # the same file: a `tail -f` keeps following it
    assert parsed(path)[-1]["frame_id"] == 199


def test_a_torn_tail_is_cut_off_at_open(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    path.write_text('{"type":"result","frame_id":1}\n{"type":"result","fra')
    JsonlSink(path, 1 << 20, 1, IDENTITY).close()
    assert path.read_text() == '{"type":"result","frame_id":1}\n'


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: os.mkfifo(tmp / "fifo") or tmp / "fifo", "not a regular file (a FIFO)"),
        (lambda tmp: Path("/dev/null"), "not a regular file (a character device)"),
        (lambda tmp: tmp, "Is a directory"),
    ],
    ids=["fifo", "device", "directory"],
)
def test_a_special_file_as_events_file_is_refused_without_blocking(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]], make, fragment
) -> None:
    target = make(tmp_path)
    config = write_config(tmp_path, fps=0)
    config.write_text(config.read_text().replace(str(tmp_path / "events.jsonl"), str(target)))
    result = cli("run", "--config", str(config), "--max-frames", "3", timeout=60)
    assert_one_line_error(result, 78, "output.events_file", str(target), fragment)
