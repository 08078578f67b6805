"""`Delivery`: the one object the daemon builds to send its events over MQTT."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from pi_daemon import __version__
from pi_daemon.config import MqttSection, topic_level_problem
from pi_daemon.errors import ConfigError
from pi_daemon.mqtt.backoff import RetryPolicy
from pi_daemon.mqtt.discovery import discovery_messages
from pi_daemon.mqtt.link import BrokerLink, LinkSettings
from pi_daemon.mqtt.outbox import Outbox
from pi_daemon.mqtt.security import read_password, tls_context
from pi_daemon.mqtt.status import Command, DeliveryStatus, DeviceState
from pi_daemon.mqtt.store import StoreError
from pi_daemon.mqtt.topics import Topics

log = logging.getLogger(__name__)

OUTBOX_FILE = "mqtt-outbox.sqlite3"


def _import_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise ConfigError(
            "mqtt.enabled = true, but paho-mqtt is not installed (pip install 'pi-daemon[mqtt]')"
        ) from None
    version = getattr(mqtt, "CallbackAPIVersion", None)
    if version is None:
        raise ConfigError(
            "mqtt.enabled = true, but the installed paho-mqtt is older than 2.0 "
            "(pip install 'pi-daemon[mqtt]')"
        )
    return mqtt


class Delivery:
    """Events to the broker through an on-disk outbox; see the package docstring.

    Construction checks every local input (ConfigError naming the key, exit 78) and opens
    the outbox; nothing touches the network until `start()`. Thread use: `submit()` from one
    thread (the sink thread); `publish_state()`, `set_online()`, `status()` from any;
    `close()` once, from the thread that owns this object.
    """

    def __init__(
        self,
        section: MqttSection,
        device_id: str,
        state_dir: Path,
        *,
        on_command: Callable[[Command], None] | None = None,
        retry: RetryPolicy | None = None,
        version: str = __version__,
    ) -> None:
        problem = topic_level_problem(device_id)
        if problem:
            raise ConfigError(f"mqtt.device_id: {device_id!r} {problem}")
        if section.commands and on_command is None:
            raise ValueError("mqtt.commands = true needs an on_command callback")
        mqtt = _import_paho()
        password = read_password(section.password_file) if section.password_file else ""
        tls = tls_context(section) if section.tls else None
        self.section = section
        self.topics = Topics.from_config(section, device_id)
        path = Path(state_dir) / OUTBOX_FILE
        try:
            self._outbox = Outbox(path, section.outbox_max_bytes, section.outbox_fsync_interval_s)
        except StoreError as error:
            raise ConfigError(f"mqtt: cannot open the outbox: {error}") from None
        settings = LinkSettings(
            host=section.host,
            port=section.port,
            keepalive_s=section.keepalive_s,
            qos=section.qos,
            username=section.username,
            password=password,
            tls=tls,
            commands=section.commands,
            discovery=tuple(discovery_messages(self.topics, version)) if section.discovery else (),
        )
        self._link = BrokerLink(
            settings, self.topics, self._outbox, retry or RetryPolicy(), mqtt, on_command
        )
        self._closing = False
        self._close_lock = threading.Lock()  # close() runs once
        self._closed = False

    def start(self) -> None:
        """Start the flusher and network threads; returns at once."""
        self._outbox.start()
        self._link.start()

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue one JSON-ready event (it carries an integer `seq`, rising by one per event).

        Never waits on the network or the disk: the event goes into memory, the flusher
        writes it within outbox_fsync_interval_s unless the broker acknowledged it first.
        """
        if self._closing:
            return
        seq = event.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError(f"an event needs an integer seq, got {seq!r}")
        self._outbox.append(seq, msgspec.json.encode(event))
        self._link.wake()

    def publish_state(self, state: DeviceState) -> None:
        """Publish `state` retained on <topic_prefix>/<device_id>/state (latest wins)."""
        self._link.request_state(msgspec.json.encode(state.as_dict(time.time())))

    def publish_snapshot(self, jpeg: bytes) -> None:
        """Publish an event's JPEG retained on <topic_prefix>/<device_id>/snapshot (latest
        wins; like the state, not queued in the outbox: an old picture is not news)."""
        self._link.request_snapshot(jpeg)

    def set_online(self) -> None:
        """The first frame was classified: availability says `online` (retained) from now
        on, again after every reconnect."""
        self._link.request_online()

    def status(self) -> DeliveryStatus:
        state, reason, published, acknowledged = self._link.snapshot()
        counts = self._outbox.counts()
        return DeliveryStatus(
            state=state,
            reason=reason,
            outbox_depth=counts.depth,
            outbox_bytes=counts.bytes,
            outbox_capacity=counts.capacity,
            dropped=counts.dropped,
            published=published,
            acknowledged=acknowledged,
            synced_seq=counts.synced_seq,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what the broker takes within about `timeout` s, say `offline`
        (retained), disconnect, and write what is left to the outbox. Safe twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._closing = True
        self._link.close(timeout)
        self._outbox.close()

    def __enter__(self) -> Delivery:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
