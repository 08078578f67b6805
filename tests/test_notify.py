"""sd_notify against a real AF_UNIX datagram socket, and the real daemon talking to it.

The socket plays systemd's part: bound in a temp dir (or the abstract namespace) and named
by NOTIFY_SOCKET, with WATCHDOG_USEC set, exactly as systemd starts a Type=notify service.
The daemon runs as a real `python -m pi_daemon run` process on the files source with the
tiny test model. Also home to the helpers test_signals.py and test_journald.py share.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pi_daemon.notify import SystemdNotifier, monotonic_usec, socket_address, watchdog_interval_s
from tests.conftest import REPO, TEST_MODELS, write_sensor_files

TINY_MODEL = TEST_MODELS / "tiny_uint8.tflite"
TINY_INT8_MODEL = TEST_MODELS / "tiny_int8.tflite"
TINY_LABELS = TEST_MODELS / "tiny_labels.txt"
RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR; the tiny model says class_0 and class_2


# -- helpers shared with test_signals.py and test_journald.py -----------------------------


def solid_image(folder: Path, name: str, bgr: tuple[int, int, int]) -> Path:
    path = folder / f"{name}.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), bgr, np.uint8))
    return path


def write_config(
    folder: Path,
    *,
    images: list[Path] | None = None,
    fps: float = 20.0,
    model: Path = TINY_MODEL,
    extra: str = "",
    name: str = "config.toml",
) -> Path:
    """A files-source config on the tiny model, with a JSONL events file beside it.

    The sensors read files in `folder` (a cool, roomy board) unless `extra` has its own
    `[sensors]`: this machine's load must not throttle the daemon under test.
    """
    images = images or [solid_image(folder, "red", RED)]
    paths = ", ".join(json.dumps(str(p)) for p in images)
    if "[sensors]" not in extra:
        extra = f"{extra}\n{write_sensor_files(folder)}"
    path = folder / name
    path.write_text(
        f"""source = "files"
[model]
path = "{model}"
labels = "{TINY_LABELS}"
[files]
paths = [{paths}]
fps = {fps}
[output]
events_file = "{folder / "events.jsonl"}"
summary_interval_s = 1
{extra}"""
    )
    return path


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass(frozen=True)
class Notification:
    received: float  # time.monotonic() in this process (CLOCK_MONOTONIC, as the daemon's)
    fields: dict[str, str]


class NotifySocket:
    """systemd's end of sd_notify: collects every datagram with the time it arrived."""

    def __init__(self, address: Path | str) -> None:
        self.name = str(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = socket_address(self.name)
        assert bind_to is not None
        self._sock.bind(bind_to)
        self._sock.settimeout(0.1)
        # Protects messages: appended by the reader thread, read by the test.
        self._lock = threading.Lock()
        self.messages: list[Notification] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self.messages.append(Notification(time.monotonic(), fields))

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str) -> list[Notification]:
        return [m for m in self.snapshot() if key in m.fields]

    def wait_for(self, key: str, timeout: float, after: float = 0.0) -> Notification:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.with_key(key):
                if message.received > after:
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {key} within {timeout} s; got {self.snapshot()}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1)
        self._sock.close()


class DaemonProcess:
    """`python -m pi_daemon run --config ...` as a real child process."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str],
        prefix: list[str] | None = None,
        entry: list[str] | None = None,
    ):
        """`entry` replaces `-m pi_daemon`, e.g. a script that wraps the real CLI."""
        self.log_path = config.parent / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        full_env = {**os.environ, **env}
        for key in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "INVOCATION_ID",
            "PI_DAEMON_LOG_TARGET",
        ):
            if key not in env:
                full_env.pop(key, None)
        full_env.setdefault("PI_DAEMON_LOG_TARGET", "stderr")
        self.proc = subprocess.Popen(
            [
                *(prefix or []),
                sys.executable,
                *(entry or ["-m", "pi_daemon"]),
                "run",
                "--config",
                str(config),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, fragment: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fragment in self.log():
                return
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"{fragment!r} not logged within {timeout} s:\n{self.log()}")

    def send(self, signum: int) -> float:
        sent = time.monotonic()
        self.proc.send_signal(signum)
        return sent

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the exit took."""
        sent = self.send(signal.SIGTERM)
        code = self.wait(timeout)
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


