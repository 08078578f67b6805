"""Signals against the real daemon process: SIGTERM/SIGINT stop cleanly, SIGHUP reloads safely."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pi_daemon.errors import EX_CONFIG
from tests.bad_models import write_mutation
from tests.conftest import REPO, assert_one_line_error
from tests.test_notify import (
    TINY_INT8_MODEL,
    TINY_LABELS,
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
    # The final summary was flushed too, and the stop event after it.
    assert [e["type"] for e in events[-2:]] == ["summary", "stop"], events[-3:]
    assert events[-1]["frames"] == reported and events[-1]["exit_code"] == 0
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
    # The third frame was read before the hang; wait until the loop has classified it too
    # (the hang message comes from the capture thread, possibly before that).
    deadline = time.monotonic() + 10
    while len(_results_after(tmp_path, 0)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = daemon.send(signal.SIGINT)
    assert daemon.wait(5) == 0, daemon.log()
    assert time.monotonic() - sent < 3
    assert notify_socket.with_key("STOPPING")
    # No new frame is started after the stop request, even the one the hang let go.
    assert "stopped after 3 frames" in daemon.log(), daemon.log()


UNIT = REPO / "systemd" / "pi-daemon.service"
WEDGED_INVOKE = REPO / "tests" / "wedged_invoke.py"
EX_SOFTWARE = 70


def timeout_stop_s() -> float:
    """The unit's TimeoutStopSec, after which systemd SIGKILLs a daemon that did not stop."""
    match = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.M)
    assert match, "TimeoutStopSec=<N>s not found in the unit"
    return float(match.group(1))


def test_sigterm_ends_the_process_even_when_invoke_is_wedged_in_c(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """A hang no stop event can release: invoke() deadlocks in C with the GIL released,
    as a wedged XNNPACK kernel would. The Python-level handler can never run on the stuck
    main thread; the stop must still end the process, with what it recorded kept, inside
    the unit's TimeoutStopSec (after which systemd's SIGKILL would lose it all)."""
    daemon = start_daemon(
        write_config(tmp_path, fps=0),  # a replay waits for the loop: no frame is skipped
        {**notify_env(notify_socket, 60.0), "PI_DAEMON_TEST_WEDGE_AFTER": "25"},
        entry=[str(WEDGED_INVOKE)],
    )
    notify_socket.wait_for("READY", 30)
    daemon.wait_for_log("invoke() is now stuck", 30)
    sent = daemon.send(signal.SIGTERM)
    limit = timeout_stop_s()
    code = daemon.wait(limit)  # raises TimeoutExpired: systemd would have SIGKILLed it
    took = time.monotonic() - sent
    log = daemon.log()
    assert took < limit, (took, log)
    assert code == EX_SOFTWARE, (code, log)  # not 0: a wedged interpreter is a fault
    assert "SIGTERM received: stopping" in log
    assert "the main thread is stuck" in log and "exiting with code 70" in log, log
    # The stacks show the operator where it was stuck (the wedged call in invoke()).
    assert re.search(r'wedged_invoke\.py", line \d+ in invoke', log), log
    assert notify_socket.with_key("STOPPING")
    # Every frame classified before the wedge reached the events file, whole lines only.
    text = (tmp_path / "events.jsonl").read_text()
    assert text.endswith("\n")
    results = [e for e in map(json.loads, text.splitlines()) if e["type"] == "result"]
    assert [r["frame_id"] for r in results] == list(range(1, len(results) + 1))
    assert len(results) >= 20, len(results)


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


def test_sighup_to_a_model_that_crashes_the_runtime_keeps_the_daemon_running(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """A model whose allocate_tensors() segfaults, then one whose invoke() fails: each is
    proven in a trial process first, so the running daemon only logs the failed reload."""
    crash = write_mutation(tmp_path, "crashes-runtime")
    invoke = write_mutation(tmp_path, "invoke-fails")
    config = write_config(tmp_path)
    good_text = config.read_text()
    daemon = start_daemon(config, notify_env(notify_socket, 5.0))
    last = notify_socket.wait_for("READY", 30)
    for bad, reason in ((crash, "crashed (SIGSEGV)"), (invoke, "Input tensor 1 lacks data")):
        config.write_text(good_text.replace(str(TINY_MODEL), str(bad)))
        before = len(_results_after(tmp_path, 0))
        daemon.send(signal.SIGHUP)
        last = notify_socket.wait_for("READY", 20, after=last.received)
        daemon.wait_for_log(reason, 5)
        line = next(x for x in daemon.log().splitlines() if reason in x)
        assert "reload failed, still running model tiny_uint8" in line, line
        time.sleep(0.5)
        assert len(_results_after(tmp_path, before)) >= 5, "results stopped after the reload"
    assert "Traceback" not in daemon.log() and "Fatal Python error" not in daemon.log()
    code, _ = daemon.stop()
    assert code == 0, daemon.log()


@pytest.mark.parametrize("name", ["crashes-runtime", "invoke-fails"])
def test_starting_on_a_model_that_breaks_the_runtime_exits_78(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]], name: str
) -> None:
    config = write_config(tmp_path, model=write_mutation(tmp_path, name))
    result = cli("run", "--config", str(config), env={"PI_DAEMON_LOG_TARGET": "stderr"})
    assert_one_line_error(result, EX_CONFIG, f"{name}.tflite: the interpreter")


