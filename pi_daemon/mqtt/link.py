"""The network thread: paho-mqtt (2.x, CallbackAPIVersion.VERSION2) driven by our own loop.

All MQTT I/O (connect, TLS handshake, publish, acks, pings, commands) happens on the one
thread `BrokerLink` starts; no other thread ever calls paho, so nothing the sink thread or
the inference loop does can wait on the network. Others talk to this thread only through
the outbox and a few flags under `_lock`, and wake its `select()` through a socketpair.

Each connection attempt gets a fresh paho client. Whatever was in flight when a connection
died is therefore not resent by paho from its memory: on every CONNACK the outbox rewinds and
everything still unacknowledged goes out again, oldest first. That is QoS 1's at-least-once:
an event whose PUBACK was lost with the connection arrives twice; none is skipped. Reconnects
follow `RetryPolicy` (exponential backoff with jitter; a long fixed wait after the broker
refused the credentials). State changes are logged once each, never a line per retry.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pi_daemon.events import Event, emit
from pi_daemon.mqtt.backoff import Backoff, RetryPolicy
from pi_daemon.mqtt.commands import describe, parse_command
from pi_daemon.mqtt.outbox import Outbox
from pi_daemon.mqtt.status import Command, ConnectionState
from pi_daemon.mqtt.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

# Events in flight (published, not yet acknowledged) on one connection. Bounds what a lost
# connection makes us send twice, and paho's memory.
WINDOW_MESSAGES = 64
WINDOW_BYTES = 256 * 1024
# paho's loop_misc (keep-alive pings, the CONNACK timeout) wants calling about once a second.
MISC_INTERVAL_S = 1.0
# Home Assistant asks for a random delay before answering its birth message with discovery.
DISCOVERY_DELAY_MAX_S = 3.0
UNAUTHORIZED = ("Bad user name or password", "Not authorized")


class Waker:
    """Wakes the network thread's select() from other threads: a socketpair that holds at
    most about one byte, whatever the number of wake() calls.

    drain() empties the socket first and only then clears the flag. The other order loses
    wake-ups: a wake() between the two would see the flag clear, send its byte, and have it
    drained, leaving the flag set with nothing to read, so no later wake() would send again.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = False

    def fileno(self) -> int:
        return self._reader.fileno()

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        # A full buffer means it is awake anyway; after close() the socket is gone.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._reader.recv(4096)
        self._pending = False

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    keepalive_s: int
    qos: int
    username: str = ""
    password: str = ""
    tls: ssl.SSLContext | None = None
    commands: bool = False
    discovery: tuple[tuple[str, bytes], ...] = ()  # retained (topic, payload) messages


def describe_error(error: BaseException) -> str:
    """A connect failure in a few words."""
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name ({error.strerror})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, ssl.CertificateError):
        return f"TLS: {error}"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


