"""The sink dispatcher, the JSONL and log sinks, results and summaries: real threads, real
files, real log records."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pi_daemon.events import EventHub, EventRecord
from pi_daemon.identity import ClockSync, Identity, SequenceNumbers
from pi_daemon.prediction import Prediction
from pi_daemon.readings import Readings
from pi_daemon.results import LatencyWindow, Result, StageTimes, Summary
from pi_daemon.sinks.base import BATCH_INTERVAL_S, Sink, SinkDispatcher
from pi_daemon.sinks.jsonl import JsonlSink
from pi_daemon.sinks.log import LogSink

IDENTITY = Identity("pi-test", "0123abcd")


def result(frame_id: int, label: str = "cat", score: float = 0.9) -> Result:
    return Result(
        frame_id, 100.0 + frame_id, 50.0 + frame_id, [Prediction(3, label, score)],
        StageTimes(0.001, 0.002, 0.003, 0.0004),
    )  # fmt: skip


def summary(frames: int = 1, throttle_state: str = "normal", **readings: object) -> Summary:
    return Summary(
        1000.0, 60.0, frames, frames / 60.0, 4.0, 5.0, 0,
        throttle_state=throttle_state, readings=Readings(**readings),  # type: ignore[arg-type]
    )  # fmt: skip


def make_hub(submit: Callable[[EventRecord], None] = lambda record: None) -> EventHub:
    """An event hub numbering from 1 in memory, handing each record to `submit`."""
    return EventHub(IDENTITY, SequenceNumbers(None), ClockSync(), submit)


def record_of(hub: EventHub, body: Result | Summary) -> EventRecord:
    """`body` recorded the way the daemon records it (a result at its own times)."""
    if isinstance(body, Result):
        return hub.record("result", body, body.wall_time, body.monotonic)
    return hub.record("summary", body, body.wall_time)


def frame_ids(records: list[EventRecord]) -> list[int]:
    """The frame id of each result record (every record must be a result)."""
    bodies = [record.body for record in records]
    assert all(isinstance(body, Result) for body in bodies), records
    return [body.frame_id for body in bodies]  # type: ignore[union-attr]


class Recorder(Sink):
    """Keeps every event; can be made to block (a sink stuck on slow storage) or fail."""

    def __init__(self, name: str = "recorder", fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.events: list[EventRecord] = []
        self.calls: list[str] = []
        self.entered = threading.Event()  # the dispatcher thread is inside a result
        self.release = threading.Event()
        self.release.set()

    def on_event(self, record: EventRecord) -> None:
        if record.type == "result":
            self.entered.set()
            self.release.wait(30)
            if self.fail:
                raise OSError(28, "No space left on device")
        elif self.fail:
            raise RuntimeError("summary failed")
        self.events.append(record)

    def flush(self) -> None:
        self.calls.append("flush")

    def close(self) -> None:
        self.calls.append("close")


# -- the dispatcher ------------------------------------------------------------------------------


def test_close_delivers_everything_in_order_then_flushes_and_closes() -> None:
    sink = Recorder()
    dispatcher = SinkDispatcher([sink], capacity=1024)
    hub = make_hub(dispatcher.submit)
    bodies: list[Result | Summary] = [result(i) for i in range(1, 201)]
    bodies.insert(100, summary(100))
    events = [record_of(hub, body) for body in bodies]  # each submitted as it is made
    dispatcher.close()
    assert sink.events == events
    assert [record.seq for record in sink.events] == list(range(1, 202))
    assert sink.calls == ["flush", "close"]
    assert dispatcher.dropped_events == 0


def test_a_full_queue_drops_and_counts_instead_of_blocking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Recorder()
    sink.release.clear()  # the sink is stuck on its first event
    dispatcher = SinkDispatcher([sink], capacity=3, batch_interval_s=0)
    hub = make_hub(dispatcher.submit)
    record_of(hub, result(1))
    assert sink.entered.wait(5)
    with caplog.at_level(logging.WARNING, logger="pi_daemon.sinks.base"):
        started = time.monotonic()
        for i in range(2, 12):  # 3 fit in the queue, 7 are dropped
            record_of(hub, result(i))
        assert time.monotonic() - started < 0.5  # the loop never waited for the sink
    assert dispatcher.dropped_events == 7
    warnings = [r for r in caplog.records if "dropping events" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per event
    assert warnings[0].getMessage() == "sinks are too slow; dropping events (counted in summaries)"
    sink.release.set()
    dispatcher.close()
    assert frame_ids(sink.events) == [1, 2, 3, 4]


def test_a_failing_sink_is_isolated_from_the_others(caplog: pytest.LogCaptureFixture) -> None:
    broken, healthy = Recorder("broken", fail=True), Recorder("healthy")
    dispatcher = SinkDispatcher([broken, healthy], batch_interval_s=0)
    hub = make_hub(dispatcher.submit)
    with caplog.at_level(logging.ERROR, logger="pi_daemon.sinks.base"):
        for i in range(1, 6):
            record_of(hub, result(i))
        record_of(hub, summary())
        dispatcher.close()
    assert frame_ids(healthy.events[:5]) == [1, 2, 3, 4, 5]
    assert [e.type for e in healthy.events] == ["result"] * 5 + ["summary"]
    failures = [r for r in caplog.records if r.getMessage() == "sink broken failed on an event"]
    assert len(failures) == 6 and all(r.exc_info for r in failures)  # with the traceback
    assert broken.calls == healthy.calls == ["flush", "close"]


def test_close_gives_up_on_a_wedged_sink_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wedged, other = Recorder("wedged"), Recorder("other")
    wedged.release.clear()
    dispatcher = SinkDispatcher([wedged, other], batch_interval_s=0)
    record_of(make_hub(dispatcher.submit), result(1))
    assert wedged.entered.wait(5)
    with caplog.at_level(logging.ERROR, logger="pi_daemon.sinks.base"):
        started = time.monotonic()
        dispatcher.close(timeout=0.3)
        took = time.monotonic() - started
    assert 0.3 <= took < 2.0, took
    assert [r.getMessage() for r in caplog.records] == [
        "sinks did not drain within 0.3 s; some events are lost"
    ]
    assert other.calls == ["flush", "close"]  # the rest are still closed
    wedged.release.set()


def test_close_cuts_the_batch_sleep_short() -> None:
    sink = Recorder()
    dispatcher = SinkDispatcher([sink], batch_interval_s=30.0)
    hub = make_hub(dispatcher.submit)
    record_of(hub, result(1))
    deadline = time.monotonic() + 5
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.01)
    record_of(hub, result(2))  # queued while the thread sleeps between batches
    started = time.monotonic()
    dispatcher.close()
    assert time.monotonic() - started < 2.0
    assert frame_ids(sink.events) == [1, 2]


def test_results_are_delivered_in_batches_not_one_wakeup_each() -> None:
    class Timed(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_event(self, record: EventRecord) -> None:
            self.times.append(time.monotonic())

    sink = Timed()
    dispatcher = SinkDispatcher([sink], batch_interval_s=0.2)
    hub = make_hub(dispatcher.submit)
    for i in range(1, 4):
        record_of(hub, result(i))
        time.sleep(0.02)
    time.sleep(0.5)
    assert len(sink.times) == 3  # delivered by the batch timer, not by close()
    for i in range(4, 7):
        record_of(hub, result(i))
    dispatcher.close()
    times = np.array(sink.times)
    # The first arrives at once; the next two wait for the batch interval together.
    assert len(times) == 6 and times[2] - times[1] < 0.05 and times[1] - times[0] > 0.1
    assert BATCH_INTERVAL_S == 0.05


def test_errors_in_flush_or_close_are_logged_and_the_rest_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BadClose(Recorder):
        def close(self) -> None:
            raise OSError(5, "Input/output error")

    bad, good = BadClose("bad"), Recorder("good")
    dispatcher = SinkDispatcher([bad, good])
    with caplog.at_level(logging.ERROR, logger="pi_daemon.sinks.base"):
        dispatcher.close()
        dispatcher.close()  # twice is harmless
    assert [r.getMessage() for r in caplog.records] == [
        "closing sink bad failed: [Errno 5] Input/output error"
    ] * 2
    assert good.calls[:2] == ["flush", "close"]


# -- JSONL -----------------------------------------------------------------------------------------


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_writes_each_event_as_one_flushed_line(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "ev.jsonl"  # the directories are created
    sink = JsonlSink(path, max_bytes=1 << 20, backup_count=1, identity=IDENTITY)
    hub = make_hub()
    first = record_of(hub, result(1, label="café"))
    sink.on_event(first)
    # Flushed to the kernel at once: a reader (or a crash) sees the whole line now, compact
    # (no spaces: an SD card writes every byte) and in UTF-8 rather than \u escapes.
    compact = json.dumps(first.to_dict(IDENTITY), separators=(",", ":"))
    assert path.read_bytes() == compact.replace("\\u00e9", "é").encode() + b"\n"
    assert lines(path)[0]["device_id"] == "pi-test" and lines(path)[0]["seq"] == 1
    second = record_of(hub, summary(5, cpu_temp_c=61.5))
    sink.on_event(second)
    assert lines(path)[1] == second.to_dict(IDENTITY)
    sink.flush()
    sink.close()
    sink.close()
    sink.flush()
    sink.on_event(record_of(hub, result(2)))  # after close: dropped, not a crash
    assert len(lines(path)) == 2


def test_jsonl_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    path.write_text('{"type":"old"}\n' * 200)  # 3000 bytes from a previous run
    sink = JsonlSink(path, max_bytes=4096, backup_count=1, identity=IDENTITY)
    hub = make_hub()
    for i in range(1, 11):
        sink.on_event(record_of(hub, result(i)))
    sink.close()
    backup = path.with_name("ev.jsonl.1")
    kept = lines(backup)
    assert kept[:200] == [{"type": "old"}] * 200  # appended to, not truncated
    moved = [r["frame_id"] for r in kept[200:]]
    assert moved == list(range(1, len(moved) + 1)) and moved
    # Rotated exactly when the next line (the live file's first) would have crossed
    # max_bytes, counting the old part.
    line_bytes = len(path.read_bytes().split(b"\n", 1)[0]) + 1
    assert backup.stat().st_size <= 4096 < backup.stat().st_size + line_bytes
    assert [r["frame_id"] for r in lines(path)] == list(range(len(moved) + 1, 11))


def test_jsonl_rotates_only_past_max_bytes_and_counts_exactly_after_a_rotation(
    tmp_path: Path,
) -> None:
    """Lines of L bytes with max_bytes = 2L: a file holds exactly two, before and after a
    rotation (a line that fills the file to max_bytes exactly still fits)."""
    path = tmp_path / "ev.jsonl"
    hub = make_hub()
    records = [record_of(hub, result(i, label="x" * 2000)) for i in range(1, 7)]
    size = len((json.dumps(records[0].to_dict(IDENTITY), separators=(",", ":")) + "\n").encode())
    sink = JsonlSink(path, max_bytes=2 * size, backup_count=3, identity=IDENTITY)
    for record in records:
        sink.on_event(record)
    sink.close()
    chain = [path.with_name(f"ev.jsonl.{n}") for n in (2, 1)] + [path]
    assert [[r["frame_id"] for r in lines(file)] for file in chain] == [[1, 2], [3, 4], [5, 6]]
    assert all(file.stat().st_size == 2 * size for file in chain)


def test_jsonl_without_backups_survives_its_file_being_deleted(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=0, identity=IDENTITY)
    hub = make_hub()
    sink.on_event(record_of(hub, result(1)))
    path.unlink()  # an operator (or a cleanup job) removed it under the running daemon
    for i in range(2, 60):
        sink.on_event(record_of(hub, result(i)))
    sink.close()
    assert lines(path)[-1]["frame_id"] == 59 and path.stat().st_size <= 4096


def test_jsonl_with_no_backups_starts_the_file_afresh(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=0, identity=IDENTITY)
    hub = make_hub()
    for i in range(1, 201):
        sink.on_event(record_of(hub, result(i)))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.jsonl"]  # no .1 at all
    content = path.read_bytes()
    assert 0 < len(content) <= 4096 and content.endswith(b"\n")
    ids = [record["frame_id"] for record in lines(path)]
    assert ids == list(range(ids[0], 201)) and ids[0] > 1  # the newest, contiguous


def test_jsonl_rotation_keeps_backup_count_files_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=3, identity=IDENTITY)
    hub = make_hub()
    for i in range(1, 401):
        sink.on_event(record_of(hub, result(i)))
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ev.jsonl", "ev.jsonl.1", "ev.jsonl.2", "ev.jsonl.3"]
    chain = [path.with_name(f"ev.jsonl.{n}") for n in (3, 2, 1)] + [path]
    ids = [record["frame_id"] for file in chain for record in lines(file)]
    assert ids == list(range(ids[0], 401))  # oldest backup to live file: no gap, no repeat
    assert all(file.stat().st_size <= 4096 for file in chain)


def test_jsonl_max_bytes_counts_bytes_for_non_ascii_labels(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=2, identity=IDENTITY)
    hub = make_hub()
    for i in range(1, 301):
        sink.on_event(record_of(hub, result(i, label="pâtisserie 猫 ☕ 🐈")))  # 2-, 3-, 4-byte
    sink.close()
    for file in (path, path.with_name("ev.jsonl.1"), path.with_name("ev.jsonl.2")):
        assert file.stat().st_size <= 4096, (file.name, file.stat().st_size)
        assert lines(file)[0]["top"][0]["label"] == "pâtisserie 猫 ☕ 🐈"  # UTF-8, not \\u escapes


def test_jsonl_a_single_line_larger_than_max_bytes_is_still_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=1, identity=IDENTITY)
    hub = make_hub()
    huge = record_of(hub, result(1, label="x" * 5000))
    sink.on_event(huge)
    sink.on_event(record_of(hub, result(2)))
    sink.close()
    assert lines(path.with_name("ev.jsonl.1")) == [huge.to_dict(IDENTITY)]
    assert [r["frame_id"] for r in lines(path)] == [2]


# -- the log sink ------------------------------------------------------------------------------


def test_summary_log_line_carries_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink(0.5, IDENTITY)
    hub = make_hub()
    with caplog.at_level(logging.INFO, logger="pi_daemon.results"):
        sink.on_event(
            record_of(
                hub,
                Summary(
                    0.0, 60.0, 600, 10.0, 4.25, 6.5, 3,
                    readings=Readings(cpu_temp_c=61.5, rss_bytes=1),
                ),
            )
        )  # fmt: skip
        sink.on_event(
            record_of(
                hub,
                Summary(
                    0.0, 60.0, 593, 9.87654, 4.25671, 6.54321, 0, 4,
                    throttle_state="warm", readings=Readings(cpu_temp_c=61.5),
                ),
            )
        )  # fmt: skip
        sink.on_event(
            record_of(hub, Summary(0.0, 60.0, 0, 0.0, 0.0, 0.0, 0, throttle_state="warm"))
        )
    first, both, second = caplog.records
    assert both.getMessage().endswith(
        "0 dropped, 4 skipped (unchanged), throttle_state warm, cpu_temp_c 61.5"
    )
    assert (both.FPS, both.LATENCY_P50_MS, both.LATENCY_P95_MS) == (9.88, 4.26, 6.54)
    assert both.SKIPPED_FRAMES == 4
    assert first.getMessage() == (
        "600 frames in 60 s: 10.0 fps, latency p50 4.2 ms p95 6.5 ms, 3 dropped, "
        "throttle_state normal, cpu_temp_c 61.5"
    )
    assert (first.PI_DAEMON_EVENT, first.FRAMES, first.FPS, first.DROPPED_FRAMES) == (
        "summary", 600, 10.0, 3
    )  # fmt: skip
    assert (first.LATENCY_P50_MS, first.LATENCY_P95_MS, first.CPU_TEMP_C) == (4.25, 6.5, 61.5)
    assert first.THROTTLE_STATE == "normal" and first.SKIPPED_FRAMES == 0
    # The event's identity goes to the journal with it.
    assert (first.DEVICE_ID, first.BOOT_ID, first.SEQ, both.SEQ) == ("pi-test", "0123abcd", 1, 2)
    assert second.getMessage().endswith("0 dropped, throttle_state warm")
    # Absent readings are not sent as None.
    assert second.THROTTLE_STATE == "warm" and not hasattr(second, "CPU_TEMP_C")


def test_result_log_line_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink(0.5, IDENTITY)
    hub = make_hub()
    with caplog.at_level(logging.INFO, logger="pi_daemon.results"):
        sink.on_event(record_of(hub, result(7, "tabby", 0.87654)))
        sink.on_event(record_of(hub, result(8, "tabby", 0.5)))  # exactly the threshold is "above"
        sink.on_event(record_of(hub, result(9, "tabby", 0.49)))
    assert [r.getMessage() for r in caplog.records] == [
        "frame 7: tabby 0.88",
        "frame 9: tabby 0.49 (below threshold)",
    ]
    record = caplog.records[0]
    assert (record.FRAME_ID, record.LABEL, record.LABEL_INDEX, record.SCORE) == (
        7, "tabby", 3, 0.8765
    )  # fmt: skip
    assert record.LATENCY_MS == 3.0  # the invoke time, in ms
    assert (record.PI_DAEMON_EVENT, record.SEQ, caplog.records[1].SEQ) == ("result", 1, 3)
    slow = Result(1, 0.0, 0.0, [Prediction(0, "dog", 0.9)], StageTimes(0, 0, 0.0123456, 0))
    with caplog.at_level(logging.INFO, logger="pi_daemon.results"):
        sink.on_event(record_of(hub, slow))
    assert caplog.records[-1].LATENCY_MS == 12.35


def test_with_label_events_for_results_only_summaries_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`rules.journal_results = "events"`: the label events stand for the results."""
    sink = LogSink(0.5, IDENTITY, log_results=False)
    hub = make_hub()
    with caplog.at_level(logging.INFO, logger="pi_daemon.results"):
        sink.on_event(record_of(hub, result(1, "tabby")))
        sink.on_event(record_of(hub, result(2, "dog", 0.2)))
        sink.on_event(record_of(hub, summary(2)))
    assert [r.PI_DAEMON_EVENT for r in caplog.records] == ["summary"]