def _reload_tiny_to_bundled(
    tmp_path: Path,
    notify_socket: NotifySocket,
    start_daemon: Callable[..., DaemonProcess],
    photo: Path,
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> tuple[list[str], str]:
    """Run on the 32x32 tiny model, SIGHUP to the 224x224 bundled one; return the top-3 of
    every result after the reload and what `pi-daemon classify` says for the photo."""
    config = write_config(tmp_path, images=[photo], fps=20)
    daemon = start_daemon(config, notify_env(notify_socket, 5.0))
    last = notify_socket.wait_for("READY", 30)
    config.write_text(
        config.read_text()
        .replace(f'path = "{TINY_MODEL}"', 'path = ""')
        .replace(f'labels = "{TINY_LABELS}"', 'labels = ""')
    )
    before = len(_results_after(tmp_path, 0))
    daemon.send(signal.SIGHUP)
    notify_socket.wait_for("READY", 30, after=last.received)
    daemon.wait_for_log("reloaded: model efficientnet-lite0", 5)
    time.sleep(1.0)
    code, _ = daemon.stop()
    assert code == 0, daemon.log()
    results = _results_after(tmp_path, 0)
    assert {r["top"][0]["label"] for r in results[:before]} <= {f"class_{i}" for i in range(10)}
    after = [r for r in results[before:] if not r["top"][0]["label"].startswith("class_")]
    assert len(after) >= 5, results[before:]
    direct = cli("classify", str(photo), "--top", "3")
    assert direct.returncode == 0, direct.stderr
    top3 = [", ".join(f"{p['label']} {p['score']:.3f}" for p in r["top"]) for r in after]
    return top3, direct.stdout.strip().split(": ", 1)[1]


def test_sighup_to_a_model_with_another_input_size_prepares_frames_for_it(
    tmp_path: Path,
    notify_socket: NotifySocket,
    start_daemon: Callable[..., DaemonProcess],
    photos: dict[str, Path],
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """32x32 -> 224x224: the capture thread must crop and resize for the new input, or the
    new model sees a 32x32 picture blown up (so the answer is checked against `classify`).
    A frame captured before the swap may have been prepared for the old input: none of
    those may be classified either (each such result would be a wrong answer)."""
    top3, expected = _reload_tiny_to_bundled(
        tmp_path, notify_socket, start_daemon, photos["coffee"], cli
    )
    assert top3 == [expected] * len(top3), (top3, expected)
