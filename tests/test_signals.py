"""Signals against the real daemon process: SIGTERM/SIGINT stop cleanly, SIGHUP reloads safely."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.test_notify import (
    TINY_INT8_MODEL,
    TINY_MODEL,
    DaemonProcess,
    NotifySocket,
    notify_env,
    notify_socket_fixture,  # noqa: F401 - the notify_socket fixture
    read_events,
    start_daemon_fixture,  # noqa: F401 - the start_daemon fixture
    write_config,
)


def test_sigterm_at_full_speed_loses_no_events(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(write_config(tmp_path, fps=0), notify_env(notify_socket, 5.0))
    notify_socket.wait_for("READY", 30)
    time.sleep(1.5)
    code, took = daemon.stop()
    assert code == 0, daemon.log()
    assert took < 5, took

    text = (tmp_path / "events.jsonl").read_text()
    assert text.endswith("\n")
    events = [json.loads(line) for line in text.splitlines()]  # every line parses
    results = [e for e in events if e["type"] == "result"]
    reported = int(re.search(r"stopped after (\d+) frames", daemon.log()).group(1))
    assert reported > 100, "not running at full speed"
    assert len(results) == reported
    assert [r["frame_id"] for r in results] == list(range(1, reported + 1))
    assert events[-1]["type"] == "summary"  # the final summary was flushed too
    assert "dropping events" not in daemon.log()


def test_sigint_exits_zero_within_bound_even_with_capture_stuck(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    # fps = 0: a replay that waits for the loop, so exactly three frames are classified.
    config = write_config(
        tmp_path, fps=0, extra='[testing]\nfault = "hang-capture"\nfault_after_frames = 3\n'
    )
    env = {**notify_env(notify_socket, 5.0), "PI_DAEMON_ALLOW_FAULTS": "1"}
    daemon = start_daemon(config, env)
    daemon.wait_for_log("capture hangs now", 30)
    sent = daemon.send(signal.SIGINT)
    assert daemon.wait(5) == 0, daemon.log()
    assert time.monotonic() - sent < 3
    assert notify_socket.with_key("STOPPING")
    # No new frame is started after the stop request, even the one the hang let go.
    assert "stopped after 3 frames" in daemon.log(), daemon.log()


def _results_after(tmp_path: Path, count: int) -> list[dict]:
    return [e for e in read_events(tmp_path) if e["type"] == "result"][count:]


def test_sighup_keeps_the_old_model_when_the_new_one_is_broken(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    config = write_config(tmp_path)
    good_text = config.read_text()
    old_sha = hashlib.sha256(TINY_MODEL.read_bytes()).hexdigest()
    daemon = start_daemon(config, notify_env(notify_socket, 5.0))
    last = notify_socket.wait_for("READY", 30)

    def reload(text: str, expect_log: str) -> int:
        nonlocal last
        config.write_text(text)
        before = len(_results_after(tmp_path, 0))
        daemon.send(signal.SIGHUP)
        last = notify_socket.wait_for("READY", 10, after=last.received)  # reload is over
        daemon.wait_for_log(expect_log, 5)
        return before

    # 1. A model path that does not exist: the old model keeps classifying.
    before = reload(
        good_text.replace(str(TINY_MODEL), "/nonexistent/model.tflite"),
        "reload failed, still running model tiny_uint8",
    )
    line = next(x for x in daemon.log().splitlines() if "reload failed" in x)
    assert f"(sha256 {old_sha[:12]}…)" in line and "model file not found" in line, line
    assert " ERROR " in line
    time.sleep(0.5)
    after = _results_after(tmp_path, before)
    assert len(after) >= 5, "results stopped after a failed reload"
    assert {r["top"][0]["label"] for r in after} == {"class_0"}

    # 2. A config that does not parse: same, and the log says it was the config.
    reload("[model\n", "config:")
    assert "not valid TOML" in daemon.log()

    # 3. A good new model (and a change only a restart applies): swapped in, both logged.
    before = reload(
        good_text.replace(str(TINY_MODEL), str(TINY_INT8_MODEL)).replace(
            "summary_interval_s = 1", "summary_interval_s = 2"
        ),
        "reloaded: model tiny_int8",
    )
    new_sha = hashlib.sha256(TINY_INT8_MODEL.read_bytes()).hexdigest()
    assert f"(sha256 {new_sha[:12]}…)" in daemon.log()
    assert "output.summary_interval_s changed" in daemon.log()
    assert "next restart" in daemon.log()
    time.sleep(0.5)
    assert len(_results_after(tmp_path, before)) >= 5

    # Every reload was bracketed RELOADING=1 ... READY=1, failed ones included.
    assert len(notify_socket.with_key("RELOADING")) == 3
    assert len(notify_socket.with_key("READY")) == 4
    code, _ = daemon.stop()
    assert code == 0, daemon.log()