# -- results and summaries ------------------------------------------------------------------------


def test_result_fields_round_and_convert_to_ms() -> None:
    body = Result(
        7, 1.23456789, 9.87654321, [Prediction(3, "cat", 0.123456789)],
        StageTimes(0.0123456, 0.0023456, 0.0034567, 0.0123456),
    )  # fmt: skip
    fields = {
        "frame_id": 7,
        "top": [{"label": "cat", "index": 3, "score": 0.123457}],
        "ms": {"capture_wait": 12.346, "preprocess": 2.346, "invoke": 3.457, "postprocess": 12.346},
    }
    assert body.fields() == fields
    # As a JSON line: the type and the identity first, the times rounded to the microsecond.
    line = EventRecord("result", 5, body.wall_time, body.monotonic, False, body).to_dict(IDENTITY)
    assert line == {
        "type": "result",
        "device_id": "pi-test",
        "boot_id": "0123abcd",
        "seq": 5,
        "time": 1.234568,
        "monotonic": 9.876543,
        "clock_synced": False,
        **fields,
    }
    assert list(line) == ["type", "device_id", "boot_id", "seq", "time", "monotonic",
                          "clock_synced", "frame_id", "top", "ms"]  # fmt: skip


def test_stage_total_excludes_the_capture_wait() -> None:
    assert StageTimes(10.0, 0.5, 0.25, 0.125).total == 0.875


