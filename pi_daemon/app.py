"""The one place that wires config to adapters and hands them to the daemon loop.

`run_service` builds, in order: the event identity and hub (so every later event, the
start and the error ones too, reaches every sink), the sinks and the MQTT delivery, the
model, the source, the daemon, then the HTTP endpoint; it runs the loop and tears it all
down in reverse. Each resource has one owner here: what this module opens, it closes.
The builders (`build_classifier`, `build_sinks`, `build_extras`, `loop_settings`) are the
ones `pi-daemon bench` uses too, so the bench measures what runs.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pi_daemon import __version__, events, testing_faults
from pi_daemon.capture import RetryPolicy
from pi_daemon.classifier import Classifier
from pi_daemon.config import Config, as_dict, load_config, replace, resolve_relative
from pi_daemon.daemon import Daemon, Extras, LoopSettings, ReloadFailed, model_fields
from pi_daemon.errors import ConfigError, PiDaemonError
from pi_daemon.events import Event, EventHub, emit
from pi_daemon.fileio import FileProblem
from pi_daemon.governor import SensorGovernor
from pi_daemon.identity import ClockSync, Identity, SequenceNumbers, device_id_for, read_boot_id
from pi_daemon.logsetup import shutdown_logging
from pi_daemon.memory import release_mapped_file, trim_heap
from pi_daemon.model import Model, ProveMode, load_model
from pi_daemon.notify import SystemdNotifier
from pi_daemon.signals import SignalRelay
from pi_daemon.sinks.base import Sink, SinkDispatcher
from pi_daemon.sinks.jsonl import JsonlSink
from pi_daemon.sinks.log import LogSink
from pi_daemon.statedir import resolve_state_dir
from pi_daemon.status import DaemonStatus, health

if TYPE_CHECKING:
    from pi_daemon.metrics import Metrics
    from pi_daemon.mqtt import Command, Delivery

log = logging.getLogger(__name__)

SEQUENCE_FILE = "seq"


# -- builders ---------------------------------------------------------------------------


def load_configured_model(
    config: Config, base_dir: Path | None, prove: ProveMode = "unvouched"
) -> Model:
    section = config.model
    return load_model(
        resolve_relative(section.path, base_dir) if section.path else "",
        labels=str(resolve_relative(section.labels, base_dir)) if section.labels else "",
        expected_sha256=section.sha256,
        backend=section.backend,
        num_threads=section.num_threads,
        prove=prove,
    )


def build_classifier(
    config: Config, base_dir: Path | None, prove: ProveMode = "unvouched"
) -> Classifier:
    model = load_configured_model(config, base_dir, prove)
    classifier = Classifier(
        model, top_k=config.model.top_k, crop=config.preprocess.crop, roi=config.preprocess.roi
    )
    # The model has run once (load_model's test invoke), so the delegate has packed the
    # weights: the file's pages are no longer read, and need not stay resident.
    release_mapped_file(model.path)
    return classifier


def build_sinks(
    config: Config,
    base_dir: Path | None,
    identity: Identity,
    extra: list[Sink] | None = None,
) -> list[Sink]:
    out = config.output
    log_results = not config.rules.enabled or config.rules.journal_results == "changes"
    sinks: list[Sink] = [LogSink(out.log_score_threshold, identity, log_results)]
    if out.events_file:
        path = resolve_relative(out.events_file, base_dir)
        sinks.append(JsonlSink(path, out.events_max_bytes, out.events_backup_count, identity))
    return sinks + (extra or [])


def build_extras(config: Config, base_dir: Path | None, state_dir: Path | None) -> Extras:
    """Motion gating, event rules and snapshots, as configured (each off by default)."""
    from pi_daemon.motion import MotionGate
    from pi_daemon.rules import EventRules, RuleSettings
    from pi_daemon.snapshots import SnapshotStore, snapshot_directory

    gate = (
        MotionGate.from_config(config.motion, config.preprocess.roi)
        if config.motion.enabled
        else None
    )
    rules = EventRules(RuleSettings.from_config(config.rules)) if config.rules.enabled else None
    store = None
    if config.snapshots.enabled:
        if state_dir is None:
            raise ConfigError("snapshots.enabled: needs a state directory")
        directory = resolve_relative(str(snapshot_directory(config.snapshots, state_dir)), base_dir)
        store = SnapshotStore.from_config(config.snapshots, directory)
    return Extras(gate, rules, store)


def loop_settings(config: Config) -> LoopSettings:
    """The loop's settings from config; read and frame timeouts come from the source."""
    cap = config.capture
    return LoopSettings(
        stall_timeout_s=cap.stall_timeout_s,
        summary_interval_s=config.output.summary_interval_s,
        retry=RetryPolicy(cap.max_consecutive_failures, cap.backoff_initial_s, cap.backoff_max_s),
    )


def build_identity(config: Config) -> Identity:
    """This device's id (mqtt.device_id, else the host name) and this boot's id."""
    return Identity(device_id_for(config.mqtt.device_id), read_boot_id())


