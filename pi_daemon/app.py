"""The one place that wires config to adapters and hands them to the daemon loop."""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pi_daemon import __version__
from pi_daemon.classifier import Classifier
from pi_daemon.config import Config, as_dict, load_config, replace, resolve_relative
from pi_daemon.daemon import Daemon, LoopSettings
from pi_daemon.errors import PiDaemonError
from pi_daemon.events import Event, emit
from pi_daemon.governor import SensorGovernor
from pi_daemon.metrics import start_metrics
from pi_daemon.model import Model, load_model
from pi_daemon.notify import SystemdNotifier
from pi_daemon.sinks.base import Sink, SinkDispatcher
from pi_daemon.sinks.jsonl import JsonlSink
from pi_daemon.sinks.log import LogSink
from pi_daemon.sources import FrameSource, create_source

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
    stop = threading.Event()
    # Early, so SIGTERM during a slow model load still ends in a clean exit 0.
    _install_signal_handlers(stop)
    # The watchdog kills with SIGABRT: dump every thread's stack to stderr (the journal)
    # first, so a hang leaves a record of where it was stuck.
    faulthandler.enable(all_threads=True)
    notifier = SystemdNotifier()
    notifier.status("loading model")
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
    # Bind before touching the camera: a port clash is a config error (exit 78).
    metrics = start_metrics(config.metrics)
    source = with_source_fault(create_source(config, model.input_size, base_dir), config, stop)
    source.open()
    log.info("source: %s", source.describe())
    notifier.status(f"waiting for the first frame from {source.name}")
    try:
        extra_sinks = [metrics.sink] if metrics else []
        dispatcher = SinkDispatcher(build_sinks(config, base_dir) + extra_sinks)
    except PiDaemonError:
        source.close()
        raise
    reloader = Reloader(config, config_path, notifier, stop)
    daemon = Daemon(
        with_invoke_fault(classifier, config, stop),
        source,
        dispatcher,
        loop_settings(config),
        # Thermal/memory throttling; off, the loop runs flat out (UnlimitedGovernor).
        governor=SensorGovernor.from_config(config) if config.throttle.enabled else None,
        notifier=notifier,
        stop=stop,
        reload=reloader,
    )
    reloader.daemon = daemon
    if metrics:
        metrics.watch(daemon)
    _install_signal_handlers(stop, daemon.reload_requested)
    try:
        code = daemon.run(max_frames)
    finally:
        notifier.close()
        if metrics:
            metrics.close()
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


