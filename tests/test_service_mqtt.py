"""The whole daemon on MQTT: a real `pi-daemon run` process, a real mosquitto, a real
subscriber, the health endpoint over real HTTP.

What the delivery package does on its own (outbox limits, torn tails, TLS, credentials) is
tested in test_mqtt_*.py; here it is the service that must deliver: every event the JSONL
file gets, with its identity, in order, across a broker outage and a daemon restart, with
the retained availability, state and last will, commands, and /healthz.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import write_sensor_files
from tests.mqtt_broker import (
    HOST,
    USERS,
    Broker,
    Subscriber,
    free_port,
    publish,
)

DEVICE = "pi-test"
BASE = f"pi-daemon/{DEVICE}"


def daemon_config(
    folder: Path,
    broker: Broker,
    photos: dict[str, Path],
    *,
    fps: float = 10.0,
    metrics_port: int | None = None,
    commands: bool = False,
    keepalive_s: int = 5,
    outbox_max_bytes: int = 16 * 1024 * 1024,
    extra: str = "",
) -> Path:
    password = folder / "mqtt-password"
    password.write_text(USERS["pi"] + "\n")
    password.chmod(0o600)
    paths = json.dumps([str(photos[name]) for name in ("coffee", "chelsea", "rocket")])
    metrics = (
        f'[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {metrics_port}\n'
        if metrics_port is not None
        else ""
    )
    text = f"""
source = "files"
[files]
paths = {paths}
loop = true
fps = {fps}
[output]
events_file = "{folder / "events.jsonl"}"
summary_interval_s = 1.0
clock_synced_path = "{folder / "synchronized"}"
[rules]
journal_results = "changes"
[mqtt]
enabled = true
host = "{HOST}"
port = {broker.port}
username = "pi"
password_file = "{password}"
device_id = "{DEVICE}"
keepalive_s = {keepalive_s}
outbox_fsync_interval_s = 0.2
outbox_max_bytes = {outbox_max_bytes}
commands = {"true" if commands else "false"}
{metrics}
{write_sensor_files(folder)}
{extra}
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


