"""Delivery against a real mosquitto (persistence, passwords, an ACL) on loopback, with real
publisher processes and a real paho subscriber: outages, restarts, kills, the last will,
the cap, torn tails, commands, credentials, TLS, and a submit() that never waits."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt (the mqtt extra) is not installed")

from pi_daemon.config import MqttSection, load_config, replace
from pi_daemon.errors import ConfigError
from pi_daemon.mqtt import Command, ConnectionState, Delivery, DeviceState, RetryPolicy
from pi_daemon.mqtt.link import WINDOW_MESSAGES
from pi_daemon.mqtt.store import scan_wal
from tests.conftest import REPO
from tests.mqtt_broker import (
    HOST,
    USERS,
    Broker,
    Subscriber,
    make_certificates,
    publish,
)

if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
    pytest.skip(
        "mosquitto is not installed (apt-get install mosquitto mosquitto-clients; "
        ".ci/apt-packages.txt lists it)",
        allow_module_level=True,
    )

DEVICE = "pi-test"
BASE = f"pi-daemon/{DEVICE}"
FAST_RETRY = RetryPolicy(initial_s=0.2, max_s=1.0, stable_s=1.0)
# The broker's in-flight window towards one subscriber (mosquitto's max_inflight_messages).
BROKER_WINDOW = 20


def password_file(folder: Path, password: str = USERS["pi"]) -> Path:
    path = folder / "mqtt-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def write_config(folder: Path, port: int, **keys: Any) -> Path:
    values: dict[str, Any] = {
        "enabled": True,
        "host": HOST,
        "port": port,
        "username": "pi",
        "password_file": str(password_file(folder, keys.pop("password", USERS["pi"]))),
        "device_id": DEVICE,
        "keepalive_s": 5,
        "outbox_fsync_interval_s": 0.2,
        **keys,
    }
    body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    path = folder / "config.toml"
    path.write_text("[mqtt]\n" + body)
    return path


def section_for(folder: Path, port: int, **keys: Any) -> MqttSection:
    return load_config(write_config(folder, port, **keys)).mqtt


def event(seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "result",
        "device_id": DEVICE,
        "boot_id": "0" * 32,
        "seq": seq,
        "time": time.time(),
        "monotonic": time.monotonic(),
        "clock_synced": True,
        **extra,
    }


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def seqs(subscriber: Subscriber) -> list[int]:
    return [item["seq"] for item in subscriber.events()]


def assert_in_order_without_gaps(received: list[int], expected: list[int], allowed_dups: int):
    """Every expected seq arrived; first arrivals in seq order; duplicates only as QoS 1's
    at-least-once allows (events in flight when a connection died)."""
    first_seen: list[int] = []
    seen: set[int] = set()
    for seq in received:
        if seq not in seen:
            seen.add(seq)
            first_seen.append(seq)
    assert first_seen == expected, _first_difference(first_seen, expected)
    duplicates = len(received) - len(first_seen)
    assert duplicates <= allowed_dups, f"{duplicates} duplicates, more than {allowed_dups}"
    return duplicates


def _first_difference(got: list[int], want: list[int]) -> str:
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"at {index}: got {got[index : index + 5]}, want {want[index : index + 5]}"
    return f"lengths {len(got)} vs {len(want)}"


class Publisher:
    """tests/mqtt_publisher.py as a real process; its stdout lines parsed as they come."""

    def __init__(self, config: Path, state_dir: Path, *args: str) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log = state_dir / f"publisher-{time.monotonic_ns()}.log"
        self._stderr = open(self.log, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.mqtt_publisher", str(config), str(state_dir), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO,
        )
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards lines
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def last(self, key: str = "submitted") -> dict[str, Any]:
        with self._lock:
            for line in reversed(self.lines):
                if key in line:
                    return line
        return {}

    def submitted(self) -> int:
        return int(self.last().get("submitted", 0))

    def status(self) -> dict[str, Any]:
        return self.last().get("status", {})

    def commands(self) -> list[str]:
        with self._lock:
            return [line["command"] for line in self.lines if "command" in line]

    def terminate(self, timeout: float = 30) -> dict[str, Any]:
        self.process.terminate()
        self.wait(timeout)
        return self.last("done")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        self._stderr.close()
        return code

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


# -- delivery on a healthy broker ----------------------------------------------------------


def test_events_arrive_within_a_second_in_order(broker, tmp_path):
    subscriber = Subscriber(broker, [f"{BASE}/#"], client_id="ha-latency")
    delivery = Delivery(section_for(tmp_path, broker.port), DEVICE, tmp_path, retry=FAST_RETRY)
    delivery.start()
    assert wait_until(lambda: delivery.status().connected, 10)
    costs = []
    for seq in range(1, 501):
        item = event(seq, top=[{"label": "tabby", "index": 281, "score": 0.5}])
        started = time.perf_counter()
        delivery.submit(item)
        costs.append(time.perf_counter() - started)
        time.sleep(0.01)
    assert subscriber.wait_for(lambda s: len(s.events()) >= 500, 10)
    received = subscriber.snapshot("/events")
    latencies = sorted(m.received - m.json()["time"] for m in received)
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
    print(
        f"event to subscriber on loopback: p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms, "
        f"max {latencies[-1] * 1e3:.1f} ms; submit() p50 {statistics.median(costs) * 1e6:.0f} "
        f"us, max {max(costs) * 1e3:.2f} ms"
    )
    assert latencies[-1] < 1.0, latencies[-10:]
    assert seqs(subscriber) == list(range(1, 501))  # no reconnect: exactly once each
    # The subscriber can see the last event before its PUBACK is back at the publisher.
    assert wait_until(lambda: delivery.status().acknowledged == 500, 5)
    status = delivery.status()
    assert (status.published, status.acknowledged, status.outbox_depth) == (500, 500, 0)
    delivery.close()
    subscriber.close()


def test_availability_state_and_discovery_are_retained(broker, tmp_path):
    delivery = Delivery(section_for(tmp_path, broker.port), DEVICE, tmp_path, retry=FAST_RETRY)
    delivery.start()
    delivery.set_online()
    for label in ("cat", "dog", "tabby"):  # latest wins
        delivery.publish_state(DeviceState(label, 0.75, 9.0, "warm", 70.5, False, "a" * 64))
    assert wait_until(lambda: delivery.status().connected, 10)
    time.sleep(0.5)
    # A subscriber that comes later (Home Assistant starting) gets the retained messages.
    late = Subscriber(broker, [f"{BASE}/#", "homeassistant/#"], client_id="ha-late")
    assert late.wait_for(lambda s: len(s.snapshot("/config")) >= 7, 5)
    assert late.wait_for(lambda s: s.snapshot("/state"), 5)
    availability = late.snapshot("/availability")
    assert [m.payload for m in availability] == [b"online"] and availability[0].retain
    state = late.snapshot("/state")[-1]
    assert state.retain and state.json()["label"] == "tabby" and not state.json()["paused"]
    configs = late.snapshot("/config")
    assert all(m.retain for m in configs) and len({m.topic for m in configs}) == 7
    # Home Assistant's birth message: discovery is sent again (after a random delay).
    publish(broker, "homeassistant/status", b"online")
    assert late.wait_for(lambda s: len(s.snapshot("/config")) >= 14, 10)
    # A clean close says offline, retained.
    delivery.close()
    assert late.wait_for(lambda s: s.snapshot("/availability")[-1].payload == b"offline", 5)
    late.close()
    again = Subscriber(broker, [f"{BASE}/availability"], client_id="ha-again")
    assert again.wait_for(lambda s: [m.payload for m in s.snapshot()] == [b"offline"], 5)
    again.close()


def test_qos_0_events_leave_the_outbox_once_written(broker, tmp_path):
    subscriber = Subscriber(broker, [f"{BASE}/#", "homeassistant/#"], client_id="ha-qos0")
    section = section_for(tmp_path, broker.port, qos=0, discovery=False)
    delivery = Delivery(section, DEVICE, tmp_path, retry=FAST_RETRY)
    delivery.start()
    assert wait_until(lambda: delivery.status().connected, 10)
    for seq in range(1, 201):
        delivery.submit(event(seq))
    assert subscriber.wait_for(lambda s: len(s.events()) >= 200, 10)
    assert seqs(subscriber) == list(range(1, 201))
    status = delivery.status()
    assert (status.published, status.acknowledged, status.outbox_depth) == (200, 200, 0)
    assert not subscriber.snapshot("/config"), "discovery = false publishes no discovery"
    delivery.close()
    subscriber.close()


# -- outages and restarts --------------------------------------------------------------------


@pytest.mark.slow
def test_a_20_s_broker_outage_loses_nothing(broker, tmp_path):
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-outage")
    publisher = Publisher(write_config(tmp_path, broker.port), tmp_path / "state", "--rate", "20")
    assert subscriber.wait_for(lambda s: len(s.events()) >= 20, 15), publisher.stderr()
    broker.stop()
    stopped_at = time.time()
    seq_at_stop = publisher.submitted()
    time.sleep(20)
    down = publisher.status()
    assert down["state"] == "disconnected" and down["depth"] > 300, down
    restarted_at = time.time()
    broker.start()
    assert wait_until(lambda: publisher.status().get("state") == "connected", 15)
    assert subscriber.wait_for(lambda s: max(seqs(s), default=0) >= publisher.submitted(), 30)
    done = publisher.terminate()
    last = done["done"]
    assert subscriber.wait_for(lambda s: set(range(1, last + 1)) <= set(seqs(s)), 15)
    received = subscriber.events()
    duplicates = assert_in_order_without_gaps(
        [item["seq"] for item in received],
        list(range(1, last + 1)),
        WINDOW_MESSAGES + BROKER_WINDOW,
    )
    # Events made during the outage kept the timestamps they were made with.
    during = [item for item in received if seq_at_stop + 5 < item["seq"] < seq_at_stop + 300]
    assert during and all(stopped_at - 1 < item["time"] < restarted_at for item in during)
    assert done["status"]["dropped"] == {"full": 0, "oversized": 0}
    print(f"20 s outage: {last} events, {duplicates} duplicates, none lost")
    stderr = publisher.stderr()
    # State changes logged once each, not a line per retry.
    assert stderr.count("mqtt: disconnected") == 1, stderr
    assert stderr.count("mqtt: connected") == 2, stderr
    subscriber.close()


@pytest.mark.slow
def test_restarting_the_publisher_while_the_broker_is_down_keeps_its_events(broker, tmp_path):
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-restart")
    config = write_config(tmp_path, broker.port)
    state = tmp_path / "state"
    first = Publisher(config, state, "--rate", "50")
    assert subscriber.wait_for(lambda s: len(s.events()) >= 10, 15), first.stderr()
    broker.stop()
    time.sleep(2)
    done_first = first.terminate()["done"]  # a clean stop with the broker away
    # The second is killed: it keeps what its outbox had synced.
    second = Publisher(config, state, "--rate", "50")
    assert wait_until(lambda: second.status().get("synced_seq", 0) > done_first + 50, 15)
    time.sleep(1)
    synced_second = second.status()["synced_seq"]
    second.kill()
    # The third finds both in the outbox, and delivers them once the broker is back.
    third = Publisher(config, state, "--rate", "50")
    assert wait_until(lambda: third.submitted() > 0, 15)
    broker.start()
    assert subscriber.wait_for(lambda s: max(seqs(s), default=0) >= third.submitted(), 30)
    done_third = third.terminate()["done"]
    assert subscriber.wait_for(lambda s: max(seqs(s), default=0) >= done_third, 15)
    received = seqs(subscriber)
    have = set(received)
    assert set(range(1, done_first + 1)) <= have, "a clean stop with the broker away lost events"
    second_first = second.lines[0]["submitted"]
    assert set(range(second_first, synced_second + 1)) <= have, "kill -9 lost synced events"
    third_first = third.lines[0]["submitted"]
    assert set(range(third_first, done_third + 1)) <= have
    # In seq order: the first process's, the second's, the third's.
    first_arrivals = list(dict.fromkeys(received))
    assert first_arrivals == sorted(first_arrivals)
    print(
        f"restarts with the broker away: {done_first} + {synced_second - second_first + 1} "
        f"(synced before kill -9) + {done_third - third_first + 1} events, all delivered"
    )
    subscriber.close()


@pytest.mark.slow
def test_sigkill_and_a_silent_pi_show_offline_through_the_last_will(broker, tmp_path):
    keepalive = 3
    subscriber = Subscriber(broker, [f"{BASE}/availability"], client_id="ha-will")
    config = write_config(tmp_path, broker.port, keepalive_s=keepalive)
    availability = lambda: [m.payload for m in subscriber.snapshot()]  # noqa: E731
    # Killed: the kernel closes its socket; the broker publishes the will at once.
    killed = Publisher(config, tmp_path / "a", "--online")
    assert subscriber.wait_for(lambda s: availability()[-1:] == [b"online"], 10)
    killed.kill()
    killed_at = time.monotonic()
    assert subscriber.wait_for(lambda s: availability()[-1:] == [b"offline"], 1.5 * keepalive)
    print(f"SIGKILL: offline after {time.monotonic() - killed_at:.2f} s")
    # Frozen (an unplugged Pi: no FIN, no pings): the broker gives up after 1.5 x keepalive.
    frozen = Publisher(config, tmp_path / "b", "--online")
    assert subscriber.wait_for(lambda s: availability()[-1:] == [b"online"], 10)
    frozen.process.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    # mosquitto 2.0 counts keep-alive in whole seconds and checks once a second: an idle
    # machine sees the will 5-6 s after a 3 s keep-alive went silent. The deadline leaves
    # room for a loaded CI machine and still tells the configured keep-alive from paho's
    # default of 60 s.
    assert subscriber.wait_for(lambda s: availability()[-1:] == [b"offline"], 3 * keepalive + 3)
    silent_for = time.monotonic() - frozen_at
    print(f"silent Pi: offline after {silent_for:.2f} s (keepalive {keepalive} s)")
    assert silent_for >= keepalive  # from the broker's keep-alive, not from anything else
    frozen.kill()
    will = subscriber.snapshot()[-1]
    assert will.payload == b"offline"
    subscriber.close()


# -- the outbox's cap and its torn tail, end to end -----------------------------------------


def sized_event(seq: int, size: int) -> dict[str, Any]:
    item = event(seq, pad="")
    item["pad"] = "x" * (size - len(msgspec.json.encode(item)))
    assert len(msgspec.json.encode(item)) == size
    return item


def test_an_outbox_at_its_cap_drops_the_oldest_and_counts_them(broker, tmp_path, caplog):
    capacity, size, total = 64 * 1024, 1000, 200
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-cap")
    section = section_for(tmp_path, broker.port, outbox_max_bytes=capacity)
    broker.stop()  # the broker is away while the outbox fills
    delivery = Delivery(section, DEVICE, tmp_path, retry=FAST_RETRY)
    delivery.start()
    for seq in range(1, total + 1):
        delivery.submit(sized_event(seq, size))
        time.sleep(0.002)
    kept = capacity // size
    assert wait_until(lambda: delivery.status().outbox_depth == kept, 5), delivery.status()
    status = delivery.status()
    assert status.dropped == {"full": total - kept, "oversized": 0}
    assert status.outbox_bytes == kept * size <= capacity
    full = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(full) == 1, "logged once per episode, not per event"
    broker.start()  # the subscriber's session survives (persistence)
    assert subscriber.wait_for(lambda s: len(s.events()) >= kept, 15)
    time.sleep(0.5)
    assert seqs(subscriber) == list(range(total - kept + 1, total + 1))
    assert delivery.status().dropped["full"] == total - kept
    delivery.close()
    subscriber.close()


def test_a_torn_outbox_tail_is_survived(broker, tmp_path):
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-torn")
    broker.stop()
    config = write_config(tmp_path, broker.port, outbox_fsync_interval_s=0.2)
    state = tmp_path / "state"
    crashed = Publisher(config, state, "--rate", "200")
    assert wait_until(lambda: crashed.status().get("synced_seq", 0) > 300, 20)
    crashed.kill()
    wal = state / "mqtt-outbox.sqlite3-wal"
    scan = scan_wal(wal)
    assert scan.frames > 2, scan
    with open(wal, "r+b") as handle:  # the last write torn in half
        handle.truncate(32 + (scan.frames - 1) * scan.frame_size + 1000)
    crashed_last = crashed.submitted()
    broker.start()
    survivor = Publisher(config, state, "--rate", "50")
    assert wait_until(lambda: survivor.submitted() > 0, 15)
    survivor_first = survivor.lines[0]["submitted"]
    assert subscriber.wait_for(lambda s: survivor_first + 20 in seqs(s), 20), survivor.stderr()
    done = survivor.terminate()["done"]
    assert subscriber.wait_for(lambda s: done in seqs(s), 10)
    assert survivor.stderr().count("torn tail") == 1, survivor.stderr()
    received = seqs(subscriber)
    # The crashed process's events up to the torn transaction: an unbroken run, in order
    # (the torn transaction itself is the one lost, as by a power cut mid-write).
    before = [seq for seq in received if seq <= crashed_last]
    assert before == list(range(1, len(before) + 1)) and len(before) > 100
    after = [seq for seq in received if seq >= survivor_first]
    assert after == list(range(survivor_first, done + 1))
    subscriber.close()


# -- commands --------------------------------------------------------------------------------


def test_commands_pause_resume_reload_and_garbage(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pi_daemon.mqtt")
    received: list[Command] = []
    section = section_for(tmp_path, broker.port, commands=True)
    delivery = Delivery(section, DEVICE, tmp_path, on_command=received.append, retry=FAST_RETRY)
    delivery.start()
    assert wait_until(lambda: delivery.status().connected, 10)
    time.sleep(0.3)  # the SUBACK
    topic = f"{BASE}/set"
    messages = [
        b'{"command": "pause"}',
        b"not json",
        b'{"command": "resume"}',
        b'{"command": "explode"}',
        b'{"command": "pause", "now": 1}',
        b'{"command": "reload"}',
    ]
    for payload in messages:
        publish(broker, topic, payload)
    expected = [Command.PAUSE, Command.RESUME, Command.RELOAD]
    assert wait_until(lambda: received == expected, 5), received

    def rejected() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "RESULT", "") == "rejected"]

    assert wait_until(lambda: len(rejected()) == 3, 5), [r.getMessage() for r in rejected()]
    assert all(r.PI_DAEMON_EVENT == "mqtt" and r.levelno == logging.WARNING for r in rejected())
    reasons = [r.MQTT_REASON for r in rejected()]
    assert "not JSON" in reasons[0] and "unknown command" in reasons[1]
    assert "unknown key" in reasons[2]
    # A retained command is never applied again on a reconnect.
    publish(broker, topic, b'{"command": "pause"}', retain=True)
    assert wait_until(lambda: len(received) == 4, 5)  # live: it is a command now
    broker.stop()
    broker.start()
    assert wait_until(lambda: delivery.status().connected, 10)
    assert wait_until(
        lambda: any("retained message ignored" in r.MQTT_REASON for r in rejected()), 5
    )
    assert received == [*expected, Command.PAUSE]
    publish(broker, topic, b"", retain=True)  # clear it
    delivery.close()


def test_commands_are_not_listened_to_unless_enabled(broker, tmp_path):
    received: list[Command] = []
    delivery = Delivery(
        section_for(tmp_path, broker.port), DEVICE, tmp_path, on_command=received.append
    )
    delivery.start()
    assert wait_until(lambda: delivery.status().connected, 10)
    publish(broker, f"{BASE}/set", b'{"command": "pause"}')
    time.sleep(0.5)
    assert received == []
    delivery.close()


# -- credentials and TLS ---------------------------------------------------------------------


@pytest.mark.slow
def test_wrong_credentials_error_once_and_retry_rarely(broker, tmp_path, caplog):
    retry = RetryPolicy(initial_s=0.2, max_s=0.5, unauthorized_s=3.0, jitter=0.0)
    section = section_for(tmp_path, broker.port, password="wrong")
    delivery = Delivery(section, DEVICE, tmp_path, retry=retry)
    delivery.start()
    attempts_before = broker.connection_attempts()
    for seq in range(1, 71):  # the daemon goes on; events wait in the outbox
        delivery.submit(event(seq))
        time.sleep(0.1)
    status = delivery.status()
    assert status.state is ConnectionState.UNAUTHORIZED and status.reason == "Not authorized"
    assert status.outbox_depth == 70
    attempts = broker.connection_attempts() - attempts_before
    assert 2 <= attempts <= 4, f"{attempts} attempts in 7 s with a 3 s backoff"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].MQTT_STATE == "unauthorized", errors
    assert "mqtt.password_file" in errors[0].getMessage()
    delivery.close()
    # Fixed credentials: everything queued meanwhile arrives.
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-creds")
    fixed = Delivery(section_for(tmp_path, broker.port), DEVICE, tmp_path, retry=FAST_RETRY)
    fixed.start()
    assert subscriber.wait_for(lambda s: len(s.events()) >= 70, 10)
    assert seqs(subscriber) == list(range(1, 71))
    fixed.close()
    subscriber.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_tls_with_a_client_certificate(tmp_path, certificates):
    server = Broker(tls=certificates)
    try:
        server.start()
        subscriber = Subscriber(server, [f"{BASE}/events"], client_id="ha-tls", tls=certificates)
        section = section_for(
            tmp_path,
            server.port,
            tls=True,
            ca_file=str(certificates.ca),
            cert_file=str(certificates.client_cert),
            key_file=str(certificates.client_key),
        )
        delivery = Delivery(section, DEVICE, tmp_path, retry=FAST_RETRY)
        delivery.start()
        for seq in range(1, 21):
            delivery.submit(event(seq))
        assert subscriber.wait_for(lambda s: len(s.events()) >= 20, 10), server.log_text()
        assert seqs(subscriber) == list(range(1, 21))
        delivery.close()
        subscriber.close()
    finally:
        server.cleanup()


def test_an_untrusted_broker_certificate_is_reported_not_fatal(tmp_path, certificates, caplog):
    server = Broker(tls=certificates)
    try:
        server.start()
        other = make_certificates(tmp_path / "other")  # a CA that did not sign the broker
        section = section_for(tmp_path, server.port, tls=True, ca_file=str(other.ca))
        delivery = Delivery(section, DEVICE, tmp_path, retry=FAST_RETRY)
        delivery.start()
        delivery.submit(event(1))
        assert wait_until(lambda: delivery.status().state is ConnectionState.DISCONNECTED, 10)
        time.sleep(1.5)  # several retries
        assert "not trusted" in delivery.status().reason
        warnings = [r for r in caplog.records if getattr(r, "MQTT_STATE", "") == "disconnected"]
        assert len(warnings) == 1 and "cannot reach the broker" in warnings[0].getMessage()
        assert delivery.status().outbox_depth == 1
        delivery.close()
    finally:
        server.cleanup()


def test_bad_local_inputs_are_config_errors(tmp_path, broker):
    loose = tmp_path / "loose-password"
    loose.write_text("pi-secret\n")
    loose.chmod(0o644)
    section = section_for(tmp_path, broker.port)
    cases = [
        ({"password_file": str(loose)}, "mqtt.password_file"),
        ({"password_file": str(tmp_path / "nope")}, "mqtt.password_file"),
        ({"tls": True, "ca_file": str(tmp_path / "nope.pem")}, "mqtt.ca_file"),
    ]
    for keys, key in cases:
        with pytest.raises(ConfigError) as error:
            Delivery(replace(section, **keys), DEVICE, tmp_path)
        assert str(error.value).startswith(key) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^mqtt.device_id: 'a/b'"):
        Delivery(section, "a/b", tmp_path)
    # A process ends on them like the daemon: one line on stderr, exit 78, no traceback.
    config = write_config(tmp_path, broker.port)
    config.write_text(config.read_text().replace(section.password_file, str(loose)))
    result = subprocess.run(
        [sys.executable, "-m", "tests.mqtt_publisher", str(config), str(tmp_path / "s")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    assert result.stderr.startswith("pi-daemon: mqtt.password_file:"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# -- submit() never waits on the network ------------------------------------------------------


class BlackHole:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


def timed_submits(delivery: Delivery, first: int, count: int, rate: float) -> list[float]:
    costs = []
    for seq in range(first, first + count):
        started = time.perf_counter()
        delivery.submit(event(seq, pad="x" * 300))
        costs.append(time.perf_counter() - started)
        time.sleep(1 / rate)
    return costs


# One call that waited on the network would last as long as the network stalls here:
# seconds (the TLS handshake's 8 s timeout, the 3 s keep-alive). 0.25 s is far below both,
# and far above what a call that only queues in memory takes on any machine (microseconds).
SUBMIT_BOUND_S = 0.25


@pytest.mark.slow
def test_submit_never_waits_on_a_broker_that_never_answers(tmp_path, certificates):
    hole = BlackHole()
    try:
        retry = RetryPolicy(initial_s=0.2, max_s=1.0, connect_timeout_s=8.0)
        section = section_for(tmp_path, hole.port, tls=True, ca_file=str(certificates.ca))
        delivery = Delivery(section, DEVICE, tmp_path, retry=retry)
        delivery.start()
        assert wait_until(lambda: hole.accepted, 5)
        # The network thread is now inside the TLS handshake, blocked until its timeout.
        started = time.monotonic()
        costs = timed_submits(delivery, 1, 300, rate=100)
        elapsed = time.monotonic() - started
        assert elapsed < 8.0 and len(hole.accepted) == 1, "the handshake ended meanwhile"
        assert delivery.status().state is ConnectionState.CONNECTING
        assert delivery.status().outbox_depth == 300
        print(
            f"submit() while the network thread is stuck in a handshake: p50 "
            f"{statistics.median(costs) * 1e6:.0f} us, max {max(costs) * 1e3:.2f} ms"
        )
        assert max(costs) < SUBMIT_BOUND_S
        delivery.close(timeout=2.0)
    finally:
        hole.close()


@pytest.mark.slow
def test_submit_never_waits_on_a_frozen_broker(broker, tmp_path):
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-frozen")
    section = section_for(tmp_path, broker.port, keepalive_s=3)
    delivery = Delivery(section, DEVICE, tmp_path, retry=FAST_RETRY)
    delivery.start()
    assert wait_until(lambda: delivery.status().connected, 10)
    costs = timed_submits(delivery, 1, 50, rate=100)
    broker.freeze()  # connected, then silent: no PUBACK, no PINGRESP, no CONNACK
    try:
        costs += timed_submits(delivery, 51, 900, rate=100)  # 9 s: past 2 x keepalive
        frozen = delivery.status()
    finally:
        broker.thaw()
    assert frozen.state is not ConnectionState.CONNECTED, frozen
    print(
        f"submit() while the broker is frozen: p50 {statistics.median(costs) * 1e6:.0f} us, "
        f"max {max(costs) * 1e3:.2f} ms"
    )
    assert max(costs) < SUBMIT_BOUND_S
    assert subscriber.wait_for(lambda s: set(range(1, 951)) <= set(seqs(s)), 30)
    assert_in_order_without_gaps(
        seqs(subscriber), list(range(1, 951)), 2 * (WINDOW_MESSAGES + BROKER_WINDOW)
    )
    delivery.close()
    subscriber.close()
