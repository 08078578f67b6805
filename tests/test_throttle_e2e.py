"""Throttling end to end: the real `pi-daemon run` process, sensor files rewritten under it.

The child is the real CLI (`pi_daemon.cli.main`) with one extra logging handler that
prints each structured record's journal fields as a JSON line on stdout, so the test
checks exactly the fields journald would get (PI_DAEMON_EVENT, THROTTLE_STATE, ...).
The SoC temperature and /proc/meminfo are temp files the test rewrites while the
daemon runs; the JSONL events file shows that frames stop while paused.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUNDLED_MODEL, REPO, TEST_MODELS

# The child: the real CLI plus a handler that reports journal fields on stdout.
CHILD = r"""
import json, logging, sys, time
from pi_daemon.cli import main

class Fields(logging.Handler):
    def emit(self, record):
        event = getattr(record, "PI_DAEMON_EVENT", None)
        if event is None:
            return
        fields = {k: v for k, v in vars(record).items() if k.isupper()}
        fields.update(level=record.levelname, monotonic=time.monotonic(),
                      message=record.getMessage())
        print(json.dumps(fields, default=str), flush=True)

logging.getLogger("pi_daemon").addHandler(Fields())
sys.exit(main(sys.argv[1:]))
"""

MEMINFO = "MemTotal: 3884096 kB\nMemAvailable: {kb} kB\nSwapTotal: 102396 kB\nSwapFree: {free} kB\n"
PLENTY_KB, SCARCE_KB = 2_000_000, 50 * 1024  # 50 MiB is under the 100 MiB floor


def model_section() -> str:
    # The bundled model when it has been built; the tiny test model otherwise.
    if BUNDLED_MODEL.exists():
        return "num_threads = 1\n"
    return (
        f'path = "{TEST_MODELS / "tiny_uint8.tflite"}"\n'
        f'labels = "{TEST_MODELS / "tiny_labels.txt"}"\nnum_threads = 1\n'
    )


def write_atomically(path: Path, text: str) -> None:
    """Like sysfs, the daemon must never see a half-written value."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


class Child:
    """The daemon process and a queue of the records it printed."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.records: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.records.put(json.loads(line))

    def wait_for(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                record = self.records.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(record)
            if record["PI_DAEMON_EVENT"] == event and all(
                record.get(k) == v for k, v in fields.items()
            ):
                return record
        raise AssertionError(
            f"no {event} {fields} within {timeout} s; exit code {self.process.poll()}; "
            f"seen {[(r['PI_DAEMON_EVENT'], r.get('THROTTLE_STATE')) for r in self.seen]}"
        )

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        stderr = self.process.stderr.read() if self.process.stderr else ""
        return code, stderr


@pytest.fixture
def sensor_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / name for name in ("temp", "meminfo", "vmstat")}
    write_atomically(files["temp"], "50000\n")
    write_atomically(files["meminfo"], MEMINFO.format(kb=PLENTY_KB, free=102396))
    write_atomically(files["vmstat"], "pswpin 0\npswpout 0\n")
    (tmp_path / "hwmon").mkdir()
    return files


def test_throttle_states_follow_the_sensor_files(
    tmp_path: Path, sensor_files: dict[str, Path]
) -> None:
    events = tmp_path / "events.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
source = "files"
[model]
{model_section()}
[files]
fps = 30.0
[output]
events_file = "{events}"
[sensors]
thermal_path = "{sensor_files["temp"]}"
hwmon_root = "{tmp_path / "hwmon"}"
vcgencmd_enabled = false
meminfo_path = "{sensor_files["meminfo"]}"
vmstat_path = "{sensor_files["vmstat"]}"
pressure_path = "{tmp_path / "no-psi"}"
poll_interval_s = 0.1
[throttle]
min_dwell_s = 0.3
label_smoothing_s = 0.0
"""
    )
    child = Child(config)
    try:
        child.wait_for("ready", timeout=30)

        write_atomically(sensor_files["temp"], "78500\n")
        hot = child.wait_for("throttle", THROTTLE_STATE="hot")
        assert hot["THROTTLE_PREVIOUS"] == "normal" and hot["level"] == "WARNING"
        assert hot["CPU_TEMP_C"] == 78.5 and hot["MIN_INTERVAL_MS"] > 0
        assert "temperature 78.5" in hot["THROTTLE_REASON"]

        write_atomically(sensor_files["temp"], "79500\n")
        critical = child.wait_for("throttle", THROTTLE_STATE="critical")
        assert critical["THROTTLE_PREVIOUS"] == "hot" and critical["level"] == "WARNING"
        time.sleep(1.0)  # paused: no frame may be classified meanwhile

        write_atomically(sensor_files["temp"], "50000\n")
        normal = child.wait_for("throttle", THROTTLE_STATE="normal")
        assert normal["THROTTLE_PREVIOUS"] == "critical" and normal["level"] == "INFO"
        assert normal["THROTTLE_REASON"] == "readings within limits"

        write_atomically(sensor_files["meminfo"], MEMINFO.format(kb=SCARCE_KB, free=102396))
        low = child.wait_for("throttle", THROTTLE_STATE="critical")
        assert "available memory 50 MiB" in low["THROTTLE_REASON"]
        write_atomically(sensor_files["meminfo"], MEMINFO.format(kb=PLENTY_KB, free=102396))
        resumed = child.wait_for("throttle", THROTTLE_STATE="normal")
        # Classification resumes: a result after the resume (bounded wait, not a fixed sleep).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            t > resumed["monotonic"] for t in result_times(events)
        ):
            time.sleep(0.1)
    finally:
        code, stderr = child.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr

    # Sensors the config points nowhere are reported once each, and not as warnings.
    missing = [r for r in child.seen if r["PI_DAEMON_EVENT"] == "sensor_unavailable"]
    assert sorted(r["SENSOR"] for r in missing) == ["memory_pressure", "undervoltage"]
    assert all(r["level"] == "INFO" for r in missing)

    results = result_times(events)
    # A frame already in the interpreter may finish just after the pause began.
    during_pause = [t for t in results if critical["monotonic"] + 0.3 < t < normal["monotonic"]]
    assert during_pause == []
    assert any(t < hot["monotonic"] for t in results)
    assert any(t > normal["monotonic"] for t in results)
    assert any(t > resumed["monotonic"] for t in results)


def result_times(events: Path) -> list[float]:
    """Monotonic times of the results in the events file (whole lines only)."""
    if not events.exists():
        return []
    return [
        record["monotonic"]
        for record in map(json.loads, events.read_text().splitlines())
        if record["type"] == "result"
    ]