class Daemon:
    """`python -m pi_daemon run` with stderr kept in a file."""

    def __init__(self, config: Path, state: Path) -> None:
        self.log_path = config.with_name(f"daemon-{time.monotonic_ns()}.log")
        env = {**os.environ, "PI_DAEMON_LOG_TARGET": "stderr", "STATE_DIRECTORY": str(state)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pi_daemon", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log()}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def jsonl(folder: Path) -> list[dict]:
    path = folder / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait(predicate, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())


# -- events, identity, retained topics ------------------------------------------------------


def test_every_event_reaches_the_broker_in_order_with_its_identity_within_a_second(
    tmp_path, broker, photos, private_state_directory
):
    subscriber = Subscriber(broker, [f"{BASE}/#", "homeassistant/#"], client_id="ha-events")
    daemon = Daemon(daemon_config(tmp_path, broker, photos), private_state_directory)
    try:
        daemon.wait_for_log("ready: first frame", 60)
        (tmp_path / "synchronized").touch()  # NTP answers now
        assert subscriber.wait_for(
            lambda s: sum(e["type"] == "summary" for e in s.events()) >= 3, 30
        ), daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert subscriber.wait_for(lambda s: any(e["type"] == "stop" for e in s.events()), 10)
    received = subscriber.snapshot("/events")
    events = [m.json() for m in received]
    # The same events as the JSONL file, byte for byte the same objects, in seq order.
    assert events == jsonl(tmp_path)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    assert {(e["device_id"], e["boot_id"]) for e in events} == {(DEVICE, boot)}
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "stop" and "ready" in types
    assert {"result", "summary"} <= set(types)
    # clock_synced follows the flag file: false before it appeared, true after.
    synced = [e["clock_synced"] for e in events]
    assert synced[0] is False and synced[-1] is True and synced == sorted(synced)
    # A label change reaches the subscriber within a second of the frame it describes.
    changes = [
        m for m, previous in zip(received[1:], received, strict=False)
        if m.json()["type"] == "result"
        and previous.json().get("top", [{}])[0].get("label") != m.json()["top"][0]["label"]
    ]  # fmt: skip
    assert changes and max(m.received - m.json()["time"] for m in changes) < 1.0
    # Retained: online after the first frame, offline on the clean stop; the state and the
    # Home Assistant discovery documents.
    availability = [m.payload for m in subscriber.snapshot("/availability")]
    assert availability[0] == b"online" and availability[-1] == b"offline"
    state = subscriber.snapshot("/state")[-1].json()
    assert state["label"] in {"espresso", "tiger cat", "missile", "Egyptian cat", "tabby"}
    assert state["model_sha256"] == events[0]["model_sha256"] and state["paused"] is False
    discovery = [m for m in subscriber.snapshot() if m.topic.startswith("homeassistant/")]
    assert discovery
    subscriber.close()
    # What a dashboard that connects later sees: the retained documents.
    late = Subscriber(
        broker, [f"{BASE}/#", "homeassistant/#"], client_id="ha-late", clean_session=True
    )
    assert late.wait_for(lambda s: len(s.snapshot()) >= 2 + len(discovery), 10)
    retained = {m.topic: m for m in late.snapshot() if m.retain}
    assert retained[f"{BASE}/availability"].payload == b"offline"
    assert retained[f"{BASE}/state"].json() == state
    assert {m.topic for m in discovery} <= set(retained)
    assert not any(topic.endswith("/events") for topic in retained)
    late.close()


def test_a_broker_outage_loses_nothing_and_the_daemon_never_waits_for_it(
    tmp_path, broker, photos, private_state_directory
):
    """20 s without a broker: the daemon keeps classifying at its pace, and afterwards the
    subscriber (a persistent session) has every event, in order, no seq gap."""
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-outage")
    daemon = Daemon(daemon_config(tmp_path, broker, photos, fps=10), private_state_directory)
    try:
        daemon.wait_for_log("ready: first frame", 60)
        assert subscriber.wait_for(lambda s: len(s.events()) >= 5, 20)
        broker.stop()
        down_at = time.time()
        time.sleep(20)
        results_during = [
            e for e in jsonl(tmp_path) if e["type"] == "result" and e["time"] > down_at + 1
        ]
        broker.start()
        assert wait(lambda: daemon.log().count("mqtt: connected to") >= 2, 60), daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()
    # About 190 frames at 10 fps in 19 s; a loop that waited on the network would have
    # stalled (keepalive 5 s, reconnect backoff) and made far fewer.
    assert len(results_during) >= 100, len(results_during)
    assert subscriber.wait_for(lambda s: any(e["type"] == "stop" for e in s.events()), 30)
    seqs = sorted({e["seq"] for e in subscriber.events()})  # QoS 1 may repeat, never skip
    on_disk = [e["seq"] for e in jsonl(tmp_path)]
    assert seqs == on_disk
    assert "disconnected" in daemon.log()
    subscriber.close()


def test_events_from_before_a_restart_arrive_although_the_broker_was_down(
    tmp_path, broker, photos, private_state_directory
):
    subscriber = Subscriber(broker, [f"{BASE}/events"], client_id="ha-restart")
    broker.stop()
    config = daemon_config(tmp_path, broker, photos)
    first = Daemon(config, private_state_directory)
    first.wait_for_log("ready: first frame", 60)
    time.sleep(1.5)
    assert first.stop() == 0, first.log()
    written = jsonl(tmp_path)
    second = Daemon(config, private_state_directory)
    second.wait_for_log("ready: first frame", 60)
    broker.start()
    try:
        assert subscriber.wait_for(
            lambda s: {e["seq"] for e in s.events()} >= {e["seq"] for e in written}, 60
        ), second.log()
    finally:
        assert second.stop() == 0, second.log()
    assert subscriber.wait_for(
        lambda s: len({e["seq"] for e in s.events()}) == len(jsonl(tmp_path)), 30
    )
    seqs = sorted({e["seq"] for e in subscriber.events()})
    # A clean stop saves the exact next number: the second run continues without a gap.
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert written[0]["seq"] == seqs[0]
    subscriber.close()


def test_a_killed_daemon_goes_offline_through_its_last_will(
    tmp_path, broker, photos, private_state_directory
):
    subscriber = Subscriber(broker, [f"{BASE}/availability"], client_id="ha-will")
    daemon = Daemon(daemon_config(tmp_path, broker, photos, keepalive_s=2), private_state_directory)
    daemon.wait_for_log("ready: first frame", 60)
    assert subscriber.wait_for(lambda s: s.snapshot() and s.snapshot()[-1].payload == b"online", 20)
    killed = time.time()
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    assert subscriber.wait_for(lambda s: s.snapshot()[-1].payload == b"offline", 10)
    # A killed process's socket closes at once, so the broker sends the will at once.
    assert subscriber.snapshot()[-1].received - killed < 3.0
    subscriber.close()


# -- commands and health ---------------------------------------------------------------------


def test_pause_resume_reload_and_garbage_commands_and_what_healthz_says(
    tmp_path, broker, photos, private_state_directory
):
    port = free_port()
    subscriber = Subscriber(broker, [f"{BASE}/state"], client_id="ha-commands")
    daemon = Daemon(
        daemon_config(tmp_path, broker, photos, metrics_port=port, commands=True),
        private_state_directory,
    )
    try:
        daemon.wait_for_log("ready: first frame", 60)
        assert wait(lambda: health(port)[0] == 200, 20), health(port)
        _, body = health(port)
        assert body["status"] == "ok" and body["mqtt"] == "connected"
        assert body["model_sha256"] and body["outbox_depth"] is not None

        publish(broker, f"{BASE}/set", b'{"command": "pause"}')
        daemon.wait_for_log("MQTT command: pause", 10)
        assert subscriber.wait_for(lambda s: s.snapshot()[-1].json()["paused"] is True, 10)
        assert wait(lambda: health(port)[0] == 503, 10)
        assert health(port)[1]["reason"] == "inference paused by command"
        time.sleep(0.5)  # a frame in the interpreter may still finish
        paused_at = time.time()
        time.sleep(1.5)
        assert not [e for e in jsonl(tmp_path) if e["type"] == "result" and e["time"] > paused_at]

        for garbage in (b"not json", b'{"command": "format-sd-card"}', b'{"cmd": "pause"}'):
            publish(broker, f"{BASE}/set", garbage)
        assert wait(lambda: daemon.log().count("mqtt: rejected a message") == 3, 10), daemon.log()

        publish(broker, f"{BASE}/set", b'{"command": "resume"}')
        assert subscriber.wait_for(lambda s: s.snapshot()[-1].json()["paused"] is False, 10)
        resumed_at = time.time()
        assert wait(
            lambda: any(e["type"] == "result" and e["time"] > resumed_at for e in jsonl(tmp_path)),
            10,
        )
        assert wait(lambda: health(port)[0] == 200, 10)

        publish(broker, f"{BASE}/set", b'{"command": "reload"}')
        daemon.wait_for_log("reloaded: model", 30)
    finally:
        assert daemon.stop() == 0, daemon.log()
    reloads = [e for e in jsonl(tmp_path) if e["type"] == "reload"]
    assert [e["result"] for e in reloads] == ["ok"]
    assert "Traceback" not in daemon.log()
    subscriber.close()


def test_healthz_turns_unhealthy_when_the_outbox_fills(
    tmp_path, broker, photos, private_state_directory
):
    port = free_port()
    daemon = Daemon(
        daemon_config(
            tmp_path, broker, photos, fps=50, metrics_port=port, outbox_max_bytes=64 * 1024
        ),
        private_state_directory,
    )
    try:
        daemon.wait_for_log("ready: first frame", 60)
        assert wait(lambda: health(port)[0] == 200, 20), health(port)
        broker.stop()
        assert wait(lambda: health(port)[0] == 503, 60), health(port)
        _, body = health(port)
        assert "MQTT outbox" in body["reason"] and "full" in body["reason"], body
        assert body["mqtt"] == "disconnected" and body["outbox_depth"] > 0
        # Then full: the oldest events go first, counted, and logged once per episode
        # however many are dropped.
        daemon.wait_for_log("mqtt outbox full", 60)
        time.sleep(2)
        assert daemon.log().count("mqtt outbox full") == 1
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.parametrize(
    ("mqtt", "fragment"),
    [
        ('password_file = "/nonexistent/password"', "mqtt.password_file"),
        ('tls = true\nca_file = "/nonexistent/ca.pem"', "mqtt.ca_file"),
        ('device_id = "a/b"', "mqtt.device_id"),
        ('topic_prefix = "+"', "mqtt.topic_prefix"),
    ],
)
def test_bad_mqtt_inputs_stop_the_service_with_78_before_anything_runs(
    tmp_path, cli, mqtt, fragment
):
    from tests.conftest import assert_one_line_error

    config = tmp_path / "config.toml"
    config.write_text(
        f'source = "files"\n[mqtt]\nenabled = true\nusername = "pi"\n{mqtt}\n'
        + write_sensor_files(tmp_path)
    )
    result = cli("run", "--config", str(config), env={"PI_DAEMON_LOG_TARGET": "stderr"})
    assert_one_line_error(result, 78, fragment)


def test_prometheus_shows_the_delivery(tmp_path, broker, photos, private_state_directory):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    daemon = Daemon(
        daemon_config(tmp_path, broker, photos, metrics_port=port), private_state_directory
    )

    def scrape() -> dict[str, dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return {
            name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
            for name, family in families.items()
        }

    try:
        daemon.wait_for_log("ready: first frame", 60)
        assert wait(lambda: scrape()["pi_daemon_mqtt_connected"][()] == 1.0, 20)
        assert wait(lambda: scrape()["pi_daemon_mqtt_acknowledged"][()] >= 5, 20)
        broker.stop()
        assert wait(lambda: scrape()["pi_daemon_mqtt_connected"][()] == 0.0, 30)
        assert wait(lambda: scrape()["pi_daemon_mqtt_outbox_events"][()] > 0, 20)
        metrics = scrape()
    finally:
        assert daemon.stop() == 0, daemon.log()
    acked, published = (
        metrics["pi_daemon_mqtt_acknowledged"][()],
        metrics["pi_daemon_mqtt_published"][()],
    )
    assert published >= acked >= 5
    assert metrics["pi_daemon_mqtt_outbox_bytes"][()] > 0
    assert metrics["pi_daemon_mqtt_outbox_capacity_bytes"][()] == 16 * 1024 * 1024
    assert metrics["pi_daemon_mqtt_outbox_dropped"] == {
        (("reason", "full"),): 0.0,
        (("reason", "oversized"),): 0.0,
    }
    assert metrics["pi_daemon_frames_skipped"][()] == 0.0  # no motion gate configured
