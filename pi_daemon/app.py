"""The one place that wires config to adapters and hands them to the daemon loop."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from pi_daemon import __version__
from pi_daemon.classifier import Classifier
from pi_daemon.config import Config, resolve_relative
from pi_daemon.daemon import Daemon, LoopSettings
from pi_daemon.errors import PiDaemonError
from pi_daemon.events import Event, emit
from pi_daemon.model import Model, load_model
from pi_daemon.sinks.base import Sink, SinkDispatcher
from pi_daemon.sinks.jsonl import JsonlSink
from pi_daemon.sinks.log import LogSink
from pi_daemon.sources import create_source

log = logging.getLogger(__name__)


def load_configured_model(config: Config, base_dir: Path | None) -> Model:
    section = config.model
    return load_model(
        resolve_relative(section.path, base_dir) if section.path else "",
        labels=str(resolve_relative(section.labels, base_dir)) if section.labels else "",
        expected_sha256=section.sha256,
        backend=section.backend,
        num_threads=section.num_threads,
    )


def build_classifier(config: Config, base_dir: Path | None) -> Classifier:
    model = load_configured_model(config, base_dir)
    return Classifier(model, top_k=config.model.top_k, crop=config.preprocess.crop)


def build_sinks(config: Config, base_dir: Path | None) -> list[Sink]:
    out = config.output
    sinks: list[Sink] = [LogSink(out.log_score_threshold)]
    if out.events_file:
        path = resolve_relative(out.events_file, base_dir)
        sinks.append(JsonlSink(path, out.events_max_bytes, out.events_backup_count))
    return sinks


def loop_settings(config: Config) -> LoopSettings:
    from pi_daemon.capture import RetryPolicy

    cap = config.capture
    read_timeout = (
        config.picamera2.capture_timeout_s
        if config.source == "picamera2"
        else config.opencv.read_timeout_s
    )
    return LoopSettings(
        stall_timeout_s=cap.stall_timeout_s,
        summary_interval_s=config.output.summary_interval_s,
        read_timeout_s=read_timeout,
        retry=RetryPolicy(cap.max_consecutive_failures, cap.backoff_initial_s, cap.backoff_max_s),
    )


def run_service(config: Config, config_path: Path | None, max_frames: int | None = None) -> int:
    """Load everything, run the loop until stopped, return the exit code."""
    base_dir = config_path.parent if config_path else None
    classifier = build_classifier(config, base_dir)
    model = classifier.model
    emit(
        log,
        logging.INFO,
        Event.START,
        "pi-daemon %s: model %s (sha256 %s…) on %s %s, %d threads, %s output",
        __version__,
        model.name,
        model.sha256[:12],
        model.loaded.backend,
        model.loaded.version,
        config.model.num_threads,
        classifier.output_kind,
        model=model.name,
        model_sha256=model.sha256,
        backend=model.loaded.backend,
        num_threads=config.model.num_threads,
    )
    source = create_source(config, model.input_size, base_dir)
    source.open()
    log.info("source: %s", source.describe())
    stop = threading.Event()
    try:
        dispatcher = SinkDispatcher(build_sinks(config, base_dir))
    except PiDaemonError:
        source.close()
        raise
    daemon = Daemon(classifier, source, dispatcher, loop_settings(config), stop=stop)
    _install_signal_handlers(daemon)
    code = daemon.run(max_frames)
    emit(
        log,
        logging.INFO,
        Event.STOP,
        "stopped after %d frames",
        daemon.counters.frames,
        frames=daemon.counters.frames,
        exit_code=code,
    )
    return code


def _install_signal_handlers(daemon: Daemon) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
