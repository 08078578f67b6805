"""MQTT's cost to the pipeline, and its delivery, measured with a real local mosquitto.

Three rounds of the real pipeline (the service's own sinks and MQTT delivery, built by
app.py's builders) alternate with bare rounds on the same interpreter:

* **live**: a mosquitto on a free loopback port (started here, stopped at the end) and a
  subscriber: the pipeline ratio, and the time from each result's frame to its arrival at
  the subscriber (p50, p95);
* **dead**: the same broker stopped (connection refused, reconnect backoff, the outbox
  filling): the pipeline ratio again: inference must not notice;
* **disk**: bytes this process wrote to storage per event (`/proc/self/io` write_bytes)
  while the broker was dead (the outbox keeps every event) and while it was live (events
  acknowledged before the outbox's batched write never reach the disk).

Skipped, with the reason, where mosquitto or paho-mqtt is not installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon.bench.pipeline import bench_config, measure_pipeline, preload_real_input
from pi_daemon.bench.timing import bare_invoke, percentiles_ms, spread, write_bytes
from pi_daemon.config import Config, replace

ROUNDS = 3
DEVICE = "bench"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Broker:
    """A throwaway mosquitto on loopback (anonymous, no persistence) and a subscriber."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.arrivals: list[tuple[float, float]] = []  # (event time, arrival time)
        self._lock = threading.Lock()  # protects arrivals (the subscriber's thread appends)
        self._client: Any = None

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [mosquitto, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def subscribe(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
        ready = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(f"pi-daemon/{DEVICE}/events", 1)
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the bench subscriber could not subscribe")
        self._client = client

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        arrived = time.time()
        try:
            event = json.loads(message.payload)
        except ValueError:
            return
        if event.get("type") == "result":
            with self._lock:
                self.arrivals.append((float(event["time"]), arrived))

    def latencies(self) -> np.ndarray:
        with self._lock:
            return np.array([arrived - made for made, arrived in self.arrivals], np.float64)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.stop()


def _unavailable() -> str:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return "mosquitto is not installed (apt install mosquitto)"
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return "paho-mqtt is not installed (pip install 'pi-daemon[mqtt]')"
    return ""


def measure_mqtt(
    config: Config, base_dir: Path | None, classifier: Any, replay: list[Path], frames: int
) -> dict[str, Any]:
    """The MQTT figures (see the module docstring), or status "skipped" with a reason."""
    reason = _unavailable()
    if reason:
        return {"status": "skipped", "reason": reason}
    with tempfile.TemporaryDirectory(prefix="pi-daemon-bench-mqtt-") as tmp:
        workdir = Path(tmp)
        broker = _Broker(workdir)
        broker.start()
        try:
            broker.subscribe()
            return _rounds(config, base_dir, classifier, replay, frames, workdir, broker)
        finally:
            broker.close()


def _rounds(
    config: Config,
    base_dir: Path | None,
    classifier: Any,
    replay: list[Path],
    frames: int,
    workdir: Path,
    broker: _Broker,
) -> dict[str, Any]:
    mqtt = replace(
        config.mqtt,
        enabled=True,
        host="127.0.0.1",
        port=broker.port,
        username="",
        password_file="",
        tls=False,
        device_id=DEVICE,
        discovery=False,
        commands=False,
    )
    # No events file here: the disk bytes are the outbox's alone.
    base = bench_config(config, replay, workdir / "events.jsonl")
    mqtt_config = replace(base, mqtt=mqtt, output=replace(base.output, events_file=""))
    figures: dict[str, Any] = {"status": "ok", "threads": config.model.num_threads}
    for phase in ("live", "dead"):
        if phase == "dead":
            broker.stop()
        ratios, events, written = [], 0, 0
        bares = []
        for round_number in range(ROUNDS):
            preload_real_input(classifier)
            bares.append(bare_invoke(classifier.interpreter, frames, None))
            state = workdir / f"state-{phase}-{round_number}"
            state.mkdir()
            before = write_bytes()
            run = measure_pipeline(mqtt_config, base_dir, classifier, frames, None, state)
            written += write_bytes() - before
            events += run.events
            ratios.append(run.fps / bares[-1].fps)
        ratio = spread(ratios)
        figures[phase] = {
            "ratio": ratio["median"],
            "ratio_spread": [ratio["q1"], ratio["q3"]],
            "ratio_rounds": [round(r, 3) for r in ratios],
            "disk_bytes_per_event": round(written / max(1, events), 1),
            "events": events,
        }
        if phase == "live":
            time.sleep(0.5)  # the last acknowledgements
            latency = broker.latencies()
            figures["live"]["latency_ms"] = percentiles_ms(latency)
            figures["live"]["delivered_results"] = int(latency.size)
    figures["meets_target"] = min(figures["live"]["ratio"], figures["dead"]["ratio"]) >= 0.95
    return figures