def test_summary_fields_include_its_summary_readings() -> None:
    body = Summary(
        5.1234567, 60.45649, 600, 9.87654, 4.12345, 6.98765, 2, 3, "warm",
        # Available summary readings are included (False too: it is a reading, not
        # absent); unavailable ones and the policy-only ones (swap total) are not.
        Readings(cpu_temp_c=61.5, undervoltage=False, swap_total_bytes=1 << 20, rss_bytes=None),
    )  # fmt: skip
    record = EventRecord("summary", 9, body.wall_time, 7.0, True, body).to_dict(IDENTITY)
    assert record == {
        "type": "summary",
        "device_id": "pi-test",
        "boot_id": "0123abcd",
        "seq": 9,
        "time": 5.123457,
        "monotonic": 7.0,
        "clock_synced": True,
        "interval_s": 60.456,
        "frames": 600,
        "skipped_frames": 3,
        "fps": 9.877,
        "latency_p50_ms": 4.123,
        "latency_p95_ms": 6.988,
        "dropped_frames": 2,
        "throttle_state": "warm",
        "cpu_temp_c": 61.5,
        "undervoltage": False,
    }


def test_latency_window_percentiles_in_ms_and_reset() -> None:
    window = LatencyWindow(capacity=100)
    assert window.percentiles_ms() == (0.0, 0.0) and window.count == 0
    for ms in range(1, 101):
        window.add(ms / 1000)
    p50, p95 = window.percentiles_ms()
    assert window.count == 100
    assert p50 == pytest.approx(50.5) and p95 == pytest.approx(95.05)
    window.reset()
    assert window.count == 0 and window.percentiles_ms() == (0.0, 0.0)


