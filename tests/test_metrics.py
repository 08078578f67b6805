"""The Prometheus endpoint, scraped over real HTTP from a real `pi-daemon run` process."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pi_daemon.config import Config
from tests.conftest import assert_one_line_error

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

EXPECTED_FAMILIES = {
    "pi_daemon_inference_latency_seconds": "histogram",
    "pi_daemon_frames_processed": "counter",
    "pi_daemon_frames_dropped": "counter",
    "pi_daemon_sink_events_dropped": "counter",
    "pi_daemon_fps": "gauge",
    "pi_daemon_soc_temperature_celsius": "gauge",
    "pi_daemon_throttle_state": "gauge",  # a StateSet reads back as a gauge per state
    "pi_daemon_paused": "gauge",
    "pi_daemon_swap_used_bytes": "gauge",
    "pi_daemon_resident_memory_bytes": "gauge",
    "pi_daemon_memory_available_bytes": "gauge",
    "pi_daemon_model_info": "gauge",  # an Info is a gauge = 1 in the Prometheus text format
    "pi_daemon_top1_label": "counter",
    "pi_daemon_uptime_seconds": "gauge",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int, timeout: float = 30.0) -> dict[str, object]:
    """GET /metrics until it answers; the parsed families by name."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain")
                text = reply.read().decode()
            return {f.name: f for f in text_string_to_metric_families(text)}
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def value(
    families: dict[str, object], name: str, sample: str | None = None, **labels: str
) -> float:
    family = families[name]
    for s in family.samples:  # type: ignore[attr-defined]
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError((name, sample, labels))


@pytest.fixture
def colour_images(tmp_path: Path) -> list[Path]:
    """Solid red, green and blue: the tiny model calls them class_0, class_1, class_2."""
    paths = []
    for name, bgr in (("red", (0, 0, 255)), ("green", (0, 255, 0)), ("blue", (255, 0, 0))):
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), np.full((48, 64, 3), bgr, np.uint8))
        paths.append(path)
    return paths


@pytest.fixture
def daemon_with_metrics(
    tiny_model: Path, tiny_labels: Path, colour_images: list[Path], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    paths = ", ".join(f'"{p}"' for p in colour_images)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""source = "files"
[model]
path = "{tiny_model}"
labels = "{tiny_labels}"
num_threads = 1
[files]
paths = [{paths}]
fps = 100.0
[throttle]
enabled = false
[output]
log_level = "warning"
[metrics]
enabled = true
port = {port}
"""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pi_daemon", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PI_DAEMON_LOG_TARGET": "stderr"},
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_metrics_exist_and_move(
    daemon_with_metrics: tuple[subprocess.Popen[str], int], tiny_model: Path
) -> None:
    process, port = daemon_with_metrics
    first = scrape(port)
    # The fps gauge is set once its first window (FPS_WINDOW_S) has passed.
    deadline = time.monotonic() + 20
    while True:
        time.sleep(0.5)
        second = scrape(port)
        if value(second, "pi_daemon_fps") > 0 or time.monotonic() > deadline:
            break

    for name, kind in EXPECTED_FAMILIES.items():
        assert name in second, f"{name} missing; have {sorted(second)}"
        assert second[name].type == kind, (name, second[name].type)  # type: ignore[attr-defined]

    frames = "pi_daemon_frames_processed"
    assert value(second, frames, frames + "_total") > value(first, frames, frames + "_total")
    latency_count = "pi_daemon_inference_latency_seconds_count"
    assert value(second, "pi_daemon_inference_latency_seconds", latency_count) > 0
    assert value(second, "pi_daemon_uptime_seconds") > value(first, "pi_daemon_uptime_seconds")
    assert value(second, "pi_daemon_resident_memory_bytes") > 10 * 1024 * 1024
    assert value(second, "pi_daemon_swap_used_bytes") >= 0
    assert value(second, "pi_daemon_throttle_state", pi_daemon_throttle_state="normal") == 1
    assert value(second, "pi_daemon_paused") == 0
    # A paced replay is "live" (newest frame wins), so a hiccup may drop a frame or two.
    assert value(second, "pi_daemon_frames_dropped", "pi_daemon_frames_dropped_total") >= 0

    # Each colour's class was counted, and the counts move between scrapes.
    label_total = "pi_daemon_top1_label_total"
    for label in ("class_0", "class_1", "class_2"):
        assert value(second, "pi_daemon_top1_label", label_total, label=label) > 0
    before = first["pi_daemon_top1_label"].samples  # type: ignore[attr-defined]
    # The first scrape may come before the first red frame: no sample counts as 0.
    counted = [x.value for x in before if x.name == label_total and x.labels["label"] == "class_0"]
    assert value(second, "pi_daemon_top1_label", label_total, label="class_0") > sum(counted)

    # Paced at 100 fps: the gauge is near that once a window has passed.
    assert 20 < value(second, "pi_daemon_fps") < 200

    sha256 = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert value(second, "pi_daemon_model_info", sha256=sha256) == 1
    labels = second["pi_daemon_model_info"].samples[0].labels  # type: ignore[attr-defined]
    assert labels["name"] == "tiny_uint8" and labels["backend"] in ("litert", "tflite-runtime")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_metrics_are_off_and_local_by_default() -> None:
    section = Config().metrics
    assert section.enabled is False
    assert section.address == "127.0.0.1"
    assert section.port == 9110


def test_port_in_use_is_a_config_error(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    write_config: Callable[[str], Path],
    tiny_model: Path,
    tiny_labels: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            f'source = "files"\n[model]\npath = "{tiny_model}"\nlabels = "{tiny_labels}"\n'
            f"[metrics]\nenabled = true\nport = {port}\n"
        )
        result = cli("run", "--config", str(config), "--max-frames", "1")
    assert_one_line_error(result, 78, "metrics", f"127.0.0.1:{port}", "in use")
