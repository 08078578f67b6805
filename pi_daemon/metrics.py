"""The optional Prometheus endpoint: what a fleet operator scrapes from every Pi.

Off by default; `[metrics] enabled = true` serves the text format on 127.0.0.1:9110 through
the official `prometheus-client` (imported lazily: the `metrics` extra). Everything lives
on a private CollectorRegistry, so nothing else in the process leaks into the scrape.

Nothing here costs the inference loop anything measurable:

* per-result metrics (latency histogram, top-1 label counts, fps) are updated by
  `MetricsSink` on the sink dispatcher's thread, never the loop's;
* everything the daemon already counts or reads (frames, drops, throttle state,
  temperature, swap, RSS, the model) is read from the daemon by a collector at scrape
  time, so it costs nothing between scrapes and is always the daemon's own figure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pi_daemon.errors import ConfigError
from pi_daemon.results import Result, Summary
from pi_daemon.sinks.base import Sink

if TYPE_CHECKING:
    from pi_daemon.config import MetricsSection
    from pi_daemon.daemon import Daemon

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
THROTTLE_STATES = ("normal", "warm", "hot", "critical")
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

    def on_result(self, result: Result) -> None:
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

    def on_summary(self, summary: Summary) -> None:
        # A stalled or paused loop sends no results: let the summary bring fps down.
        if summary.frames == 0:
            self._fps.set(0.0)


class DaemonCollector:
    """Reads the daemon's own counters and latest readings when Prometheus scrapes."""

    def __init__(self, daemon: Daemon, started: float) -> None:
        self.daemon = daemon
        self.started = started

    def describe(self) -> list[Any]:
        return []  # generated at scrape time; no registration-time collect()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
            StateSetMetricFamily,
        )

        daemon = self.daemon
        counters = daemon.counters
        yield CounterMetricFamily(
            f"{PREFIX}_frames_processed",
            "Frames classified since the daemon started.",
            value=counters.frames,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_frames_dropped",
            "Frames the camera produced that the loop never took (newest frame wins).",
            value=daemon.slot.dropped,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_sink_events_dropped",
            "Results and summaries dropped because sinks fell behind.",
            value=daemon.dispatcher.dropped_events,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_uptime_seconds",
            "Seconds since the daemon started.",
            value=time.monotonic() - self.started,
        )
        model = daemon.classifier.model
        yield InfoMetricFamily(
            f"{PREFIX}_model",
            "The model being run.",
            value={
                "name": model.name,
                "sha256": model.sha256,
                "backend": model.loaded.backend,
                "backend_version": model.loaded.version,
            },
        )
        decision = counters.last_decision
        state = decision.state if decision.state in THROTTLE_STATES else "normal"
        yield StateSetMetricFamily(
            f"{PREFIX}_throttle_state",
            "Thermal/memory throttle state: normal, warm, hot or critical.",
            value={name: name == state for name in THROTTLE_STATES},
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_paused",
            "1 while the governor pauses inference.",
            value=float(decision.pause),
        )
        yield from self._readings(decision.readings, GaugeMetricFamily)

    def _readings(self, readings: dict[str, Any], gauge: Any) -> Iterator[Any]:
        """Sensor gauges; a sensor that is unavailable has a family with no sample."""
        rss = readings.get("rss_bytes")
        swap = readings.get("swap_used_bytes")
        if rss is None or swap is None:
            # No governor readings (throttling off): ask the OS ourselves, at scrape time.
            import psutil

            rss = rss if rss is not None else psutil.Process().memory_info().rss
            swap = swap if swap is not None else psutil.swap_memory().used
        specs = (
            ("soc_temperature_celsius", "SoC temperature.", readings.get("cpu_temp_c")),
            ("swap_used_bytes", "Swap in use, system-wide.", swap),
            ("swap_in_pages_per_second", "Pages swapped in.", readings.get("swap_in_per_s")),
            (
                "memory_available_bytes",
                "MemAvailable, system-wide.",
                readings.get("mem_available_bytes"),
            ),
            ("resident_memory_bytes", "The daemon's resident set size.", rss),
            ("undervoltage", "1 while the supply is under-voltage.", readings.get("undervoltage")),
            (
                "throttled_flags",
                "vcgencmd get_throttled bits (0 under-voltage, 1 capped, 2 throttled, ...).",
                readings.get("throttled_flags"),
            ),
        )
        for name, doc, value in specs:
            family = gauge(f"{PREFIX}_{name}", doc)
            if isinstance(value, bool | int | float):
                family.add_metric([], float(value))
            yield family


class Metrics:
    """The private registry, the metric objects, and (optionally) the HTTP server."""

    def __init__(self) -> None:
        prometheus = _import_prometheus()
        self.started = time.monotonic()
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
        self._server: Any = None
        self._thread: Any = None
        self.address: tuple[str, int] | None = None

    @classmethod
    def without_server(cls) -> Metrics:
        """Metrics that are computed but not served (used by `pi-daemon bench`)."""
        return cls()

    def watch(self, daemon: Daemon) -> None:
        """Expose the daemon's counters and readings (read at scrape time)."""
        self.registry.register(DaemonCollector(daemon, self.started))

    def serve(self, address: str, port: int) -> tuple[str, int]:
        """Start the HTTP endpoint; a bind failure is a config problem (exit 78)."""
        prometheus = _import_prometheus()
        try:
            started = prometheus.start_http_server(port, addr=address, registry=self.registry)
        except OSError as error:
            reason = error.strerror or str(error)
            raise ConfigError(
                f"metrics: cannot listen on {address}:{port}: {reason} "
                "(change [metrics] port or address)"
            ) from None
        if isinstance(started, tuple):  # prometheus-client >= 0.17 returns (server, thread)
            self._server, self._thread = started
            host, bound_port = self._server.server_address[:2]
            self.address = (str(host), int(bound_port))
        else:
            self.address = (address, port)
        log.info("metrics: serving Prometheus text on http://%s:%d/metrics", *self.address)
        return self.address

    def close(self) -> None:
        """Stop serving; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def start_metrics(section: MetricsSection) -> Metrics | None:
    """Metrics serving per config, or None when `[metrics]` is off."""
    if not section.enabled:
        return None
    metrics = Metrics()
    metrics.serve(section.address, section.port)
    return metrics