def open_sequence(state_dir: Path) -> SequenceNumbers:
    """The persistent event sequence; an unusable state directory is a config error."""
    path = state_dir / SEQUENCE_FILE
    try:
        numbers = SequenceNumbers(path)
        numbers.reserve_first_block()
    except FileProblem as error:
        raise ConfigError(f"output.state_dir: {path}: {error.reason}") from None
    except OSError as error:
        raise ConfigError(f"output.state_dir: {path}: {error.strerror or error}") from None
    return numbers


# -- the service ------------------------------------------------------------------------


def run_service(config: Config, config_path: Path | None, max_frames: int | None = None) -> int:
    """Load everything, run the loop until stopped, return the exit code."""
    stop = threading.Event()
    # Early, so SIGTERM during a slow model load still ends in a clean exit 0.
    relay = SignalRelay(stop) if threading.current_thread() is threading.main_thread() else None
    try:
        return _run_service(config, config_path, max_frames, stop, relay)
    finally:
        if relay is not None:
            relay.close()


@dataclass
class Controls:
    """What operators may ask of a running daemon besides signals: MQTT commands."""

    reload_requested: threading.Event
    paused_by_command: threading.Event
    on_pause_changed: Callable[[], None] = lambda: None

    def command(self, command: Command) -> None:
        """Runs on the MQTT network thread: only sets Events and logs one line."""
        from pi_daemon.mqtt import Command

        if command is Command.RELOAD:
            log.info("MQTT command: reload (as SIGHUP)")
            self.reload_requested.set()
            return
        paused = command is Command.PAUSE
        if paused == self.paused_by_command.is_set():
            log.info(
                "MQTT command: %s (already %s)", command.value, "paused" if paused else "running"
            )
            return
        log.info("MQTT command: %s", command.value)
        (self.paused_by_command.set if paused else self.paused_by_command.clear)()
        self.on_pause_changed()


def _run_service(
    config: Config,
    config_path: Path | None,
    max_frames: int | None,
    stop: threading.Event,
    relay: SignalRelay | None,
) -> int:
    base_dir = config_path.parent if config_path else None
    # The watchdog kills with SIGABRT: dump every thread's stack to stderr (the journal)
    # first, so a hang leaves a record of where it was stuck.
    faulthandler.enable(all_threads=True)
    notifier = SystemdNotifier()
    notifier.status("loading model")
    state_dir = resolve_state_dir(config.output.state_dir)
    identity = build_identity(config)
    controls = Controls(threading.Event(), threading.Event())
    with contextlib.ExitStack() as owned:
        sequence = open_sequence(state_dir)
        owned.callback(sequence.close)
        delivery, mqtt_sinks = build_delivery(config, base_dir, identity, state_dir, controls)
        sinks = build_sinks(config, base_dir, identity, mqtt_sinks)
        if delivery is not None:
            # Closed after the dispatcher has drained (ExitStack: last in, first out).
            owned.callback(delivery.close)
        metrics = _metrics(config)
        dispatcher = SinkDispatcher(sinks + ([metrics.sink] if metrics else []))
        owned.callback(dispatcher.close)
        hub = EventHub(
            identity, sequence, ClockSync(config.output.clock_synced_path), dispatcher.submit
        )
        owned.enter_context(_installed(hub))
        owned.callback(notifier.close)
        try:
            code = _serve(
                config, config_path, max_frames, stop, relay, notifier, hub, dispatcher,
                delivery, metrics, controls, state_dir,
            )  # fmt: skip
        except PiDaemonError as error:
            emit(
                log,
                logging.ERROR,
                Event.ERROR,
                "exiting with code %d: %s",
                error.exit_code,
                "; ".join(str(error).splitlines()),
                exit_code=error.exit_code,
            )
            raise
        return code


@contextlib.contextmanager
def _installed(hub: EventHub) -> Iterator[EventHub]:
    events.install(hub)
    try:
        yield hub
    finally:
        events.install(None)


def build_delivery(
    config: Config,
    base_dir: Path | None,
    identity: Identity,
    state_dir: Path,
    controls: Controls | None = None,
) -> tuple[Delivery | None, list[Sink]]:
    """The MQTT delivery and its sink, when `[mqtt]` is on (the caller starts and closes
    the delivery); bad local inputs (password file, certificates) are ConfigErrors."""
    if not config.mqtt.enabled:
        return None, []
    from pi_daemon.mqtt import Delivery
    from pi_daemon.sinks.mqtt import MqttSink
    from pi_daemon.snapshots import snapshot_directory

    commands = controls.command if controls is not None and config.mqtt.commands else None
    delivery = Delivery(config.mqtt, identity.device_id, state_dir, on_command=commands)
    snapshots = (
        resolve_relative(str(snapshot_directory(config.snapshots, state_dir)), base_dir)
        if config.snapshots.enabled
        else None
    )
    paused = controls.paused_by_command.is_set if controls is not None else (lambda: False)
    sink = MqttSink(delivery, identity, snapshots, paused)
    if controls is not None:
        controls.on_pause_changed = sink.publish_state
    return delivery, [sink]


