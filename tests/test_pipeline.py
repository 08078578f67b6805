"""The whole pipeline, end to end: real model, real files, real sockets."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from pi_daemon.capture import LatestFrameSlot, RetryPolicy
from pi_daemon.errors import EX_UNAVAILABLE
from pi_daemon.frame import Frame
from pi_daemon.prediction import Prediction
from pi_daemon.results import Result, StageTimes, Summary
from pi_daemon.sinks.jsonl import JsonlSink
from pi_daemon.sinks.log import LogSink
from tests.conftest import TEST_MODELS, assert_one_line_error
from tests.mjpeg_server import MjpegServer
from tests.test_sinks import IDENTITY, make_hub, record_of

TINY_MODEL = f"""
[model]
path = "{TEST_MODELS / "tiny_uint8.tflite"}"
labels = "{TEST_MODELS / "tiny_labels.txt"}"
num_threads = 1
"""


def read_events(path):
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_n_frames_give_n_results_with_sane_timings(cli, write_config, demo_video, tmp_path):
    events = tmp_path / "events.jsonl"
    config = write_config(f"""
source = "files"
[files]
paths = ["{demo_video}"]
loop = false
[output]
events_file = "{events}"
""")
    result = cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    records = read_events(events)
    results = [r for r in records if r["type"] == "result"]
    assert [r["frame_id"] for r in results] == list(range(1, 31))
    for r in results:
        assert len(r["top"]) == 3
        assert r["top"][0]["score"] >= r["top"][1]["score"] >= r["top"][2]["score"]
        assert 0 < r["ms"]["invoke"] < 5000
        assert 0 < r["ms"]["preprocess"] < 1000
        assert 0 <= r["ms"]["postprocess"] < 1000
        assert 0 <= r["ms"]["capture_wait"] < 10_000
    monotonic = [r["monotonic"] for r in results]
    assert monotonic == sorted(monotonic)
    # The video cycles coffee, chelsea, rocket, astronaut: the bundled model sees it.
    assert results[0]["top"][0]["label"] == "espresso"
    # The final summary, then the stop event: nothing is left undelivered at the end.
    final, stop = records[-2:]
    assert final["type"] == "summary" and final["frames"] == 30
    assert stop["type"] == "stop" and stop["frames"] == 30 and stop["exit_code"] == 0
    assert "source ended after 30 frames" in result.stderr
    assert "ready: first frame classified as espresso" in result.stderr


def test_max_frames_stops_a_looping_source(cli, write_config, tmp_path):
    events = tmp_path / "e.jsonl"
    config = write_config(f'source = "files"\n{TINY_MODEL}\n[output]\nevents_file = "{events}"\n')
    result = cli("run", "--config", str(config), "--max-frames", "50")
    assert result.returncode == 0, result.stderr
    assert sum(1 for r in read_events(events) if r["type"] == "result") == 50


def test_log_shows_changes_not_every_frame(cli, write_config, photos):
    config = write_config(f"""
source = "files"
[files]
paths = ["{photos["coffee"]}"]
[output]
log_score_threshold = 0.5
[rules]
journal_results = "changes"
""")
    result = cli("run", "--config", str(config), "--max-frames", "40")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(": espresso") == 1


def stream_config(url: str, events, failures: int = 3) -> str:
    return f"""