def _install_signal_handlers(
    stop: threading.Event, reload_requested: threading.Event | None = None
) -> None:
    """SIGTERM/SIGINT set `stop`; SIGHUP sets `reload_requested` (ignored until it exists).

    The handlers only start a short thread that logs and sets the Event: a Python signal
    handler runs on the main thread between bytecodes, possibly while that thread holds
    the Event's or the log queue's (non-reentrant) lock, and taking it again there would
    deadlock.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def later(action: Callable[[], None]) -> None:
        threading.Thread(target=action, name="signal", daemon=True).start()

    def request_stop(signum: int, _frame: object) -> None:
        def act() -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            stop.set()

        later(act)

    def request_reload(_signum: int, _frame: object) -> None:
        def act() -> None:
            if reload_requested is None:
                log.warning("SIGHUP received while starting: ignored (nothing to reload yet)")
                return
            log.info("SIGHUP received: reloading config and model")
            reload_requested.set()

        later(act)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)


# -- SIGHUP reload ------------------------------------------------------------------

# Sections a reload applies (they only shape the Classifier); changes to any other key
# are logged as needing a restart rather than silently ignored.
RELOADABLE_SECTIONS = frozenset({"model", "preprocess", "testing"})


def settings_needing_restart(running: Config, new: Config) -> list[str]:
    """Dotted keys that differ between the configs and that a reload cannot apply."""
    old_data, new_data = as_dict(running), as_dict(new)
    changed: list[str] = []
    for key, old_value in old_data.items():
        new_value = new_data.get(key)
        if key in RELOADABLE_SECTIONS or old_value == new_value:
            continue
        if isinstance(old_value, dict) and isinstance(new_value, dict):
            changed += [f"{key}.{k}" for k in old_value if old_value[k] != new_value.get(k)]
        else:
            changed.append(key)
    return changed


class Reloader:
    """The daemon's `reload=` callback: re-read the config file and the model, validate
    both, and hand back a new Classifier, or None to keep running on the old one.

    It runs on the loop's thread between frames, so the swap needs no lock.
    """

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        notifier: SystemdNotifier,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier
        self.stop = stop
        self.daemon: Daemon | None = None

    def __call__(self) -> Classifier | None:
        # systemd holds the unit in "reloading" from RELOADING=1 until READY=1, so READY=1
        # follows whatever the outcome: a failed reload leaves the service running.
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            status = self.daemon.status_line() if self.daemon else "running"
            self.notifier.ready(status)

    def _reload(self) -> Classifier | None:
        path = self.config_path
        base_dir = path.parent if path else None
        try:
            new = load_config(path) if path else self.config
        except PiDaemonError as error:
            self._failed(f"config: {error}")
            return None
        try:
            classifier = build_classifier(new, base_dir)
        except PiDaemonError as error:
            self._failed(f"model: {error}")
            return None
        except Exception as error:  # a reload must never take a running service down
            self._failed(f"model: {type(error).__name__}: {error}")
            return None
        restart = settings_needing_restart(self.config, new)
        if restart:
            log.warning(
                "reload: %s changed; these take effect at the next restart",
                ", ".join(restart),
            )
        # Keep comparing against what is really running: only the reloadable part changed.
        self.config = replace(
            self.config, **{name: getattr(new, name) for name in RELOADABLE_SECTIONS}
        )
        model = classifier.model
        emit(
            log,
            logging.INFO,
            Event.RELOAD,
            "reloaded: model %s (sha256 %s…) on %s, %d threads",
            model.name,
            model.sha256[:12],
            model.loaded.backend,
            new.model.num_threads,
            model=model.name,
            model_sha256=model.sha256,
            backend=model.loaded.backend,
            num_threads=new.model.num_threads,
            result="ok",
        )
        return with_invoke_fault(classifier, new, self.stop)

    def _failed(self, reason: str) -> None:
        running = self.daemon.classifier.model if self.daemon else None
        emit(
            log,
            logging.ERROR,
            Event.RELOAD,
            "reload failed, still running model %s (sha256 %s…): %s",
            running.name if running else "?",
            running.sha256[:12] if running else "?",
            "; ".join(str(reason).splitlines()),
            model=running.name if running else None,
            model_sha256=running.sha256 if running else None,
            result="failed",
        )


# -- test-only faults ([testing] in the config; refused without PI_DAEMON_ALLOW_FAULTS=1) --


class _HangingClassifier:
    """Classifies `after` frames, then blocks in classify() until `stop`: a stuck invoke."""

    def __init__(self, inner: Classifier, after: int, stop: threading.Event) -> None:
        self._inner, self._after, self._stop = inner, after, stop
        self._count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def classify(self, frame: Any, **kwargs: Any) -> Any:
        if self._count == self._after:
            log.warning("testing fault: inference hangs now (until stop)")
        if self._count >= self._after:
            self._stop.wait()  # released by SIGTERM, so a clean stop still works
        self._count += 1
        return self._inner.classify(frame, **kwargs)


class _HangingSource(FrameSource):
    """Reads `after` frames, then blocks in read() until `stop`: a stuck camera."""

    def __init__(self, inner: FrameSource, after: int, stop: threading.Event) -> None:
        super().__init__()
        self._inner, self._after, self._stop = inner, after, stop
        self._count = 0
        self.name, self.live = inner.name, inner.live

    def open(self) -> None:
        self._inner.open()

    def close(self) -> None:
        self._inner.close()

    def describe(self) -> str:
        return f"{self._inner.describe()} [testing: hangs after {self._after} frames]"

    def read(self, timeout: float) -> Any:
        if self._count == self._after:
            log.warning("testing fault: capture hangs now (until stop)")
        if self._count >= self._after:
            self._stop.wait()
        self._count += 1
        return self._inner.read(timeout)


def with_invoke_fault(classifier: Classifier, config: Config, stop: threading.Event) -> Classifier:
    testing = config.testing
    if testing.fault != "hang-invoke":
        return classifier
    return cast(Classifier, _HangingClassifier(classifier, testing.fault_after_frames, stop))


def with_source_fault(source: FrameSource, config: Config, stop: threading.Event) -> FrameSource:
    testing = config.testing
    if testing.fault != "hang-capture":
        return source
    return _HangingSource(source, testing.fault_after_frames, stop)