class BrokerLink:
    """Owns the network thread and the paho client of the moment."""

    def __init__(
        self,
        settings: LinkSettings,
        topics: Topics,
        outbox: Outbox,
        retry: RetryPolicy,
        mqtt: Any,
        on_command: Callable[[Command], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self.retry = retry
        self._mqtt = mqtt  # the paho.mqtt.client module, imported by the caller
        self._on_command = on_command
        self._waker = Waker()
        self._closing = threading.Event()
        self._drain_until = 0.0
        self._give_up_at = 0.0
        self._thread: threading.Thread | None = None
        # _lock guards these, shared with other threads.
        self._lock = threading.Lock()
        self._state = ConnectionState.CONNECTING
        self._reason = ""
        self._published = 0
        self._acknowledged = 0
        self._online_wanted = False
        self._state_payload: bytes | None = None
        self._state_dirty = False
        self._snapshot_payload: bytes | None = None  # the latest event's JPEG, retained
        self._snapshot_dirty = False
        # The rest belongs to the network thread alone (reset per connection).
        self._ready = False
        self._inflight: dict[int, tuple[int, int]] = {}  # mid -> (seq, bytes)
        self._inflight_bytes = 0
        self._early_acks: set[int] = set()  # QoS 0 mids acked inside publish() itself
        self._control: dict[int, str] = {}  # mid -> topic of retained control messages
        self._online_sent = False
        self._backlog_empty = False
        self._discovery_due: float | None = None
        self._offline_mid: int | None = None
        self._refused = False  # this connection's CONNACK said no (on_connect told why)
        self._disconnect_sent = False

    # -- other threads -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Make the network thread look at the outbox now (a local socketpair, no network)."""
        self._waker.wake()

    def request_online(self) -> None:
        with self._lock:
            self._online_wanted = True
        self.wake()

    def request_state(self, payload: bytes) -> None:
        with self._lock:
            self._state_payload = payload
            self._state_dirty = True
        self.wake()

    def request_snapshot(self, jpeg: bytes) -> None:
        with self._lock:
            self._snapshot_payload = jpeg
            self._snapshot_dirty = True
        self.wake()

    def snapshot(self) -> tuple[ConnectionState, str, int, int]:
        with self._lock:
            return self._state, self._reason, self._published, self._acknowledged

    def close(self, timeout: float) -> None:
        """Deliver what we can within `timeout`, publish `offline` (retained), disconnect."""
        if self._closing.is_set():
            return
        now = time.monotonic()
        self._drain_until = now + 0.6 * timeout
        self._give_up_at = now + 0.9 * timeout
        self._closing.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("mqtt: the network thread did not stop within %.1f s", timeout)
                return
        self._set_state(ConnectionState.CLOSED, "")
        self._waker.close()

    # -- the network thread --------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.retry)
        try:
            while not self._closing.is_set():
                client = self._new_client()
                try:
                    client.connect(
                        self.settings.host, self.settings.port, self.settings.keepalive_s
                    )
                except Exception as error:  # OSError (refused, DNS, TLS, timeout), ValueError
                    self._set_state(ConnectionState.DISCONNECTED, describe_error(error))
                    self._closing.wait(backoff.next_delay())
                    continue
                started = time.monotonic()
                try:
                    self._serve(client)
                except Exception as error:  # a bug, not the network: say so, carry on
                    log.exception("mqtt: unexpected error on the connection; reconnecting")
                    self._set_state(ConnectionState.DISCONNECTED, f"internal error: {error}")
                if self._closing.is_set():
                    break
                unauthorized = self.snapshot()[0] is ConnectionState.UNAUTHORIZED
                if not unauthorized and time.monotonic() - started >= self.retry.stable_s:
                    backoff.reset()
                self._closing.wait(backoff.next_delay(unauthorized))
        except Exception:
            log.exception("mqtt: the network thread failed; nothing more will be sent")
            self._set_state(ConnectionState.DISCONNECTED, "internal error (see the log)")

    def _new_client(self) -> Any:
        mqtt, settings = self._mqtt, self.settings
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.topics.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.retry.connect_timeout_s
        client.max_inflight_messages_set(WINDOW_MESSAGES)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls is not None:
            client.tls_set_context(settings.tls)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._ready = False
        self._offline_mid = None
        self._refused = False
        self._disconnect_sent = False
        return client

    def _serve(self, client: Any) -> None:
        """The select loop for one connection; returns when its socket is gone."""
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while True:
            if self._closing.is_set() and self._finish(client):
                return
            if self._ready:
                self._pump(client)
            sock = client.socket()
            if sock is None:
                return
            now = time.monotonic()
            timeout = max(0.0, next_misc - now)
            if self._discovery_due is not None:
                timeout = min(timeout, max(0.0, self._discovery_due - now))
            if self._closing.is_set():
                timeout = min(timeout, 0.1)
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            if pending:
                timeout = 0.0
            writers = [sock] if client.want_write() else []
            readable, writable, _ = select.select([sock, self._waker], writers, [], timeout)
            if self._waker in readable:
                self._waker.drain()  # the outbox is looked at next, at the top of the loop
            if sock in readable or pending:
                client.loop_read()
            if sock in writable and client.socket() is not None:
                client.loop_write()
            if time.monotonic() >= next_misc:
                client.loop_misc()
                next_misc = time.monotonic() + MISC_INTERVAL_S

    def _pump(self, client: Any) -> None:
        """Publish what is due: discovery, availability, state, then events in seq order."""
        now = time.monotonic()
        if self._discovery_due is not None and now >= self._discovery_due:
            self._discovery_due = None
            for topic, payload in self.settings.discovery:
                self._publish_control(client, topic, payload)
        with self._lock:
            online = self._online_wanted and not self._online_sent
            state = self._state_payload if self._state_dirty else None
            self._state_dirty = False
            snapshot = self._snapshot_payload if self._snapshot_dirty else None
            self._snapshot_dirty = False
        if online and not self._closing.is_set():
            self._publish_control(client, self.topics.availability, ONLINE)
            self._online_sent = True
        if state is not None:
            self._publish_control(client, self.topics.state, state)
        if snapshot is not None:
            self._publish_control(client, self.topics.snapshot, snapshot)
        qos = self.settings.qos
        while True:
            room = WINDOW_MESSAGES - len(self._inflight)
            room_bytes = WINDOW_BYTES - self._inflight_bytes
            if room <= 0 or room_bytes <= 0:
                self._backlog_empty = False
                return
            batch = self.outbox.claim(room, room_bytes)
            if not batch:
                self._backlog_empty = True
                return
            for seq, payload in batch:
                info = client.publish(self.topics.events, payload, qos=qos)
                if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                    return  # the connection went; the next CONNACK rewinds the outbox
                with self._lock:
                    self._published += 1
                self._inflight[info.mid] = (seq, len(payload))
                self._inflight_bytes += len(payload)
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    self._acked(info.mid)

    def _publish_control(self, client: Any, topic: str, payload: bytes) -> int | None:
        info = client.publish(topic, payload, qos=1, retain=True)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            return None
        self._control[info.mid] = topic
        return int(info.mid)

    def _finish(self, client: Any) -> bool:
        """While closing: True when this connection is done (then it has been told so)."""
        now = time.monotonic()
        if not self._ready:
            self._disconnect(client)
            return True
        if now < self._drain_until and (self._inflight or not self._backlog_empty):
            return False  # still delivering what is queued
        if self._offline_mid is None:
            self._offline_mid = self._publish_control(client, self.topics.availability, OFFLINE)
        acked = self._offline_mid is None or self._offline_mid not in self._control
        if acked or now >= self._give_up_at:
            self._disconnect(client)
            return client.socket() is None or now >= self._give_up_at
        return False

    def _disconnect(self, client: Any) -> None:
        # A clean DISCONNECT: the broker discards the will (we said offline ourselves).
        if not self._disconnect_sent:
            self._disconnect_sent = True
            client.disconnect()

    # -- paho callbacks (on the network thread, inside loop_read/loop_write) -------------

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = True
            name = str(reason)
            if name in UNAUTHORIZED:
                self._set_state(ConnectionState.UNAUTHORIZED, name)
            else:
                self._set_state(ConnectionState.DISCONNECTED, f"refused by the broker: {name}")
            return
        self._ready = True
        self._inflight.clear()
        self._inflight_bytes = 0
        self._early_acks.clear()
        self._control.clear()
        self._online_sent = False
        self._backlog_empty = False
        self.outbox.rewind()
        with self._lock:
            self._state_dirty = self._state_payload is not None
            self._snapshot_dirty = self._snapshot_payload is not None
        subscriptions = []
        if self.settings.commands:
            subscriptions.append((self.topics.commands, 1))
        if self.settings.discovery:
            self._discovery_due = time.monotonic()
            subscriptions.append((self.topics.ha_status, 1))
        if subscriptions:
            client.subscribe(subscriptions)
        self._set_state(ConnectionState.CONNECTED, "")

    def _on_disconnect(
        self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was_ready, self._ready = self._ready, False
        if self._closing.is_set() or self._refused:
            return  # our own goodbye, or on_connect already said why
        name = str(reason)
        if name == "Unspecified error":
            name = "connection lost" if was_ready else "the broker closed the connection"
        elif name == "Keep alive timeout":
            name = "no answer from the broker within the keep-alive"
        self._set_state(ConnectionState.DISCONNECTED, name)

    def _on_publish(
        self, _client: Any, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        if mid in self._inflight:
            self._acked(mid)
        elif self._control.pop(mid, None) is None:
            self._early_acks.add(mid)  # a QoS 0 event written before publish() returned

    def _acked(self, mid: int) -> None:
        seq, size = self._inflight.pop(mid)
        self._inflight_bytes -= size
        self.outbox.ack(seq, size)
        with self._lock:
            self._acknowledged += 1

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        if message.topic == self.topics.commands:
            self._command(message.payload, bool(message.retain))
        elif (
            message.topic == self.topics.ha_status
            and message.payload.strip() == b"online"
            and not message.retain
        ):
            # Home Assistant (re)started: send discovery again, after a random delay.
            delay = random.uniform(0, DISCOVERY_DELAY_MAX_S)
            self._discovery_due = time.monotonic() + delay
            with self._lock:
                self._state_dirty = self._state_payload is not None

    def _command(self, payload: bytes, retained: bool) -> None:
        parsed = parse_command(payload, retained)
        if not isinstance(parsed, Command) or self._on_command is None:
            why = parsed if not isinstance(parsed, Command) else "commands have no handler"
            emit(
                log,
                logging.WARNING,
                Event.MQTT,
                "mqtt: rejected a message on %s: %s (payload: %s)",
                self.topics.commands,
                why,
                describe(payload),
                mqtt_command=describe(payload),
                mqtt_reason=why,
                result="rejected",
            )
            return
        emit(
            log,
            logging.INFO,
            Event.MQTT,
            "mqtt: command %s received on %s",
            parsed.value,
            self.topics.commands,
            mqtt_command=parsed.value,
            result="accepted",
        )
        try:
            self._on_command(parsed)
        except Exception:
            log.exception("mqtt: handling the %s command failed", parsed.value)

    # -- state changes, logged once each -------------------------------------------------

    def _set_state(self, state: ConnectionState, reason: str) -> None:
        with self._lock:
            previous, self._state, self._reason = self._state, state, reason
        if state is previous:
            return
        settings = self.settings
        where = f"{settings.host}:{settings.port}"
        depth = self.outbox.counts().depth
        if state is ConnectionState.CONNECTED:
            emit(
                log,
                logging.INFO,
                Event.MQTT,
                "mqtt: connected to %s as %s; %d events waiting in the outbox",
                where,
                self.topics.client_id,
                depth,
                mqtt_state=state.value,
                outbox_depth=depth,
            )
        elif state is ConnectionState.DISCONNECTED:
            emit(
                log,
                logging.WARNING,
                Event.MQTT,
                "mqtt: %s %s: %s; events wait in the outbox (%d now), retrying with backoff",
                "cannot reach the broker at"
                if previous is ConnectionState.CONNECTING
                else "disconnected from",
                where,
                reason,
                depth,
                mqtt_state=state.value,
                mqtt_reason=reason,
                outbox_depth=depth,
            )
        elif state is ConnectionState.UNAUTHORIZED:
            emit(
                log,
                logging.ERROR,
                Event.MQTT,
                "mqtt: the broker at %s refused the credentials of user %r (%s): check "
                "mqtt.username and mqtt.password_file; trying again every %.0f s",
                where,
                settings.username,
                reason,
                self.retry.unauthorized_s,
                mqtt_state=state.value,
                mqtt_reason=reason,
                outbox_depth=depth,
            )
        elif state is ConnectionState.CLOSED:
            emit(
                log,
                logging.INFO,
                Event.MQTT,
                "mqtt: closed; %d events stay in the outbox for the next start",
                depth,
                mqtt_state=state.value,
                outbox_depth=depth,
            )