source = "opencv"
{TINY_MODEL}
[opencv]
device = "{url}"
read_timeout_s = 1.0
[capture]
stall_timeout_s = 3.0
max_consecutive_failures = {failures}
backoff_initial_s = 0.1
backoff_max_s = 0.2
[output]
events_file = "{events}"
"""


def test_stream_that_stalls_then_vanishes_exits_69_keeping_results(cli, write_config, tmp_path):
    server = MjpegServer([20], stall_s=30)
    events = tmp_path / "events.jsonl"
    try:
        result = cli(
            "run", "--config", str(write_config(stream_config(server.url, events))), timeout=60
        )
    finally:
        server.close()
    assert_one_line_error(result, EX_UNAVAILABLE, "giving up after 3 consecutive failures")
    assert "reconnecting in" in result.stderr
    records = read_events(events)
    results = [r for r in records if r["type"] == "result"]
    # A stream is live: a frame the loop was too busy for is dropped, and counted.
    summaries = [r for r in records if r["type"] == "summary"]
    # The final summary, then the error the daemon exits with.
    assert [r["type"] for r in records[-2:]] == ["summary", "error"], records[-3:]
    assert records[-1]["exit_code"] == EX_UNAVAILABLE
    assert len(results) + sum(s["dropped_frames"] for s in summaries) == 20
    assert results[-1]["frame_id"] == 20
    assert events.read_text().endswith("\n")


def test_stream_that_drops_and_returns_recovers(cli, write_config, tmp_path):
    server = MjpegServer([15, 300], stall_s=0.1)
    events = tmp_path / "events.jsonl"
    try:
        result = cli(
            "run",
            "--config",
            str(write_config(stream_config(server.url, events, 5))),
            "--max-frames",
            "40",
            timeout=60,
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert "recovered after 1 failures" in result.stderr
    assert server.connections == 2
    assert sum(1 for r in read_events(events) if r["type"] == "result") == 40


def _frame(i: int) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), "RGB", i, 0.0, 0.0)


def test_slot_keeps_only_the_newest_frame_and_counts_drops():
    slot, stop = LatestFrameSlot(), threading.Event()
    for i in range(1, 6):
        slot.put(_frame(i), wait_for_consumer=False, stop=stop)
    assert slot.take(0.1).frame_id == 5
    assert slot.dropped == 4
    assert slot.take(0.05) is None


def test_slot_waits_for_the_consumer_when_replaying():
    slot, stop = LatestFrameSlot(), threading.Event()
    taken = []

    def produce():
        for i in range(1, 21):
            slot.put(_frame(i), wait_for_consumer=True, stop=stop)
        slot.finish(EOFError("done"))

    thread = threading.Thread(target=produce)
    thread.start()
    with pytest.raises(EOFError):
        while True:
            frame = slot.take(2)
            assert frame is not None
            taken.append(frame.frame_id)
    thread.join()
    assert taken == list(range(1, 21)) and slot.dropped == 0


@pytest.mark.parametrize(("failures", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)])
def test_backoff_doubles_up_to_the_cap(failures, delay):
    assert RetryPolicy(5, 0.5, 30.0).backoff(failures) == delay


def _result(i: int, label: str = "cat", score: float = 0.9) -> Result:
    return Result(i, 1.0, 2.0, [Prediction(0, label, score)], StageTimes(0, 0, 0.001, 0))


def test_jsonl_rotates_by_size_and_keeps_backups(tmp_path):
    path = tmp_path / "ev.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backup_count=2, identity=IDENTITY)
    hub = make_hub(sink.on_event)
    for i in range(200):
        record_of(hub, _result(i))
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ev.jsonl", "ev.jsonl.1", "ev.jsonl.2"]
    for name in files:
        content = (tmp_path / name).read_text()
        assert len(content.encode()) <= 4096 and content.endswith("\n")
        [json.loads(line) for line in content.splitlines()]
    ids = [json.loads(line)["frame_id"] for line in path.read_text().splitlines()]
    assert ids[-1] == 199


def test_jsonl_starts_a_fresh_line_after_a_crash(tmp_path):
    path = tmp_path / "ev.jsonl"
    path.write_text('{"type":"result","frame_id":1}\n{"type":"res')  # killed mid-write
    sink = JsonlSink(path, max_bytes=1 << 20, backup_count=1, identity=IDENTITY)
    record_of(make_hub(sink.on_event), Summary(0.0, 1.0, 1, 1.0, 1.0, 1.0, 0))
    sink.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["frame_id"] == 1
    assert json.loads(lines[-1])["type"] == "summary"


def test_jsonl_unwritable_path_is_a_config_error(tmp_path):
    from pi_daemon.errors import ConfigError

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"output\.events_file"):
        JsonlSink(tmp_path / "file" / "ev.jsonl", 4096, 1, IDENTITY)


def test_log_sink_logs_label_changes_and_threshold_crossings(caplog):
    sink = LogSink(score_threshold=0.5, identity=IDENTITY)
    hub = make_hub(sink.on_event)
    sequence = [
        ("cat", 0.9),
        ("cat", 0.95),
        ("cat", 0.4),
        ("cat", 0.3),
        ("dog", 0.3),
        ("dog", 0.8),
        ("dog", 0.8),
    ]
    with caplog.at_level(logging.INFO, logger="pi_daemon.results"):
        for i, (label, score) in enumerate(sequence, 1):
            record_of(hub, _result(i, label, score))
    logged = [(r.FRAME_ID, r.LABEL) for r in caplog.records]
    assert logged == [(1, "cat"), (3, "cat"), (5, "dog"), (6, "dog")]
    assert all(r.PI_DAEMON_EVENT == "result" for r in caplog.records)