# Fixtures under a name other than the function's, so other modules can import them
# (`from tests.test_notify import start_daemon_fixture`) without shadowing warnings.
@pytest.fixture(name="start_daemon")
def start_daemon_fixture() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None, **kwargs: Any) -> DaemonProcess:
        daemon = DaemonProcess(config, env or {}, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture(name="notify_socket")
def notify_socket_fixture(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def notify_env(listener: NotifySocket, watchdog_s: float = 1.0) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}


# -- SystemdNotifier on its own ------------------------------------------------------------


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier(env={"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.ping_every_s is None
    assert notifier.send(READY=1) is False
    notifier.ready("x")
    notifier.progress(1.0)
    notifier.reloading()
    notifier.stopping()


def test_abstract_socket_and_watchdog_rate_limit() -> None:
    listener = NotifySocket(f"@pi-daemon-test-{uuid.uuid4().hex}")
    try:
        notifier = SystemdNotifier(env={"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_s == 2.0 and notifier.ping_every_s == 1.0
        for now in (10.0, 10.5, 10.99, 11.0, 11.5, 12.0, 12.2):
            notifier.progress(now)
        time.sleep(0.2)
        assert len(listener.with_key("WATCHDOG")) == 3  # at 10.0, 11.0 and 12.0
        notifier.close()
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
        # str.isdigit() says yes to these; int() refuses "²" and reads "٣" as 3.
        ({"WATCHDOG_USEC": "²"}, None),
        ({"WATCHDOG_USEC": "٣٠٠٠٠٠٠٠"}, None),
        ({"WATCHDOG_USEC": " 30000000"}, None),
        ({"WATCHDOG_USEC": "-30000000"}, None),
        ({"WATCHDOG_USEC": "3e7"}, None),
        ({"WATCHDOG_USEC": "9" * 30}, None),
        ({"WATCHDOG_USEC": "\udcff"}, None),  # a byte that is not UTF-8
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "¹"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": f"{os.getpid()}\udcff"}, None),
    ],
)
def test_watchdog_interval_honours_watchdog_pid(env: dict[str, str], expected: float | None):
    assert watchdog_interval_s(env) == expected


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", b"/run/systemd/notify"),
        ("@name", b"\0name"),
        ("@\udcff\udcfe", b"\0\xff\xfe"),  # bytes that are not UTF-8 (os.environ's form)
        ("/tmp/caf\udce9.sock", b"/tmp/caf\xe9.sock"),
        ("vsock:2:1234", None),
        ("relative.sock", None),
    ],
)
def test_notify_socket_address_is_the_variables_own_bytes(
    value: str, address: bytes | None
) -> None:
    assert socket_address(value) == address


def test_a_daemon_with_odd_environment_values_runs(tmp_path: Path) -> None:
    """NOTIFY_SOCKET naming a socket by bytes that are not UTF-8, WATCHDOG_USEC="²",
    JOURNAL_STREAM="²:³", PI_DAEMON_LOG_TARGET=journald: no traceback, READY still sent,
    one warning per odd value."""
    raw = os.fsencode(tmp_path) + b"/n\xe9otify.sock"  # e-acute in Latin-1: not UTF-8
    listener = NotifySocket(os.fsdecode(raw))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "WATCHDOG"))},
        "WATCHDOG_USEC": "²",
        "JOURNAL_STREAM": "²:³",
        "PI_DAEMON_LOG_TARGET": "journald",
    }
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    envb[b"NOTIFY_SOCKET"] = raw
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pi_daemon",
                "run",
                "--config",
                str(write_config(tmp_path)),
                "--max-frames",
                "5",
            ],
            env=envb,  # type: ignore[arg-type]  # bytes environments are allowed on POSIX
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        ready = listener.wait_for("READY", 5)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr
    assert "WATCHDOG_USEC='\\xb2' is not a number of microseconds" in done.stderr
    assert "PI_DAEMON_LOG_TARGET='journald' is neither journal nor stderr" in done.stderr
    assert "last: class_0" in ready.fields["STATUS"]


