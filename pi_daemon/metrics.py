"""The optional Prometheus endpoint: what a fleet operator scrapes from every Pi.

Off by default; `[metrics] enabled = true` serves the text format on 127.0.0.1:9110 (the
HTTP listener is pi_daemon/endpoint.py, which also answers /healthz), with the metrics from
the official `prometheus-client` (imported lazily: the `metrics` extra). Everything lives
on a private CollectorRegistry, so nothing else in the process leaks into the scrape.

Nothing here costs the inference loop anything measurable:

* per-result metrics (latency histogram, top-1 label counts, fps) are updated by
  `MetricsSink` on the sink dispatcher's thread, never the loop's;
* everything the daemon already counts or reads (frames, drops, throttle state,
  temperature, swap, RSS, the model, MQTT delivery) is read from one `DaemonStatus`
  snapshot by a collector at scrape time, so it costs nothing between scrapes and is
  always the daemon's own figure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pi_daemon.errors import ConfigError
from pi_daemon.events import EventRecord
from pi_daemon.readings import Readings
from pi_daemon.results import Result, Summary
from pi_daemon.sinks.base import Sink
from pi_daemon.throttle import STATES

if TYPE_CHECKING:
    from pi_daemon.mqtt.status import DeliveryStatus
    from pi_daemon.status import DaemonStatus

log = logging.getLogger(__name__)

PREFIX = "pi_daemon"
# Lite0 int8 invokes in ~5 ms on x86 and ~50 ms on a Pi 4B; throttled or float models run
# slower. These buckets resolve 2-200 ms and still catch pathological seconds.
LATENCY_BUCKETS = (
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.5,
    1.0,
)
# How often the fps gauge is recomputed from the results seen since the last update.
FPS_WINDOW_S = 2.0


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "metrics.enabled = true, but prometheus-client is not installed "
            "(pip install 'pi-daemon[metrics]')"
        ) from None
    return prometheus_client


class MetricsSink(Sink):
    """Per-result metrics, updated on the dispatcher thread."""

    name = "metrics"

    def __init__(self, latency: Any, labels: Any, fps: Any) -> None:
        self._latency = latency
        self._labels = labels
        self._fps = fps
        # Only this (dispatcher) thread touches the fps window.
        self._window_start: float | None = None
        self._window_frames = 0

    def on_event(self, record: EventRecord) -> None:
        body = record.body
        if isinstance(body, Result):
            self._result(body)
        elif isinstance(body, Summary) and body.frames == 0:
            # A stalled, paused or gated loop sends no results: the summary brings fps down.
            self._fps.set(0.0)

    def _result(self, result: Result) -> None:
        self._latency.observe(result.times.invoke)
        self._labels.labels(label=result.top[0].label).inc()
        if self._window_start is None:
            self._window_start = result.monotonic
            return
        self._window_frames += 1
        elapsed = result.monotonic - self._window_start
        if elapsed >= FPS_WINDOW_S:
            self._fps.set(self._window_frames / elapsed)
            self._window_start, self._window_frames = result.monotonic, 0


class StatusCollector:
    """Reads one DaemonStatus snapshot when Prometheus scrapes."""

    def __init__(self, status: Callable[[], DaemonStatus]) -> None:
        self.status = status

    def describe(self) -> list[Any]:
        return []  # generated at scrape time; no registration-time collect()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
            StateSetMetricFamily,
        )

        status = self.status()
        for name, doc, value in (
            ("frames_processed", "Frames classified since the daemon started.", status.frames),
            (
                "frames_skipped",
                "Frames not classified because the scene had not changed (motion gate).",
                status.skipped_frames,
            ),
            (
                "frames_dropped",
                "Frames the camera produced that the loop never took (newest frame wins).",
                status.dropped_frames,
            ),
            (
                "sink_events_dropped",
                "Events dropped because sinks fell behind.",
                status.sink_events_dropped,
            ),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        yield GaugeMetricFamily(
            f"{PREFIX}_uptime_seconds",
            "Seconds since the daemon started.",
            value=status.monotonic - status.started_monotonic,
        )
        model = status.model
        yield InfoMetricFamily(
            f"{PREFIX}_model",
            "The model being run.",
            value={
                "name": model.name,
                "sha256": model.sha256,
                "backend": model.backend,
                "backend_version": model.backend_version,
            },
        )
        state = status.throttle_state if status.throttle_state in STATES else "normal"
        yield StateSetMetricFamily(
            f"{PREFIX}_throttle_state",
            "Thermal/memory throttle state: normal, warm, hot or critical.",
            value={name: name == state for name in STATES},
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_paused",
            "1 while inference is paused (by the throttle, or by an MQTT command).",
            value=float(status.paused),
        )
        yield from self._readings(status.readings, GaugeMetricFamily)
        if status.delivery is not None:
            yield from self._delivery(status.delivery, CounterMetricFamily, GaugeMetricFamily)

    @staticmethod
    def _readings(readings: Readings, gauge: Any) -> Iterator[Any]:
        """Sensor gauges; a sensor that is unavailable has a family with no sample."""
        rss, swap = readings.rss_bytes, readings.swap_used_bytes
        if rss is None or swap is None:
            # No governor readings (throttling off): ask the OS ourselves, at scrape time.
            import psutil

            rss = rss if rss is not None else psutil.Process().memory_info().rss
            swap = swap if swap is not None else psutil.swap_memory().used
        specs = (
            ("soc_temperature_celsius", "SoC temperature.", readings.cpu_temp_c),
            ("swap_used_bytes", "Swap in use, system-wide.", swap),
            ("swap_in_pages_per_second", "Pages swapped in.", readings.swap_in_per_s),
            ("memory_available_bytes", "MemAvailable, system-wide.", readings.mem_available_bytes),
            ("resident_memory_bytes", "The daemon's resident set size.", rss),
            ("undervoltage", "1 while the supply is under-voltage.", readings.undervoltage),
            (
                "throttled_flags",
                "vcgencmd get_throttled bits (0 under-voltage, 1 capped, 2 throttled, ...).",
                readings.throttled_flags,
            ),
        )
        for name, doc, value in specs:
            family = gauge(f"{PREFIX}_{name}", doc)
            if isinstance(value, bool | int | float):
                family.add_metric([], float(value))
            yield family

    @staticmethod
    def _delivery(delivery: DeliveryStatus, counter: Any, gauge: Any) -> Iterator[Any]:
        """MQTT delivery: connection, traffic, the outbox and what it had to drop."""
        yield gauge(
            f"{PREFIX}_mqtt_connected",
            "1 while connected to the MQTT broker.",
            value=float(delivery.connected),
        )
        yield counter(
            f"{PREFIX}_mqtt_published",
            "Events handed to the MQTT broker (a replay after an outage counts again).",
            value=delivery.published,
        )
        yield counter(
            f"{PREFIX}_mqtt_acknowledged",
            "Events the broker acknowledged (PUBACK), after which they leave the outbox.",
            value=delivery.acknowledged,
        )
        yield gauge(
            f"{PREFIX}_mqtt_outbox_events",
            "Events in the outbox, not yet acknowledged by the broker.",
            value=delivery.outbox_depth,
        )
        yield gauge(
            f"{PREFIX}_mqtt_outbox_bytes",
            "Bytes of events in the outbox.",
            value=delivery.outbox_bytes,
        )
        yield gauge(
            f"{PREFIX}_mqtt_outbox_capacity_bytes",
            "The outbox's byte budget (mqtt.outbox_max_bytes).",
            value=delivery.outbox_capacity,
        )
        dropped = counter(
            f"{PREFIX}_mqtt_outbox_dropped",
            "Events dropped from the outbox, by reason (full: oldest first; oversized).",
            labels=["reason"],
        )
        for reason, count in sorted(delivery.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped


class Metrics:
    """The private registry and the metric objects; `exposition()` renders a scrape."""

    def __init__(self) -> None:
        prometheus = _import_prometheus()
        self._generate = prometheus.generate_latest
        self.content_type = prometheus.CONTENT_TYPE_LATEST
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        self.latency = prometheus.Histogram(
            f"{PREFIX}_inference_latency_seconds",
            "Time spent in the interpreter's invoke() per frame.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.labels = prometheus.Counter(
            f"{PREFIX}_top1_label",
            "Frames whose top-1 class was this label.",
            ["label"],
            registry=self.registry,
        )
        self.fps = prometheus.Gauge(
            f"{PREFIX}_fps",
            f"Frames classified per second over the last ~{FPS_WINDOW_S:.0f} s.",
            registry=self.registry,
        )
        self.sink = MetricsSink(self.latency, self.labels, self.fps)
        self._watching = False

    def watch(self, status: Callable[[], DaemonStatus]) -> None:
        """Expose the daemon's snapshot (read at scrape time). Call it once."""
        if not self._watching:
            self.registry.register(StatusCollector(status))
            self._watching = True

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format of everything registered, for /metrics."""
        return self._generate(self.registry), self.content_type