def test_latency_window_keeps_the_newest_when_full() -> None:
    window = LatencyWindow(capacity=4)
    for seconds in (9.0, 9.0, 9.0, 9.0, 0.001, 0.002, 0.003, 0.004):
        window.add(seconds)
    assert window.count == 8  # every frame is counted ...
    assert window.percentiles_ms() == pytest.approx((2.5, 3.85))  # ... the ring holds the last 4


def test_the_default_queue_holds_1024_events_on_a_daemon_thread_named_sinks() -> None:
    """The name is what THREAD_NAME says in the journal; a daemon thread, so a sink wedged
    on dead storage can never keep the process from exiting."""
    sink = Recorder()
    sink.release.clear()
    dispatcher = SinkDispatcher([sink])
    threads = [t for t in threading.enumerate() if t.name == "sinks"]
    assert threads and all(t.daemon for t in threads)
    hub = make_hub(dispatcher.submit)
    record_of(hub, result(0))
    assert sink.entered.wait(5)
    for i in range(1, 1031):
        record_of(hub, result(i))
    assert dispatcher.dropped_events == 1030 - 1024
    sink.release.set()
    dispatcher.close()
    assert len(sink.events) == 1 + 1024


def test_latency_window_holds_4096_frames_by_default() -> None:
    window = LatencyWindow()
    for seconds in [2.0] * 2049 + [1.0] * 2048:  # 4097 frames: the first is overwritten
        window.add(seconds)
    assert window.count == 4097
    assert window.percentiles_ms()[0] == pytest.approx(1500.0)  # 2048 of each in the ring