def test_send_failure_is_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="pi_daemon.notify"):
        for _ in range(5):
            assert notifier.send(WATCHDOG=1) is False
        notifier.ready("x")
        notifier.stopping()
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def test_status_is_one_short_line(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": notify_socket.name})
    notifier.status("two\nlines  " + "x" * 500)
    status = notify_socket.wait_for("STATUS", 2).fields["STATUS"]
    assert "\n" not in status and status.startswith("two lines x") and len(status) <= 200
    notifier.stopping()
    notifier.status("after stop")  # must not paint over "stopping"
    time.sleep(0.2)
    assert notify_socket.snapshot()[-1].fields == {"STOPPING": "1", "STATUS": "stopping"}


# -- the real daemon ------------------------------------------------------------------------


def expected_pings(frame_times: list[float], ping_every_s: float) -> list[float]:
    """When the daemon's rule says it pings: at a classified frame, if at least ping_every_s
    (half of WATCHDOG_USEC) has passed since the previous ping, on the daemon's own clock."""
    pings: list[float] = []
    for t in frame_times:
        if not pings or t - pings[-1] >= ping_every_s:
            pings.append(t)
    return pings


def test_ready_after_first_result_then_watchdog_at_half_the_interval(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    watchdog_s = 1.2
    daemon = start_daemon(write_config(tmp_path, fps=20), notify_env(notify_socket, watchdog_s))
    ready = notify_socket.wait_for("READY", 30)
    time.sleep(3.0)
    code, took = daemon.stop()
    assert code == 0, daemon.log()
    assert took < 5
    time.sleep(0.3)  # the reader thread has taken every datagram

    messages = notify_socket.snapshot()
    # Before READY: only status lines, no watchdog pings (nothing has been classified yet).
    before = [m for m in messages if m.received < ready.received]
    assert all(set(m.fields) == {"STATUS"} for m in before), before
    assert any("loading model" in m.fields["STATUS"] for m in before)
    assert "fps" in ready.fields["STATUS"] and "last: class_0" in ready.fields["STATUS"]
    assert len(notify_socket.with_key("READY")) == 1
    # READY=1 came after the first frame was classified (the result's CLOCK_MONOTONIC).
    results = [e for e in read_events(tmp_path) if e["type"] == "result"]
    assert results[0]["monotonic"] <= ready.received

    # The daemon's own timestamps (each result's monotonic, the `now` it pings with) say
    # exactly which frames must have pinged: as many pings as the rule predicts, each
    # received after (never before) its frame. No bound depends on this host's scheduler.
    frame_times = [r["monotonic"] for r in results]
    predicted = expected_pings(frame_times, watchdog_s / 2)
    pings = [m.received for m in notify_socket.with_key("WATCHDOG")]
    assert len(predicted) >= 5, predicted
    assert len(pings) == len(predicted), (pings, predicted)
    lags = [got - sent for got, sent in zip(pings, predicted, strict=True)]
    assert all(0 <= lag < 1.0 for lag in lags), lags
    # Pinging at every frame (or at a quarter of the interval) would be many more pings;
    # pinging at the full interval far fewer: both fail the count above.
    assert len(expected_pings(frame_times, watchdog_s / 4)) > len(predicted)
    assert len(expected_pings(frame_times, watchdog_s)) < len(predicted)

    last = messages[-1]
    assert last.fields.get("STOPPING") == "1", messages[-3:]


def test_watchdog_pings_continue_while_paced_and_while_paused(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """A deliberate slow-down is progress: an under-voltage pace (one frame per 6 s, longer
    than the watchdog timeout) and a critical-temperature pause must both keep the pings
    coming at least once per watchdog timeout, or systemd would kill a healthy daemon.
    While paced or paused the loop wakes every pause_poll_s (1 s) and pings when half the
    timeout (2 s) has passed: gaps of about 2 s against the 4 s timeout."""
    watchdog_s = 4.0
    sensors = write_sensor_files(tmp_path) + "poll_interval_s = 0.1\n"
    config = write_config(
        tmp_path, fps=20, extra=f"[throttle]\nflags_min_interval_s = 6.0\n{sensors}"
    )
    daemon = start_daemon(config, notify_env(notify_socket, watchdog_s))
    notify_socket.wait_for("READY", 30)

    write_sensor_files(tmp_path, undervoltage=True)
    daemon.wait_for_log("throttle normal -> hot: under-voltage alarm", 10)
    paced_from = time.monotonic()
    time.sleep(8.0)
    write_sensor_files(tmp_path, undervoltage=True, temp_c=80.0)
    daemon.wait_for_log("-> critical", 10)
    paused_from = time.monotonic()
    time.sleep(5.0)
    paused_until = time.monotonic()
    code, _ = daemon.stop()
    assert code == 0, daemon.log()

    frames = [e["monotonic"] for e in read_events(tmp_path) if e["type"] == "result"]
    paced = [t for t in frames if paced_from < t < paused_from]
    # Paced: one frame per flags_min_interval_s (on the daemon's clock), not 20 fps.
    assert 1 <= len(paced) <= 3, paced
    assert all(b - a >= 5.99 for a, b in itertools.pairwise(paced)), paced
    # Paused: no frame at all (one already in the interpreter may finish just after).
    assert not [t for t in frames if paused_from + 0.3 < t < paused_until], frames

    pings = [m.received for m in notify_socket.with_key("WATCHDOG")]
    window = [t for t in pings if paced_from - watchdog_s < t < paused_until]
    assert window and window[0] < paced_from, "no ping before the slow-down began"
    gaps = [b - a for a, b in itertools.pairwise([*window, paused_until])]
    assert max(gaps) < watchdog_s, (gaps, window)
    assert len([t for t in window if t > paused_from]) >= 2, window  # pings while paused


def test_no_ready_and_no_pings_while_the_first_invoke_hangs(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    config = write_config(tmp_path, extra='[testing]\nfault = "hang-invoke"\n')
    env = {**notify_env(notify_socket, 1.0), "PI_DAEMON_ALLOW_FAULTS": "1"}
    daemon = start_daemon(config, env)
    daemon.wait_for_log("inference hangs now", 30)
    time.sleep(2.5)
    assert not notify_socket.with_key("READY")
    assert not notify_socket.with_key("WATCHDOG")
    assert "waiting for the first frame" in notify_socket.with_key("STATUS")[-1].fields["STATUS"]
    # The hang waits on the stop event, so SIGTERM still ends it cleanly.
    code, took = daemon.stop()
    assert (code, took < 5) == (0, True), daemon.log()
    assert notify_socket.with_key("STOPPING")


@pytest.mark.parametrize("fault", ["hang-invoke", "hang-capture"])
def test_watchdog_pings_stop_when_the_loop_is_stuck(
    fault: str,
    tmp_path: Path,
    notify_socket: NotifySocket,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    frames_before = 12
    config = write_config(
        tmp_path,
        fps=20,
        extra=f'[testing]\nfault = "{fault}"\nfault_after_frames = {frames_before}\n'
        # A stalled capture is reported every 0.5 s but never gives up during the test.
        "[capture]\nstall_timeout_s = 0.5\nmax_consecutive_failures = 1000\n",
    )
    env = {**notify_env(notify_socket, 1.0), "PI_DAEMON_ALLOW_FAULTS": "1"}
    daemon = start_daemon(config, env)
    notify_socket.wait_for("READY", 30)
    daemon.wait_for_log("hangs now", 10)
    time.sleep(3.0)  # three watchdog timeouts
    stuck_until = time.monotonic()
    pings = [m.received for m in notify_socket.with_key("WATCHDOG")]
    assert pings, "the daemon never pinged before the fault"
    # Silence for the whole window: systemd would have fired the watchdog (at 1 s).
    assert stuck_until - pings[-1] > 2.5, (pings, stuck_until)
    results = [e for e in read_events(tmp_path) if e["type"] == "result"]
    if fault == "hang-capture":
        # The loop is alive (it reports the stall) but does not pretend to make progress.
        assert daemon.log().count("no frame from") >= 3, daemon.log()
        assert len(results) <= frames_before
    code, took = daemon.stop()
    assert code == 0, daemon.log()
    assert took < 5, took
    assert notify_socket.with_key("STOPPING")
    if fault == "hang-invoke":
        # The hung frame is finished once stop releases it; nothing else was classified.
        results = [e for e in read_events(tmp_path) if e["type"] == "result"]
        assert frames_before <= len(results) <= frames_before + 1


def test_reload_sends_reloading_with_monotonic_usec_then_ready(
    tmp_path: Path, notify_socket: NotifySocket, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(write_config(tmp_path), notify_env(notify_socket, 5.0))
    first_ready = notify_socket.wait_for("READY", 30)
    sent = daemon.send(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING", 10, after=first_ready.received)
    ready = notify_socket.wait_for("READY", 10, after=reloading.received)
    stamp = int(reloading.fields["MONOTONIC_USEC"])
    # MONOTONIC_USEC is CLOCK_MONOTONIC when the reload started: after SIGHUP, before receipt.
    assert sent * 1e6 - 1e4 <= stamp <= reloading.received * 1e6 + 1e4
    assert stamp <= monotonic_usec()
    assert "fps" in ready.fields["STATUS"]
    daemon.wait_for_log("reloaded: model tiny_uint8", 5)
    code, _ = daemon.stop()
    assert code == 0, daemon.log()
