"""Events to MQTT: every event through the delivery's on-disk outbox, plus the retained
topics a dashboard reads (availability, state, the latest snapshot).

The retained `state` is derived from the events themselves, on the dispatcher thread:
results give the label and score (published when the top-1 label changes), summaries the
fps, throttle state and temperature (published at each summary), start and reload events
the model. So the state never says anything the event stream did not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pi_daemon import fileio
from pi_daemon.events import EventRecord
from pi_daemon.identity import Identity
from pi_daemon.mqtt import Delivery, DeviceState
from pi_daemon.results import Result, Summary
from pi_daemon.rules import LabelEvent
from pi_daemon.sinks.base import Sink

log = logging.getLogger(__name__)

# A snapshot larger than this is not published (mosquitto's default message limit is far
# larger; a Pi's 640x480 JPEG is ~50 KB). It is still on disk, and the event names it.
MAX_SNAPSHOT_BYTES = 4 * fileio.MIB


class MqttSink(Sink):
    name = "mqtt"

    def __init__(
        self,
        delivery: Delivery,
        identity: Identity,
        snapshot_dir: Path | None = None,
        paused_by_command: Callable[[], bool] = lambda: False,
    ) -> None:
        self.delivery = delivery
        self.identity = identity
        self.snapshot_dir = snapshot_dir
        self.paused_by_command = paused_by_command
        self._online = False
        # _lock protects _state: the dispatcher thread updates it, a command (on the MQTT
        # thread) republishes it.
        self._lock = threading.Lock()
        self._state = DeviceState()

    def on_event(self, record: EventRecord) -> None:
        self.delivery.submit(record.to_dict(self.identity))
        body = record.body
        if isinstance(body, Result):
            self._result(body)
        elif isinstance(body, Summary):
            self._update(
                fps=body.fps,
                throttle_state=body.throttle_state,
                cpu_temp_c=body.readings.cpu_temp_c,
                undervoltage=body.readings.undervoltage,
            )
        elif isinstance(body, LabelEvent):
            if body.event == "start" and body.snapshot:
                self._snapshot(body.snapshot)
        elif record.type in ("start", "reload") and isinstance(body, dict):
            sha = body.get("model_sha256")
            if isinstance(sha, str) and body.get("result") != "failed":
                self._update(model_sha256=sha)

    def _result(self, result: Result) -> None:
        best = result.top[0]
        if not self._online:
            self._online = True
            self.delivery.set_online()
        with self._lock:
            changed = best.label != self._state.label
            self._state = replace(self._state, label=best.label, score=best.score)
        if changed:
            self.publish_state()

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)
        self.publish_state()

    def publish_state(self) -> None:
        """Publish the current state (also when a pause or resume command arrives)."""
        with self._lock:
            state = self._state
        paused = self.paused_by_command() or state.throttle_state == "critical"
        self.delivery.publish_state(replace(state, paused=paused))

    def _snapshot(self, name: str) -> None:
        if self.snapshot_dir is None:
            return
        try:
            jpeg = fileio.read_bytes(self.snapshot_dir / name, MAX_SNAPSHOT_BYTES)
        except fileio.FileProblem as error:
            log.warning("snapshot %s not published over MQTT: %s", name, error.reason)
            return
        self.delivery.publish_snapshot(jpeg)

    def close(self) -> None:
        pass  # the delivery belongs to app.py, which closes it after the dispatcher drained
