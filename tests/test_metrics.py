"""The Prometheus endpoint, scraped over real HTTP from a real `pi-daemon run` process."""

from __future__ import annotations

import hashlib
import os
import re
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
from tests.conftest import assert_one_line_error, write_sensor_files

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


# What the daemon's sensors read (files, the hardware edge): a warm board (70 <= t < 78 °C,
# under the 76 °C setpoint, so warm without pacing), and half the swap in use.
SENSORS = {
    "temp_c": 72.5,
    "available_kb": 1_500_000,
    "swap_total_kb": 102_400,
    "swap_free_kb": 51_200,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int, timeout: float = 30.0) -> dict[str, object]:
    """GET /metrics until it answers with the daemon's own counters (the endpoint is bound
    before the daemon loop exists, so an early scrape may have only the sink's metrics);
    the parsed families by name."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain")
                text = reply.read().decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            if "pi_daemon_frames_processed" in families or time.monotonic() > deadline:
                return families
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
[output]
log_level = "warning"
[metrics]
enabled = true
port = {port}
{write_sensor_files(tmp_path, **SENSORS)}
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
    latency_count = value(
        second, "pi_daemon_inference_latency_seconds", "pi_daemon_inference_latency_seconds_count"
    )
    counted_labels = sum(
        s.value
        for s in second["pi_daemon_top1_label"].samples  # type: ignore[attr-defined]
        if s.name == "pi_daemon_top1_label_total"
    )
    # One latency sample and one label count per result; the loop counts a frame before
    # the sink thread sees it, and a scrape may fall between the two sink updates.
    assert latency_count > 0
    assert value(second, frames, frames + "_total") >= latency_count
    assert abs(counted_labels - latency_count) <= 1, (counted_labels, latency_count)
    assert value(second, "pi_daemon_uptime_seconds") > value(first, "pi_daemon_uptime_seconds")
    assert value(second, "pi_daemon_resident_memory_bytes") > 10 * 1024 * 1024
    # The governor's readings of the sensor files, exactly.
    assert value(second, "pi_daemon_soc_temperature_celsius") == 72.5
    assert value(second, "pi_daemon_memory_available_bytes") == 1_500_000 * 1024
    assert value(second, "pi_daemon_swap_used_bytes") == (102_400 - 51_200) * 1024
    assert value(second, "pi_daemon_undervoltage") == 0
    states = {"normal": 0, "warm": 1, "hot": 0, "critical": 0}
    for state, expected in states.items():
        assert (
            value(second, "pi_daemon_throttle_state", pi_daemon_throttle_state=state) == expected
        ), state
    assert value(second, "pi_daemon_paused") == 0
    assert (
        value(second, "pi_daemon_sink_events_dropped", "pi_daemon_sink_events_dropped_total") == 0
    )

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


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 9110, "127.0.0.1:9110"),
        ("::1", 9110, "[::1]:9110"),
        ("::", 0, "[::]:0"),
        ("fe80::1%eth0", 80, "[fe80::1%eth0]:80"),
        ("pi.local", 9110, "pi.local:9110"),
    ],
)
def test_addresses_are_written_as_in_a_url(host: str, port: int, text: str) -> None:
    from pi_daemon.endpoint import format_url, host_port

    assert host_port(host, port) == text
    assert format_url(host, port, tls=False) == f"http://{text}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="SKIPPED LOUDLY: no IPv6 loopback here")
def test_an_ipv6_endpoint_is_logged_and_refused_with_brackets(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    write_config: Callable[[str], Path],
    tiny_model: Path,
    tiny_labels: Path,
) -> None:
    from pi_daemon.endpoint import Endpoint
    from pi_daemon.errors import ConfigError
    from pi_daemon.metrics import Metrics

    def healthy() -> tuple[int, dict[str, object]]:
        return 200, {"status": "ok"}

    metrics = Metrics()
    endpoint = Endpoint("::1", 0, metrics.exposition, healthy)
    try:
        host, port = endpoint.address
        assert host == "::1"
        assert endpoint.url == f"http://[::1]:{port}"
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
        with pytest.raises(ConfigError, match=rf"cannot listen on http://\[::1\]:{port}: "):
            Endpoint("::1", port, Metrics().exposition, healthy)
    finally:
        endpoint.close()

    # The running daemon logs where it serves, the IPv6 address in brackets.
    config = write_config(
        f'source = "files"\n[model]\npath = "{tiny_model}"\nlabels = "{tiny_labels}"\n'
        '[metrics]\nenabled = true\naddress = "::1"\nport = 0\n'
    )
    result = cli("run", "--config", str(config), "--max-frames", "3")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"serving /metrics and /healthz on http://\[::1\]:[1-9]\d*\n", result.stderr
    ), result.stderr


def test_collector_reports_the_daemons_own_figures(tiny_model: Path, tiny_labels: Path) -> None:
    """Every family the collector builds, from a real Daemon whose counters and latest
    decision are set to known values (paused at critical, under-voltage, 5 MiB free)."""
    from pi_daemon.classifier import Classifier
    from pi_daemon.control import Decision
    from pi_daemon.daemon import Daemon, LoopSettings
    from pi_daemon.metrics import StatusCollector
    from pi_daemon.model import load_model
    from pi_daemon.readings import Readings
    from pi_daemon.sinks.base import SinkDispatcher
    from pi_daemon.sources.files import FilesSource

    classifier = Classifier(load_model(tiny_model, labels=str(tiny_labels), num_threads=1))
    dispatcher = SinkDispatcher([])
    daemon = Daemon(classifier, FilesSource([]), dispatcher, LoopSettings())
    try:
        daemon.counters.frames = 42
        daemon.counters.skipped = 11
        daemon.slot.dropped = 7
        dispatcher.dropped_events = 3
        daemon.counters.last_decision = Decision(
            state="critical",
            pause=True,
            readings=Readings(
                cpu_temp_c=79.5,
                swap_used_bytes=1234,
                swap_in_per_s=12.5,
                mem_available_bytes=5 << 20,
                rss_bytes=96 << 20,
                undervoltage=True,
                throttled_flags=0x50005,
            ),
        )
        daemon.started = time.monotonic() - 30
        families = {f.name: f for f in StatusCollector(daemon.status).collect()}
    finally:
        dispatcher.close()

    def single(name: str, sample: str | None = None) -> float:
        samples = [s for s in families[name].samples if s.name == (sample or name)]
        assert len(samples) == 1, (name, families[name].samples)
        return samples[0].value

    assert single("pi_daemon_frames_processed", "pi_daemon_frames_processed_total") == 42
    assert single("pi_daemon_frames_skipped", "pi_daemon_frames_skipped_total") == 11
    assert single("pi_daemon_frames_dropped", "pi_daemon_frames_dropped_total") == 7
    assert single("pi_daemon_sink_events_dropped", "pi_daemon_sink_events_dropped_total") == 3
    assert 30 <= single("pi_daemon_uptime_seconds") < 60
    assert single("pi_daemon_paused") == 1
    assert single("pi_daemon_soc_temperature_celsius") == 79.5
    assert single("pi_daemon_swap_used_bytes") == 1234
    assert single("pi_daemon_swap_in_pages_per_second") == 12.5
    assert single("pi_daemon_memory_available_bytes") == 5 << 20
    assert single("pi_daemon_resident_memory_bytes") == 96 << 20
    assert single("pi_daemon_undervoltage") == 1
    assert single("pi_daemon_throttled_flags") == 0x50005
    states = {
        s.labels["pi_daemon_throttle_state"]: s.value
        for s in families["pi_daemon_throttle_state"].samples
    }
    assert states == {"normal": 0, "warm": 0, "hot": 0, "critical": 1}
    info = families["pi_daemon_model"].samples[0].labels
    assert info["name"] == "tiny_uint8" and info["sha256"] == classifier.model.sha256
    loaded = classifier.model.loaded
    assert (info["backend"], info["backend_version"]) == (loaded.backend, loaded.version)
