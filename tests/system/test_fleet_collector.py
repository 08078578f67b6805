"""A small fleet and its collector, booted under systemd-nspawn and provisioned by one site.yml run.

One collector and three Pis boot as containers on a private network that this test builds
itself (tests/system/fleetnet.py): a network namespace per container, joined by veths to
one bridge in a hub namespace, a static address each on 10.77.0.0/24 and the fleet's names
in /etc/hosts. No namespace has a route anywhere else, so nothing here can reach the
host's network or the internet, and the test's own clients (an MQTT consumer, probes, the
Prometheus API) run inside those namespaces too.

The containers cannot reach apt or PyPI, so every package is installed before they boot:
the session's `converged_fleet` (conftest.py: a collector and a Pi that one site.yml run
over the chroot connection provisioned together) is cloned, the Pi three times, each clone
with its own host name, machine id and address (and no key: each Pi makes its own). Then one
site.yml run over the nsenter connection provisions all four live hosts on their new
addresses (a certificate and credentials per host, from the same CA on the controller),
and the test asserts, from what an operator sees:

1. the Pis' journals on the collector (`journalctl -D /var/log/journal/remote`), told apart
   by `_HOSTNAME`, with their ready and summary entries;
2. a consumer subscriber gets every Pi's events, each with its own device_id and rising seq;
3. a Pi cannot publish under another Pi's topic; anonymous and certificate-less clients are
   refused;
4. Prometheus scrapes all three over TLS (up == 1, three frame counters); a scrape without
   a client certificate is refused;
5. a hot Pi raises the running-hot alert;
6. a minute's outage of the collector loses nothing: every event reaches the consumer
   without a seq gap, and the journals catch up;
7. a second run and a --check run change nothing, on the collector too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.system import fleetnet, nspawn
from tests.system import rootfs as rf
from tests.system.ansible_checks import assert_nothing_changed
from tests.system.conftest import (
    TIMINGS,
    ConvergedFleet,
    RootfsFactory,
    allow_service_starts,
)
from tests.system.fleetnet import FleetNet
from tests.system.nspawn import UNIT, Container, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

COLLECTOR = "collector"
PIS = ("pi-a", "pi-b", "pi-c")
REPO = rf.REPO

# --- What the collector role sets up (ansible/roles/collector/README.md) -------------------
TOPIC_PREFIX = "pi-daemon"
MQTT_PORT = 8883
METRICS_PORT = 9110
PROMETHEUS_API = "http://127.0.0.1:9090/api/v1"
REMOTE_JOURNALS = "/var/log/journal/remote"
# The fleet_ca role's files on each host (its README): the key is made there.
HOST_TLS_FILES = ("/etc/fleet-ca/host.key", "/etc/fleet-ca/host.pem")
CA_CERT = "fleet-ca/ca.pem"  # on the controller, beside the inventory
# Each Pi's journal receiver: a socket, and the service it starts on the first upload.
RECEIVERS = tuple(
    f"pi-daemon-journal-remote@{name}.{kind}" for name in PIS for kind in ("socket", "service")
)
COLLECTOR_UNITS = ("mosquitto.service", "prometheus.service", "haproxy.service", *RECEIVERS)
HOT_ALERT = "PiDaemonRunningHot"
FRAME_COUNTER = "pi_daemon_frames_processed_total"
FLEET_TEST_VARS: dict[str, object] = {
    # Short enough for a test: scrape and evaluate every 2 s, the hot alert after 4 s.
    "collector_prometheus_scrape_interval": "2s",
    "collector_prometheus_evaluation_interval": "2s",
    "collector_alert_hot_for": "4s",
    # The Pis in one batch: this test is about the collector, test_fleet.py about rollouts.
    "rollout_serial": 3,
}
HOT_C = 78.5  # the daemon's throttle: hot from 78 °C, critical (paused) from 79 °C
OUTAGE_S = 60.0
FPS = 2.0


# --- The fleet -----------------------------------------------------------------------------


@dataclass
class Consumer:
    """The consumer subscriber (a Home Assistant stand-in) in the collector's namespace."""

    process: subprocess.Popen[bytes]
    out: Path

    def records(self) -> list[dict[str, Any]]:
        with contextlib.suppress(FileNotFoundError):
            text = self.out.read_text(encoding="utf-8")
            return [json.loads(line) for line in text.splitlines() if line.endswith("}")]
        return []

    def events(self) -> dict[str, list[dict[str, Any]]]:
        """Per device_id (from the topic), the event payloads in arrival order, each with
        its arrival time as `_recv`."""
        found: dict[str, list[dict[str, Any]]] = {}
        for record in self.records():
            topic = record.get("topic", "")
            parts = topic.split("/")
            if len(parts) == 3 and parts[0] == TOPIC_PREFIX and parts[2] == "events":
                payload = json.loads(record["payload"])
                payload["_recv"] = record["recv"]
                payload["_topic_device"] = parts[1]
                found.setdefault(parts[1], []).append(payload)
        return found

    def payloads(self, topic: str) -> list[str]:
        return [r["payload"] for r in self.records() if r.get("topic") == topic]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Fleet:
    net: FleetNet
    containers: dict[str, Container]
    inventory: Path
    extra_vars: dict[str, object]
    workdir: Path
    cgroups_before: dict[Path, set[str]]
    consumer: Consumer | None = None
    provision: rf.PlaybookRun | None = None
    outage: tuple[float, float] | None = None  # wall-clock start and end

    @property
    def collector(self) -> Container:
        return self.containers[COLLECTOR]

    def run(self, *args: str) -> rf.PlaybookRun:
        return rf.run_playbook(self.inventory, *args, extra_vars=self.extra_vars)

    def client(self, host: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run a tests/system/fleet_clients.py command in `host`'s network namespace."""
        argv = [sys.executable, "-m", "tests.system.fleet_clients", *args]
        result = self.net.run(host, argv, timeout=timeout, cwd=REPO)
        assert result.returncode == 0, f"fleet_clients {args[0]}: {result.stderr[-2000:]}"
        return json.loads(result.stdout)

    def prometheus(self, path: str, **params: str) -> Any:
        """GET Prometheus's HTTP API on the collector; its `data`."""
        url = f"{PROMETHEUS_API}/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        answer = self.client(COLLECTOR, "get", url)
        assert answer.get("status") == 200, answer
        body = json.loads(answer["body"])
        assert body["status"] == "success", body
        return body["data"]

    def remote_journal(self, *args: str) -> list[dict[str, Any]]:
        """Entries of the journals the collector received (`journalctl -D`)."""
        return journal(self.collector, "-D", REMOTE_JOURNALS, *args)


def journal(c: Container, *args: str) -> list[dict[str, Any]]:
    """`journalctl -o json` entries inside a container (options and matches in `args`)."""
    out = c.check("journalctl", "--no-pager", "-o", "json", *args)
    return [
        {key: nspawn._decode(value) for key, value in json.loads(line).items()}
        for line in out.splitlines()
        if line.startswith("{")
    ]


def window(since: float, until: float) -> tuple[str, str]:
    """journalctl options for the entries made between two wall-clock times."""
    return f"--since=@{since:.6f}", f"--until=@{until:.6f}"


def fleet_inventory(
    path: Path, collector: dict[str, object], pis: dict[str, dict[str, object]]
) -> Path:
    """The inventory site.yml reads: the `collectors` group and the `pis` group."""
    inventory = {
        "collectors": {"hosts": {COLLECTOR: collector}},
        "pis": {"hosts": pis},
    }
    path.write_text(json.dumps(inventory, indent=2) + "\n", encoding="utf-8")
    return path


def pi_vars(**connection: object) -> dict[str, object]:
    """What the Pis run in this test: the files source (the bundled demo photos) at a
    steady pace, the test's sensor files, the health check on."""
    return {
        "pi_daemon_source": "files",
        "pi_daemon_files_fps": FPS,
        "pi_daemon_model_num_threads": 1,
        "pi_daemon_config_extra": nspawn.sensor_toml(),
        **connection,
    }


def personalise(root: Path, name: str, net: FleetNet) -> None:
    """A clone's own host name, machine id and the fleet's /etc/hosts."""
    (root / "etc/hostname").write_text(name + "\n", encoding="utf-8")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n", encoding="ascii")
    net.install_hosts(root)


@pytest.fixture(scope="module")
def fleet(
    converged_fleet: ConvergedFleet,
    rootfs_factory: RootfsFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """The session's converged collector and Pi (one site.yml run over chroot, so every
    package is there), cloned into one collector and three Pis, each with its own name,
    machine id and address, booted at once on the fleet network."""
    cgroups_before = nspawn.prepare_host_for_containers()
    fleetnet.sweep_stale_namespaces()
    workdir = tmp_path_factory.mktemp("fleet-collector")
    started = time.monotonic()
    # The controller's side: the same CA and passwords, beside this test's inventory.
    for folder in (converged_fleet.ca_dir, converged_fleet.credentials_dir):
        shutil.copytree(folder, workdir / folder.name, symlinks=True)

    roots = {COLLECTOR: rootfs_factory.clone(converged_fleet.collector, "fleet-live-collector")}
    for name in PIS:
        root = rootfs_factory.clone(converged_fleet.pi, f"fleet-live-{name}")
        # Each Pi makes a key of its own in the live run, as a freshly imaged Pi would.
        for secret in HOST_TLS_FILES:
            (root / secret.lstrip("/")).unlink()
        nspawn.disable_swap_units(root)
        nspawn.seed_sensors(root)
        # Start healthy at boot (files source), rather than crash-looping without a camera.
        nspawn.write_config(root, nspawn.daemon_config(nspawn.installed_model(root), fps=FPS))
        roots[name] = root
    for root in roots.values():
        allow_service_starts(root)
    TIMINGS["fleet collector: clone the collector and the Pi 3 times"] = time.monotonic() - started

    net = fleetnet.create([COLLECTOR, *PIS], workdir)
    containers: dict[str, Container] = {}
    fleet: Fleet | None = None
    try:
        for name, root in roots.items():
            personalise(root, name, net)
        namespaces = {name: net.path(name) for name in roots}
        containers, seconds = nspawn.boot_all(roots, workdir, network_namespaces=namespaces)
        TIMINGS["fleet collector: boot 4 containers at once"] = seconds
        collector_vars = rf.chroot_host_vars(
            roots[COLLECTOR],
            ansible_chroot_exe=str(containers[COLLECTOR].chroot_exe),
            fleet_address=net.address(COLLECTOR),
        )
        pis = {
            name: nspawn.playbook_host_vars(
                containers[name], fleet_address=net.address(name), **pi_vars()
            )
            for name in PIS
        }
        inventory = fleet_inventory(workdir / "hosts.yml", collector_vars, pis)
        extra_vars = {**converged_fleet.extra_vars, **FLEET_TEST_VARS}
        fleet = Fleet(net, containers, inventory, extra_vars, workdir, cgroups_before)
        yield fleet
    finally:
        if fleet is not None and fleet.consumer is not None:
            fleet.consumer.close()
        for container in containers.values():
            container.close()
        net.close()
        TIMINGS["fleet collector: clone to teardown"] = time.monotonic() - started


# --- helpers ------------------------------------------------------------------------------


def active(c: Container, unit: str) -> bool:
    return c.show(unit, "ActiveState")["ActiveState"] == "active"


def pi_files(fleet: Fleet, name: str) -> dict[str, str]:
    """The MQTT credentials the pi_daemon role deployed on `name` (host-side paths)."""
    import tomllib

    root = fleet.containers[name].root
    config = tomllib.loads((root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8"))
    mqtt = config["mqtt"]
    return {
        key: str(root / mqtt[key].lstrip("/"))
        for key in ("ca_file", "cert_file", "key_file", "password_file")
    } | {"username": mqtt["username"], "host": mqtt["host"], "port": str(mqtt["port"])}


def mqtt_args(files: dict[str, str], *, cert: bool = True, user: bool = True) -> list[str]:
    args = ["--host", files["host"], "--port", files["port"], "--ca", files["ca_file"]]
    if cert:
        args += ["--cert", files["cert_file"], "--key", files["key_file"]]
    if user:
        args += ["--username", files["username"], "--password-file", files["password_file"]]
    return args


def consumer_files(fleet: Fleet) -> dict[str, str]:
    """The consumer's credentials, on the collector: its user and generated password (the
    controller's credentials directory), and the collector's own certificate."""
    tls = fleet.collector.root / "etc/fleet-ca"
    return {
        "host": COLLECTOR,
        "port": str(MQTT_PORT),
        "ca_file": str(tls / "ca.pem"),
        "cert_file": str(tls / "host.pem"),
        "key_file": str(tls / "host.key"),
        "username": "consumer",
        "password_file": str(fleet.workdir / "fleet-credentials" / "mqtt" / "consumer"),
    }


def contiguous(seqs: list[int]) -> list[tuple[int, int]]:
    """The gaps (last seen, next seen) in a list of seq numbers, duplicates allowed."""
    unique = sorted(set(seqs))
    return [(a, b) for a, b in itertools.pairwise(unique) if b != a + 1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- 0. One site.yml run provisions the collector and the Pis -----------------------------


def test_one_run_provisions_the_collector_and_three_pis(fleet: Fleet) -> None:
    run = fleet.run()
    fleet.provision = run
    TIMINGS["fleet collector: provision collector + 3 Pis (live, one run)"] = run.seconds
    assert run.returncode == 0, (
        f"site.yml on the live fleet exited {run.returncode}\n{run.tail()}\n{diagnosis(fleet)}"
    )
    for name in (COLLECTOR, *PIS):
        assert run.recap[name]["failed"] == 0 and run.recap[name]["changed"] > 0, run.recap
    sockets = [unit for unit in RECEIVERS if unit.endswith(".socket")]
    for unit in ("mosquitto.service", "prometheus.service", "haproxy.service", *sockets):
        assert active(fleet.collector, unit), unit
    assert not active(fleet.collector, "systemd-journal-remote.socket")
    for name in PIS:
        c = fleet.containers[name]
        assert active(c, UNIT), name
        assert active(c, "systemd-journal-upload.service"), name
    # Each Pi has a key of its own, not the image's.
    keys = {pi_files(fleet, name)["key_file"] for name in PIS}
    assert len({Path(k).read_bytes() for k in keys}) == len(PIS)

    files = consumer_files(fleet)
    out = fleet.workdir / "consumer.jsonl"
    subscription = ["--client-id", "fleet-test-consumer", "--topic", f"{TOPIC_PREFIX}/#"]
    argv = [sys.executable, "-m", "tests.system.fleet_clients", "subscribe", *mqtt_args(files)]
    process = fleet.net.popen(COLLECTOR, [*argv, *subscription, "--out", str(out)], cwd=REPO)
    consumer = fleet.consumer = Consumer(process, out)
    subscribed = wait_for(
        "the consumer subscribed",
        lambda: [r for r in consumer.records() if r.get("event") == "subscribed"],
        timeout=30,
    )
    assert subscribed[0]["codes"] == ["Granted QoS 1"], consumer.records()


def diagnosis(fleet: Fleet) -> str:
    """What an operator would look at first: failed units and the collector's services."""
    parts = []
    for name, c in fleet.containers.items():
        failed = c.systemctl("--failed", "--plain", "--no-legend").stdout.strip()
        parts.append(f"--- {name}: failed units: {failed or 'none'}")
    units = [arg for unit in COLLECTOR_UNITS for arg in ("-u", unit)]
    tail = fleet.collector.run("journalctl", "--no-pager", "-n", "60", *units).stdout
    return "\n".join(parts) + "\n--- collector's services (journal tail)\n" + tail


def require(fleet: Fleet) -> Consumer:
    if fleet.provision is None or fleet.provision.returncode != 0 or fleet.consumer is None:
        pytest.fail("the fleet was not provisioned", pytrace=False)
    return fleet.consumer


# --- 2. Events from every Pi, each its own ------------------------------------------------


def test_the_consumer_gets_every_pi_s_events_with_own_device_id_and_rising_seq(
    fleet: Fleet,
) -> None:
    consumer = require(fleet)

    def enough() -> dict[str, list[dict[str, Any]]] | None:
        found = consumer.events()
        return found if all(len(found.get(n, [])) >= 10 for n in PIS) else None

    found = wait_for("10 events from each Pi", enough, timeout=60, interval=0.5)
    assert set(found) == set(PIS), sorted(found)
    latencies = []
    for name in PIS:
        seen = found[name]
        assert {e["device_id"] for e in seen} == {name}, name
        seqs = [e["seq"] for e in seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (name, seqs)
        assert contiguous(seqs) == [], (name, contiguous(seqs))
        assert len({e["boot_id"] for e in seen}) == 1, name
        latencies += [e["_recv"] - e["time"] for e in seen]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    TIMINGS["fleet collector: Pi event to consumer p50 / p95"] = (
        f"{p50 * 1000:.0f} / {p95 * 1000:.0f} ms over {len(latencies)} events"
    )
    assert p95 < 5.0, latencies


# --- 3. No Pi speaks for another; strangers are refused -----------------------------------


def test_a_pi_cannot_publish_as_another_and_strangers_are_refused(fleet: Fleet) -> None:
    consumer = require(fleet)
    a = pi_files(fleet, "pi-a")
    marker = f"forged by pi-a {uuid.uuid4().hex}"
    forged_topic = f"{TOPIC_PREFIX}/pi-b/events"
    forged = fleet.client("pi-a", "mqtt-probe", *mqtt_args(a), "--publish", forged_topic, marker)
    assert forged == {"connect": "connected", "publish": "denied: Not authorized"}, forged
    # Its own topic tree is allowed: once that message arrives, the forged one had its chance.
    own_topic = f"{TOPIC_PREFIX}/pi-a/fleet-test"
    own = fleet.client("pi-a", "mqtt-probe", *mqtt_args(a), "--publish", own_topic, marker)
    assert own == {"connect": "connected", "publish": "accepted"}, own
    wait_for("pi-a's own message", lambda: marker in consumer.payloads(own_topic), timeout=10)
    assert marker not in consumer.payloads(forged_topic)
    elsewhere = [r for r in consumer.records() if marker in r.get("payload", "")]
    assert [r["topic"] for r in elsewhere] == [own_topic], elsewhere

    anonymous = fleet.client("pi-a", "mqtt-probe", *mqtt_args(a, user=False))
    assert anonymous["connect"].startswith("refused"), anonymous
    no_cert = fleet.client("pi-a", "mqtt-probe", *mqtt_args(a, cert=False))
    assert no_cert["connect"] != "connected", no_cert
    # A certificate that the fleet's CA did not sign.
    from tests.mqtt_broker import make_certificates

    rogue = make_certificates(fleet.workdir / "rogue-ca", server_name="10.77.0.99")
    stranger = {**a, "cert_file": str(rogue.client_cert), "key_file": str(rogue.client_key)}
    refused = fleet.client("pi-a", "mqtt-probe", *mqtt_args(stranger))
    assert refused["connect"] != "connected", refused
    TIMINGS["fleet collector: refusals"] = json.dumps(
        {"anonymous": anonymous, "no cert": no_cert, "rogue cert": refused}
    )


# --- 4. Prometheus scrapes every Pi over TLS ----------------------------------------------


def test_prometheus_scrapes_all_three_pis_and_a_scrape_without_a_certificate_is_refused(
    fleet: Fleet,
) -> None:
    require(fleet)

    def all_up() -> list[dict[str, Any]] | None:
        result = fleet.prometheus("query", query="up")["result"]
        up = [r for r in result if r["value"][1] == "1"]
        return result if len(up) >= len(PIS) and len(result) == len(up) else None

    up = wait_for("up == 1 for every target", all_up, timeout=60, interval=1)
    assert len(up) == len(PIS), up
    frames = fleet.prometheus("query", query=FRAME_COUNTER)["result"]
    assert len(frames) == len(PIS), frames
    assert len({tuple(sorted(r["metric"].items())) for r in frames}) == len(PIS)

    url = f"https://pi-a:{METRICS_PORT}/metrics"
    ca = str(fleet.workdir / CA_CERT)
    refused = fleet.client(COLLECTOR, "get", url, "--ca", ca)
    assert "error" in refused, refused
    TIMINGS["fleet collector: scrape without a certificate"] = refused["error"]
    # The endpoint is not on the Pi's loopback any more, and not open in plain HTTP either.
    plain = fleet.client(COLLECTOR, "get", f"http://pi-a:{METRICS_PORT}/metrics")
    assert "error" in plain or plain.get("status") != 200, plain


# --- 5. A hot Pi raises the running-hot alert ---------------------------------------------


def test_a_hot_pi_raises_the_running_hot_alert(fleet: Fleet) -> None:
    require(fleet)
    hot = fleet.containers["pi-b"]
    started = time.monotonic()
    nspawn.set_temperature(hot, HOT_C)
    try:

        def firing() -> list[dict[str, Any]] | None:
            alerts = fleet.prometheus("alerts")["alerts"]
            mine = [
                a
                for a in alerts
                if a["labels"].get("alertname") == HOT_ALERT and a["state"] == "firing"
            ]
            return mine or None

        alerts = wait_for(f"{HOT_ALERT} firing", firing, timeout=90, interval=1)
        TIMINGS["fleet collector: heat to firing alert"] = time.monotonic() - started
        assert len(alerts) == 1, alerts
        assert "pi-b" in json.dumps(alerts[0]["labels"]), alerts
    finally:
        nspawn.set_temperature(hot, 50.0)


# --- 6. An outage of the collector loses nothing --------------------------------------------


def daemon_entries(c: Container, since: float, until: float) -> list[dict[str, Any]]:
    """pi-daemon's event entries in a Pi's own journal, made between two wall times."""
    entries = journal(c, f"--unit={UNIT}", *window(since, until))
    return [e for e in entries if "SEQ" in e]


def test_a_minute_without_the_collector_loses_no_event_and_the_journals_catch_up(
    fleet: Fleet,
) -> None:
    consumer = require(fleet)
    c = fleet.collector
    began = time.time()
    result = c.systemctl("stop", *COLLECTOR_UNITS)
    assert result.returncode == 0, result.stderr
    for unit in COLLECTOR_UNITS:
        assert not active(c, unit), unit
    time.sleep(OUTAGE_S)
    result = c.systemctl("start", *COLLECTOR_UNITS)
    assert result.returncode == 0, result.stderr
    ended = time.time()
    fleet.outage = (began, ended)
    back = time.monotonic()

    # What each Pi's own journal got during the outage (label and MQTT state events: the
    # journal has no line per frame), to find again on the collector afterwards.
    made: dict[str, set[int]] = {}
    for name in PIS:
        made[name] = {int(e["SEQ"]) for e in daemon_entries(fleet.containers[name], began, ended)}
        assert made[name], f"{name} logged no event during the outage"

    # Every event of the outage reaches the consumer, without a seq gap.
    def delivered() -> dict[str, list[dict[str, Any]]] | None:
        found = consumer.events()
        late = [found.get(n, []) for n in PIS]
        return found if all(any(e["time"] > ended for e in seen) for seen in late) else None

    found = wait_for("events made after the outage, from every Pi", delivered, 150, 1)
    TIMINGS["fleet collector: outage end to every Pi's events again"] = time.monotonic() - back
    # How each Pi's daemon saw the outage and the return (its MQTT state changes).
    TIMINGS["fleet collector: the Pis' MQTT lines around the outage"] = json.dumps(
        {
            name: [
                f"{float(e['__REALTIME_TIMESTAMP']) / 1e6 - ended:+.1f} s {e['MESSAGE']}"
                for e in daemon_entries(fleet.containers[name], began, time.time())
                if e.get("PI_DAEMON_EVENT") == "mqtt"
            ]
            for name in PIS
        }
    )
    for name in PIS:
        seen = found[name]
        seqs = [e["seq"] for e in seen]
        assert contiguous(seqs) == [], (name, contiguous(seqs))
        during = [e for e in seen if began <= e["time"] <= ended]
        assert len(during) >= FPS * OUTAGE_S * 0.5, (name, len(during))
        missing = made[name] - {e["seq"] for e in seen}
        assert not missing, (name, sorted(missing))
        # The Pi kept classifying throughout: a result in every 5 s of the outage.
        results = sorted(e["time"] for e in during if e["type"] == "result")
        holes = [b - a for a, b in itertools.pairwise([began, *results, ended])]
        assert max(holes) < 5.0, (name, max(holes))

    # The journals catch up: every pi-daemon entry of the outage reaches the collector.
    def caught_up() -> dict[str, int] | None:
        received: dict[str, set[int]] = {}
        for entry in fleet.remote_journal(f"_SYSTEMD_UNIT={UNIT}", *window(began, ended)):
            if "SEQ" in entry:
                received.setdefault(entry["_HOSTNAME"], set()).add(int(entry["SEQ"]))
        if all(made[name] <= received.get(name, set()) for name in PIS):
            return {name: len(made[name]) for name in PIS}
        return None

    counts = wait_for("the outage's journal entries on the collector", caught_up, 150, 2)
    TIMINGS["fleet collector: outage end to journals caught up"] = time.monotonic() - back
    TIMINGS["fleet collector: outage journal entries per Pi"] = json.dumps(counts)


# --- 1. The Pis' journals on the collector ------------------------------------------------


def test_the_collector_has_every_pi_s_journal_told_apart_by_hostname(fleet: Fleet) -> None:
    require(fleet)

    def kinds() -> dict[str, set[str]] | None:
        seen: dict[str, set[str]] = {}
        for entry in fleet.remote_journal("PI_DAEMON_EVENT=ready", "PI_DAEMON_EVENT=summary"):
            seen.setdefault(entry["_HOSTNAME"], set()).add(entry["PI_DAEMON_EVENT"])
        ok = all({"ready", "summary"} <= seen.get(name, set()) for name in PIS)
        return seen if ok else None

    # Summaries come once a minute (the daemon's default summary_interval_s): after the
    # outage test every Pi has sent some, and this test waits for none.
    seen = wait_for("ready and summary entries from every Pi", kinds, timeout=120, interval=2)
    assert set(PIS) <= set(seen), sorted(seen)
    for name in PIS:
        only = fleet.remote_journal(f"_HOSTNAME={name}", "PI_DAEMON_EVENT=ready")
        assert only and {e["_HOSTNAME"] for e in only} == {name}, name
        assert {e["DEVICE_ID"] for e in only} == {name}, name
    files = fleet.collector.check("ls", REMOTE_JOURNALS).split()
    TIMINGS["fleet collector: remote journal files"] = " ".join(files)


def test_an_upload_needs_a_pi_s_certificate_and_lands_only_in_that_pi_s_journal(
    fleet: Fleet,
) -> None:
    """haproxy checks what journal-remote cannot (Debian builds it without GnuTLS)."""
    require(fleet)
    from tests.mqtt_broker import make_certificates, sign_certificate

    url = f"https://{fleet.net.address(COLLECTOR)}:19532/upload"
    ca = str(fleet.workdir / CA_CERT)
    pi_tls = fleet.containers["pi-a"].root / "etc/fleet-ca"
    # A certificate of the fleet's own CA for a name that is no Pi of this fleet.
    stranger_cert, stranger_key = sign_certificate(
        fleet.workdir / "stranger", "host", "pi-z", Path(ca), fleet.workdir / "fleet-ca/ca.key",
        "extendedKeyUsage=clientAuth",
    )  # fmt: skip
    rogue = make_certificates(fleet.workdir / "rogue-journal-ca", server_name="10.77.0.99")
    marker = f"forged-{time.monotonic_ns()}"

    def upload(tag: str, *tls: str) -> dict[str, Any]:
        fields = [
            f"__REALTIME_TIMESTAMP={time.time_ns() // 1000}",
            "__MONOTONIC_TIMESTAMP=1",
            "_BOOT_ID=0123456789abcdef0123456789abcdef",
            "_HOSTNAME=intruder",
            f"MESSAGE={marker} {tag}",
        ]
        args = [a for f in fields for a in ("--field", f)]
        return fleet.client("pi-a", "upload", url, "--ca", ca, *tls, *args)

    refused = {
        "no certificate": upload("no certificate"),
        "another CA": upload(
            "another CA", "--cert", str(rogue.client_cert), "--key", str(rogue.client_key)
        ),
        "no Pi of the fleet": upload(
            "no Pi of the fleet", "--cert", str(stranger_cert), "--key", str(stranger_key)
        ),
    }
    for what, answer in refused.items():
        assert "error" in answer, (what, answer)
    own = upload(
        "pi-a's own", "--cert", str(pi_tls / "host.pem"), "--key", str(pi_tls / "host.key")
    )
    assert own.get("status") in (200, 202), own

    def landed() -> list[dict[str, Any]] | None:
        found = [e for e in fleet.remote_journal() if marker in e.get("MESSAGE", "")]
        return found or None

    found = wait_for("pi-a's own upload on the collector", landed, timeout=30, interval=1)
    assert [e["MESSAGE"] for e in found] == [f"{marker} pi-a's own"], found
    # In pi-a's files (the README's glob: remote-pi-a.journal and those archived by a
    # restart of its receiver, remote-pi-a@….journal), whatever _HOSTNAME the entry
    # claims: the certificate chose the file.
    in_file = journal(
        fleet.collector, f"--file={REMOTE_JOURNALS}/remote-pi-a[.@]*journal", "_HOSTNAME=intruder"
    )
    assert [e["MESSAGE"] for e in in_file] == [f"{marker} pi-a's own"], in_file
    TIMINGS["fleet collector: journal uploads refused"] = json.dumps(refused)


# --- 7. Idempotence, on the collector too -------------------------------------------------


def test_a_second_run_and_a_check_run_change_nothing(fleet: Fleet) -> None:
    require(fleet)
    for args, what in (((), "second run"), (("--check",), "--check run")):
        run = fleet.run(*args, "-v")
        TIMINGS[f"fleet collector: {what}"] = run.seconds
        for name in (COLLECTOR, *PIS):
            assert_nothing_changed(run, name, f"{what} on {name}")


# --- Hygiene ---------------------------------------------------------------------------------


def test_teardown_leaves_no_container_namespace_veth_cgroup_or_swap(fleet: Fleet) -> None:
    if fleet.consumer is not None:
        fleet.consumer.close()
    for c in fleet.containers.values():
        c.close()
    fleet.net.close()
    problems = nspawn.leftovers(fleet.containers.values(), fleet.cgroups_before)
    problems += fleet.net.leftovers()
    assert problems == []
    if not os.environ.get("PI_DAEMON_KEEP_ROOTFS"):
        for c in fleet.containers.values():
            rf.remove_tree(c.root)