def _metrics(config: Config) -> Metrics | None:
    if not config.metrics.enabled:
        return None
    from pi_daemon.metrics import Metrics

    return Metrics()


def _serve(
    config: Config,
    config_path: Path | None,
    max_frames: int | None,
    stop: threading.Event,
    relay: SignalRelay | None,
    notifier: SystemdNotifier,
    hub: EventHub,
    dispatcher: SinkDispatcher,
    delivery: Delivery | None,
    metrics: Metrics | None,
    controls: Controls,
    state_dir: Path,
) -> int:
    from pi_daemon.sources import create_source

    base_dir = config_path.parent if config_path else None
    classifier = testing_faults.apply_to_classifier(
        build_classifier(config, base_dir), config.testing, stop
    )
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
        num_threads=config.model.num_threads,
        **model_fields(classifier),
    )
    extras = build_extras(config, base_dir, state_dir)
    source = testing_faults.apply_to_source(
        create_source(config, model.input_size, base_dir, prescale=classifier.preprocess.prescale),
        config.testing,
        stop,
    )
    if extras.snapshots is not None:
        source.keep_recent(3)
    reloader = Reloader(config, config_path, stop)
    daemon = Daemon(
        classifier,
        source,
        dispatcher,
        loop_settings(config),
        # Thermal/memory throttling; off, the loop runs flat out (UnlimitedGovernor).
        governor=SensorGovernor.from_config(config) if config.throttle.enabled else None,
        notifier=notifier,
        stop=stop,
        reload=reloader,
        hub=hub,
        extras=extras,
        paused_by_command=controls.paused_by_command,
        reload_requested=controls.reload_requested,
    )

    def status() -> DaemonStatus:
        return daemon.status().with_delivery(delivery.status() if delivery else None)

    endpoint = None
    if metrics is not None:
        # Bound before touching the camera: a port clash is a config error (exit 78).
        from pi_daemon.endpoint import Endpoint, TlsFiles

        section = config.metrics
        tls = None
        if section.cert_file:
            tls = TlsFiles(
                str(resolve_relative(section.cert_file, base_dir)),
                str(resolve_relative(section.key_file, base_dir)),
                str(resolve_relative(section.client_ca_file, base_dir))
                if section.client_ca_file
                else "",
            )
        metrics.watch(status)
        endpoint = Endpoint(
            section.address, section.port, metrics.exposition, lambda: health(status()), tls
        )
        log.info("metrics: serving /metrics and /healthz on %s", endpoint.url)
    try:
        source.open()
        trim_heap()  # what loading the model and the stills left behind
        log.info("source: %s", source.describe())
        notifier.status(f"waiting for the first frame from {source.name}")
        if delivery is not None:
            delivery.start()
        if relay is not None:
            relay.reload_requested = controls.reload_requested
            relay.watch(daemon.loop_left, lambda: _shutdown_without_loop(daemon, notifier))
        try:
            code = daemon.run(max_frames)
        finally:
            if daemon.capture_stopped:
                source.close()
    finally:
        if endpoint is not None:
            endpoint.close()
    frames, skipped, dropped = daemon.counters.frames, daemon.counters.skipped, daemon.slot.dropped
    emit(
        log,
        logging.INFO,
        Event.STOP,
        "stopped after %d frames (%d skipped as unchanged, %d dropped while busy)",
        frames,
        skipped,
        dropped,
        frames=frames,
        skipped_frames=skipped,
        dropped_frames=dropped,
        exit_code=code,
    )
    return code


def _shutdown_without_loop(daemon: Daemon, notifier: SystemdNotifier) -> None:
    """The main thread is wedged in C: deliver what it recorded, then the logs (the relay
    thread ends the process afterwards)."""
    notifier.stopping()
    daemon.dispatcher.close(timeout=4.0)
    shutdown_logging(timeout=1.0)


# -- reload ----------------------------------------------------------------------------

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
    both, and return a new Classifier, or raise ReloadFailed to keep the old one.

    The daemon runs it on the loop's thread between frames and does the protocol around
    it (RELOADING=1 ... READY=1, the failure event); this only knows config and models.
    """

    def __init__(self, config: Config, config_path: Path | None, stop: threading.Event) -> None:
        self.config = config
        self.config_path = config_path
        self.stop = stop

    def __call__(self) -> Classifier:
        path = self.config_path
        base_dir = path.parent if path else None
        try:
            new = load_config(path) if path else self.config
        except PiDaemonError as error:
            raise ReloadFailed(f"config: {error}") from None
        try:
            # Proven in a child process first: a model that crashes the runtime must not
            # take the running service down with it.
            classifier = build_classifier(new, base_dir, prove="always")
        except PiDaemonError as error:
            raise ReloadFailed(f"model: {error}") from None
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
            num_threads=new.model.num_threads,
            result="ok",
            **model_fields(classifier),
        )
        return testing_faults.apply_to_classifier(classifier, new.testing, self.stop)
