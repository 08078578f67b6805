"""ansible/site.yml with a collector: the fleet CA, the collector role and the Pi's fleet side,
against two real Debian bookworm root filesystems through the chroot connection.

The session's `converged_fleet` (conftest.py) is one site.yml run that provisioned a fresh
collector and a Pi (`pi-a`, a clone of `converged_rootfs`: a Pi that was provisioned before
the fleet had a collector), as an operator's inventory with a `collectors` group would: the
CA on the controller (here, the run's temporary inventory directory), each host's own key
and certificate, mosquitto, systemd-journal-remote and Prometheus on the collector, and
[mqtt], [metrics] and journal upload on the Pi. The tests read what the hosts have, and run
the real engines on it where that is cheap and safe, without changing the root
filesystems (tmpfs and bind mounts in a private mount namespace):

* `promtool check config` and `check rules` inside the collector's root filesystem;
* the collector's own mosquitto, with its rendered config, password file and ACL, inside a
  network namespace this test creates (only a loopback interface there), and real
  mosquitto clients with the Pi's certificate and password against it: the Pi publishes
  under its own topics only, the consumer reads, and anonymous or certificate-less
  clients are refused.

A second run and a --check run change nothing, on the collector, the Pi and the controller.
Nothing was started in the chroots by the packages (conftest's policy-rc.d).
tests/system/test_fleet_collector.py boots clones of the same root filesystems.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.system import rootfs as rf
from tests.system.ansible_checks import assert_nothing_changed
from tests.system.conftest import (
    FLEET_ADDRESSES,
    FLEET_COLLECTOR,
    FLEET_PI,
    TIMINGS,
    ConvergedFleet,
)

COLLECTOR, PI = FLEET_COLLECTOR, FLEET_PI
COLLECTOR_ADDRESS, PI_ADDRESS = FLEET_ADDRESSES[COLLECTOR], FLEET_ADDRESSES[PI]
# A network, mount and PID namespace of the test's own: its first process is the shell, so
# every process started in it ends with it, and every mount made in it vanishes with it.
UNSHARE = ("unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private", "--")


def load_filters() -> ModuleType:
    path = rf.ANSIBLE_DIR / "filter_plugins" / "fleet_collector.py"
    spec = importlib.util.spec_from_file_location("fleet_collector_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FC = load_filters()


@dataclass
class Fleet:
    converged: ConvergedFleet

    @property
    def collector(self) -> Path:
        return self.converged.collector

    @property
    def pi(self) -> Path:
        return self.converged.pi

    @property
    def first(self) -> rf.PlaybookRun:
        return self.converged.first

    @property
    def ca_dir(self) -> Path:
        return self.converged.ca_dir

    @property
    def credentials(self) -> Path:
        return self.converged.credentials_dir / "mqtt"

    def password(self, user: str) -> str:
        return (self.credentials / user).read_text(encoding="utf-8").strip()

    def run(self, *args: str) -> rf.PlaybookRun:
        return self.converged.run_playbook(*args)


def processes_in(root: Path) -> list[int]:
    """PIDs of processes whose root directory is `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.path.realpath(entry / "root") == str(root.resolve()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def fleet(converged_fleet: ConvergedFleet) -> Fleet:
    return Fleet(converged_fleet)


def in_collector(
    fleet: Fleet, script: str, binds: dict[str, Path] | None = None, tmpfs: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) inside the collector's root filesystem, in namespaces of its own
    (UNSHARE: only a loopback interface, brought up here), with /proc, a tmpfs on each of
    `tmpfs` and the host directories `binds` mounted on their paths: nothing it writes there
    stays in the root filesystem."""
    root = shlex.quote(str(fleet.collector))
    mounts = [f"mount -t proc proc {root}/proc"]
    mounts += [f"mount -t tmpfs tmpfs {root}{shlex.quote(path)}" for path in tmpfs]
    for path, source in (binds or {}).items():
        mounts.append(f"mount --bind {shlex.quote(str(source))} {root}{shlex.quote(path)}")
    outer = "; ".join(["set -e", "ip link set lo up", *mounts])
    outer += f"; exec chroot {root} sh -c {shlex.quote(script)}"
    return subprocess.run(
        [*UNSHARE, "sh", "-c", outer], capture_output=True, text=True, timeout=120, check=False
    )


def stat_of(root: Path, path: str) -> tuple[int, str, str]:
    """(mode, owner, group) of a path inside a root filesystem, names as the root has them."""
    owner = rf.chroot(root, "stat", "-c", "%a %U %G", path)
    assert owner.returncode == 0, owner.stderr
    mode, user, group = owner.stdout.split()
    return int(mode, 8), user, group


def openssl(*argv: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["openssl", *argv], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def can_read_as(root: Path, user: str, path: str) -> bool:
    """Whether `user`, with the supplementary groups the root's /etc/group gives it, can
    read `path` (coreutils chroot --userspec sets them, as systemd's User= does)."""
    result = subprocess.run(
        ["chroot", f"--userspec={user}", str(root), "head", "-c", "1", path],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


# --- The run itself ----------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.slow
def test_one_run_provisions_the_ca_the_collector_and_the_pi(fleet: Fleet) -> None:
    for host in (COLLECTOR, PI):
        counts = fleet.first.recap[host]
        assert counts["failed"] == 0 and counts["changed"] > 0, (host, counts)
    # The plays run in order: the CA, the collector, then the Pis.
    plays = re.findall(r"^PLAY \[(.*)\]", fleet.first.output, re.M)
    assert plays[:3] == [
        "Make the fleet's CA on the controller",
        "Set up the fleet's collector (journals, events, metrics)",
        "Provision the Pi fleet",
    ], plays
    for password in (fleet.password(PI), fleet.password("consumer")):
        assert password not in fleet.first.output, "a password was logged"


@pytest.mark.system
@pytest.mark.slow
def test_no_package_started_a_service_in_the_root_filesystems(fleet: Fleet) -> None:
    for root in (fleet.collector, fleet.pi):
        assert processes_in(root) == [], f"processes run in {root}"


@pytest.mark.system
@pytest.mark.slow
def test_a_second_run_and_check_mode_change_nothing(fleet: Fleet) -> None:
    again = fleet.run()
    TIMINGS["ansible fleet second run"] = again.seconds
    checked = fleet.run("--check", "--diff")
    TIMINGS["ansible fleet --check run"] = checked.seconds
    for run, what in ((again, "a second fleet run"), (checked, "a --check fleet run")):
        for host in (COLLECTOR, PI, "localhost"):
            assert_nothing_changed(run, host, f"{what} on {host}")


# --- The CA and the hosts' certificates ---------------------------------------------------


@pytest.mark.system
@pytest.mark.slow
def test_the_ca_key_stays_on_the_controller_and_each_host_has_its_own_key(fleet: Fleet) -> None:
    ca_dir = fleet.ca_dir
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.key", "ca.pem"]
    assert ca_dir.stat().st_mode & 0o777 == 0o700
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    ca_text = openssl("x509", "-in", str(ca_dir / "ca.pem"), "-noout", "-text")
    assert re.search(r"CA:TRUE", ca_text), ca_text
    ca_public = openssl("pkey", "-in", str(ca_dir / "ca.key"), "-pubout")
    keys = {}
    for host, root, address in ((COLLECTOR, fleet.collector, COLLECTOR_ADDRESS),
                                (PI, fleet.pi, PI_ADDRESS)):  # fmt: skip
        tls = root / "etc" / "fleet-ca"
        assert stat_of(root, "/etc/fleet-ca/host.key") == (0o640, "root", "fleet-tls")
        assert stat_of(root, "/etc/fleet-ca/host.pem")[0] == 0o644
        assert (tls / "ca.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()
        # Signed by the fleet CA, for this host's inventory name and fleet address, for
        # both sides of TLS, and for this host's own key.
        openssl("verify", "-CAfile", str(tls / "ca.pem"), str(tls / "host.pem"))
        text = openssl("x509", "-in", str(tls / "host.pem"), "-noout", "-text")
        assert re.search(rf"Subject: CN ?= ?{re.escape(host)}\s*$", text, re.M), text
        assert f"DNS:{host}" in text and f"IP Address:{address}" in text, text
        assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text
        public = openssl("x509", "-in", str(tls / "host.pem"), "-noout", "-pubkey")
        assert public == openssl("pkey", "-in", str(tls / "host.key"), "-pubout")
        assert public != ca_public
        keys[host] = public
    assert keys[COLLECTOR] != keys[PI]


# --- The collector ------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.slow
def test_mosquitto_has_a_tls_listener_a_password_per_pi_and_an_acl(fleet: Fleet) -> None:
    root = fleet.collector
    conf = (root / "etc/mosquitto/conf.d/pi-daemon-fleet.conf").read_text(encoding="utf-8")
    for line in (
        "allow_anonymous false",
        "listener 8883",
        "cafile /etc/fleet-ca/ca.pem",
        "certfile /etc/fleet-ca/host.pem",
        "keyfile /etc/mosquitto/certs/pi-daemon-fleet.key",
        "require_certificate true",
        "password_file /etc/mosquitto/pi-daemon-fleet.passwd",
        "acl_file /etc/mosquitto/pi-daemon-fleet.acl",
    ):
        assert re.search(rf"^{re.escape(line)}$", conf, re.M), (line, conf)
    # mosquitto 2.0 reads them as its own user.
    assert stat_of(root, "/etc/mosquitto/certs/pi-daemon-fleet.key") == (
        0o600,
        "mosquitto",
        "mosquitto",
    )
    key_copy = root / "etc/mosquitto/certs/pi-daemon-fleet.key"
    assert key_copy.read_bytes() == (root / "etc/fleet-ca/host.key").read_bytes()
    for name in ("pi-daemon-fleet.passwd", "pi-daemon-fleet.acl"):
        assert stat_of(root, f"/etc/mosquitto/{name}") == (0o640, "root", "mosquitto")

    passwd = (root / "etc/mosquitto/pi-daemon-fleet.passwd").read_text(encoding="utf-8")
    entries = dict(line.split(":", 1) for line in passwd.splitlines())
    assert sorted(entries) == ["consumer", PI]
    for user, entry in entries.items():
        _, tag, iterations, salt, _ = entry.split("$")
        assert (tag, iterations) == ("7", "101")
        expected = FC.pbkdf2_entry(fleet.password(user), base64.b64decode(salt), 101)
        assert entry == expected, user
    for user in ("consumer", PI):
        assert (fleet.credentials / user).stat().st_mode & 0o077 == 0

    acl = (root / "etc/mosquitto/pi-daemon-fleet.acl").read_text(encoding="utf-8")
    lines = [line for line in acl.splitlines() if line.strip() and not line.startswith("#")]
    blocks: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("user "):
            block = blocks.setdefault(line.split(" ", 1)[1], [])
        else:
            block.append(line)
    assert blocks == {
        "consumer": ["topic read #"],
        PI: [
            f"topic write pi-daemon/{PI}/#",
            f"topic read pi-daemon/{PI}/set",
            f"topic write homeassistant/+/pi-daemon_{PI}/+/config",
            "topic read homeassistant/status",
        ],
    }, acl


# Where the broker writes at run time: tmpfs in the test's mount namespace.
BROKER_TMPFS = ("/run", "/tmp", "/var/lib/mosquitto", "/var/log/mosquitto")


@pytest.mark.system
@pytest.mark.slow
def test_the_collectors_mosquitto_enforces_certificates_passwords_and_the_acl(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The real broker with the rendered files: pi-a publishes under its own topic and the
    consumer receives it; pi-a's message under another Pi's topic is dropped; a client
    without a password, or without a certificate, is refused."""
    # The Pi's certificate and key, for a client that speaks as the Pi (bound on /mnt).
    client = tmp_path / "pi-a-client"
    client.mkdir()
    for name in ("host.pem", "host.key"):
        (client / name).write_bytes((fleet.pi / "etc/fleet-ca" / name).read_bytes())
    (client / "host.key").chmod(0o600)
    tls = "--cafile /etc/fleet-ca/ca.pem -h 127.0.0.1 -p 8883"
    pi = f"{tls} --cert /mnt/host.pem --key /mnt/host.key -u {PI}"
    consumer = f"{tls} --cert /etc/fleet-ca/host.pem --key /etc/fleet-ca/host.key -u consumer"
    pi_pw = shlex.quote(fleet.password(PI))
    consumer_pw = shlex.quote(fleet.password("consumer"))
    script = f"""
        mkdir -p /run/mosquitto && chown mosquitto: /run/mosquitto /var/lib/mosquitto \
            /var/log/mosquitto
        # -v: every log type, so that a denied publish is logged too.
        mosquitto -c /etc/mosquitto/mosquitto.conf -v -d
        log=/var/log/mosquitto/mosquitto.log
        for i in $(seq 100); do
            grep -q "Opening ipv4 listen socket on port 8883" $log && break
            sleep 0.05
        done
        # The first message it gets: the forged one, if the ACL let it through.
        mosquitto_sub {consumer} -P {consumer_pw} -t 'pi-daemon/#' -v -C 1 -W 8 > /tmp/got &
        sleep 1
        mosquitto_pub {pi} -P {pi_pw} -q 1 -t pi-daemon/pi-b/events -m forged; echo "forged=$?"
        mosquitto_pub {pi} -P {pi_pw} -q 1 -t pi-daemon/{PI}/events -m own; echo "own=$?"
        mosquitto_pub {pi} -P wrong -q 1 -t pi-daemon/{PI}/events -m bad 2>&1; echo "wrong=$?"
        mosquitto_pub {tls} --cert /mnt/host.pem --key /mnt/host.key \
            -q 1 -t pi-daemon/{PI}/events -m anon 2>&1; echo "anonymous=$?"
        mosquitto_pub {tls} -u {PI} -P {pi_pw} -q 1 -t pi-daemon/{PI}/events -m nocert 2>&1
        echo "nocert=$?"
        wait
        echo "--- received"; cat /tmp/got
        echo "--- log"; cat $log
    """
    session = in_collector(fleet, script, binds={"/mnt": client}, tmpfs=BROKER_TMPFS)
    out = session.stdout
    assert session.returncode == 0, out + session.stderr
    codes = dict(re.findall(r"^(forged|own|wrong|anonymous|nocert)=(\d+)$", out, re.M))
    # MQTT 3.1.1 has no negative PUBACK: the broker acknowledges and drops a denied publish.
    assert codes["own"] == "0" and codes["forged"] == "0", out
    assert codes["wrong"] != "0" and codes["anonymous"] != "0" and codes["nocert"] != "0", out
    received = out.split("--- received\n", 1)[1].split("--- log\n", 1)[0].splitlines()
    assert received == [f"pi-daemon/{PI}/events own"], out
    log = out.split("--- log\n", 1)[1]
    assert re.search(r"Denied PUBLISH from .* 'pi-daemon/pi-b/events'", log), log
    assert "peer did not return a certificate" in log, log


@pytest.mark.system
@pytest.mark.slow
def test_prometheus_config_targets_and_rules_pass_promtool(fleet: Fleet) -> None:
    root = fleet.collector
    for argv in (
        ("promtool", "check", "config", "/etc/prometheus/prometheus.yml"),
        ("promtool", "check", "rules", "/etc/prometheus/rules/pi-daemon.yml"),
    ):
        result = rf.chroot(root, *argv)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr
    import yaml

    config = yaml.safe_load((root / "etc/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["scheme"] == "https"
    assert job["tls_config"] == {
        "ca_file": "/etc/fleet-ca/ca.pem",
        "cert_file": "/etc/fleet-ca/host.pem",
        "key_file": "/etc/prometheus/pi-daemon-fleet.key",
    }
    assert stat_of(root, "/etc/prometheus/pi-daemon-fleet.key")[:2] == (0o600, "prometheus")
    targets = yaml.safe_load(
        (root / "etc/prometheus/file_sd/pi-daemon.yml").read_text(encoding="utf-8")
    )
    assert targets == [{"targets": [f"{PI_ADDRESS}:9110"], "labels": {"instance": PI, "host": PI}}]
    rules = yaml.safe_load(
        (root / "etc/prometheus/rules/pi-daemon.yml").read_text(encoding="utf-8")
    )
    # Which metrics they use, and what they make of them: the two tests below.
    alerts = {rule["alert"]: rule["expr"] for rule in rules["groups"][0]["rules"]}
    assert sorted(alerts) == sorted(
        [
            "PiDaemonDown",
            "PiDaemonNoFrames",
            "PiDaemonRunningHot",
            "PiDaemonThrottledOrPaused",
            "PiDaemonUnderVoltage",
            "PiDaemonOutboxBacklog",
            "PiDaemonModelMismatch",
        ]
    )
    default = (root / "etc/default/prometheus").read_text(encoding="utf-8")
    assert "--web.listen-address=127.0.0.1:9090" in default
    wants = root / "etc/systemd/system/multi-user.target.wants"
    # Enabled units are links to absolute paths inside the root: test the links themselves
    # (their targets would be looked up on this machine).
    assert (wants / "prometheus.service").is_symlink()
    assert (wants / "mosquitto.service").is_symlink()


# Series as Prometheus would scrape them from six Pis (labels as file_sd gives them), one
# sample a minute for 40 minutes: what each alert must make of them at the end.
RULE_SERIES = {
    'up{instance="pi-ok"}': "1+0x40",
    'up{instance="pi-down"}': "1 1 0+0x40",
    'pi_daemon_frames_processed_total{instance="pi-ok"}': "0+600x40",
    'pi_daemon_frames_skipped_total{instance="pi-ok"}': "0+0x40",
    'pi_daemon_paused{instance="pi-ok"}': "0+0x40",
    'pi_daemon_frames_processed_total{instance="pi-stuck"}': "100+0x40",
    'pi_daemon_frames_skipped_total{instance="pi-stuck"}': "0+0x40",
    'pi_daemon_paused{instance="pi-stuck"}': "0+0x40",
    'pi_daemon_paused{instance="pi-paused"}': "1+0x40",
    'pi_daemon_soc_temperature_celsius{instance="pi-ok"}': "55+0x40",
    'pi_daemon_soc_temperature_celsius{instance="pi-hot"}': "70 85+0x40",
    'pi_daemon_throttle_state{instance="pi-warm",pi_daemon_throttle_state="warm"}': "1+0x40",
    'pi_daemon_throttle_state{instance="pi-warm",pi_daemon_throttle_state="normal"}': "0+0x40",
    'pi_daemon_throttled_flags{instance="pi-ok"}': "0+0x40",
    'pi_daemon_throttled_flags{instance="pi-capped"}': "2+0x40",
    'pi_daemon_undervoltage{instance="pi-uv"}': "1+0x40",
    'pi_daemon_mqtt_outbox_events{instance="pi-ok"}': "3+0x40",
    'pi_daemon_mqtt_outbox_events{instance="pi-backlog"}': "500+0x40",
    'pi_daemon_model_info{instance="pi-ok",sha256="aaaa"}': "1+0x40",
    'pi_daemon_model_info{instance="pi-stuck",sha256="bbbb"}': "1+0x40",
}
# alert -> [(extra labels, $value)] firing at 40 minutes; every other Pi stays quiet.
RULE_EXPECTED: dict[str, list[tuple[dict[str, str], float]]] = {
    "PiDaemonDown": [({"instance": "pi-down"}, 0)],
    "PiDaemonNoFrames": [({"instance": "pi-stuck"}, 0)],
    "PiDaemonRunningHot": [({"instance": "pi-hot"}, 85)],
    "PiDaemonThrottledOrPaused": [
        ({"instance": "pi-paused"}, 1),
        ({"instance": "pi-warm", "pi_daemon_throttle_state": "warm"}, 1),
        ({"instance": "pi-capped"}, 1),
    ],
    "PiDaemonUnderVoltage": [({"instance": "pi-uv"}, 1)],
    "PiDaemonOutboxBacklog": [({"instance": "pi-backlog"}, 500)],
    "PiDaemonModelMismatch": [({}, 2)],
}


def with_fleet_labels(series: str) -> str:
    """A series with the labels every scraped sample has (job, and host from file_sd)."""
    name, _, labels = series.partition("{")
    instance = re.search(r'instance="([^"]+)"', labels)
    extra = f'job="pi-daemon",host="{instance.group(1)}",' if instance else 'job="pi-daemon",'
    return f"{name}{{{extra}{labels}"


def expand(template: str, labels: dict[str, str], value: float) -> str:
    """What Prometheus makes of an annotation: $labels.<name> and $value (Go's %v)."""
    shown = f"{value:g}"
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.replace("{{ $value }}", shown)


def rules_test_suite(rules_text: str, rules_path: str) -> dict[str, object]:
    """A `promtool test rules` suite: RULE_SERIES in, RULE_EXPECTED out at 40 minutes,
    with the annotations of the rules in `rules_text` as Prometheus renders them."""
    import yaml

    rules = {rule["alert"]: rule for rule in yaml.safe_load(rules_text)["groups"][0]["rules"]}
    assert sorted(rules) == sorted(RULE_EXPECTED)
    alert_tests = []
    for alert, firing in RULE_EXPECTED.items():
        expected = []
        for extra, value in firing:
            labels = {**extra, "job": "pi-daemon"} if extra else {}
            if "instance" in extra:
                labels["host"] = extra["instance"]
            templates = rules[alert]["annotations"].items()
            expected.append(
                {
                    "exp_labels": {**labels, **rules[alert]["labels"]},
                    "exp_annotations": {k: expand(t, labels, value) for k, t in templates},
                }
            )
        alert_tests.append({"eval_time": "40m", "alertname": alert, "exp_alerts": expected})
    series = [{"series": with_fleet_labels(s), "values": v} for s, v in RULE_SERIES.items()]
    return {
        "rule_files": [rules_path],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": alert_tests}],
    }


@pytest.mark.system
@pytest.mark.slow
def test_the_alert_rules_fire_on_the_daemons_metrics(fleet: Fleet, tmp_path: Path) -> None:
    """`promtool test rules` inside the collector: the shipped rules, fed the series a
    troubled fleet would produce, raise exactly the alerts they promise (and no other),
    with their annotations as Prometheus renders them."""
    import yaml

    root = fleet.collector
    rules_text = (root / "etc/prometheus/rules/pi-daemon.yml").read_text(encoding="utf-8")
    suite = rules_test_suite(rules_text, "/etc/prometheus/rules/pi-daemon.yml")
    suite_text = yaml.safe_dump(suite, allow_unicode=True)
    (tmp_path / "rules.test.yml").write_text(suite_text, encoding="utf-8")
    result = in_collector(
        fleet, "promtool test rules /mnt/rules.test.yml", binds={"/mnt": tmp_path}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


@pytest.mark.system
@pytest.mark.slow
def test_haproxy_checks_the_uploaders_certificates_and_routes_each_pi_to_its_receiver(
    fleet: Fleet,
) -> None:
    root = fleet.collector
    cfg = (root / "etc/haproxy/pi-daemon-journal.cfg").read_text()
    bind = re.search(r"^\s*bind (\S*):19532 ssl (.*)$", cfg, re.M)
    assert bind, cfg
    assert "crt /etc/haproxy/pi-daemon-journal/host.pem" in bind.group(2)
    assert "ca-file /etc/fleet-ca/ca.pem verify required" in bind.group(2)
    assert "use_backend journal-%[ssl_c_s_dn(CN)]" in cfg
    assert re.search(r"^backend unknown-host\n\s+tcp-request content reject$", cfg, re.M)
    backends = re.findall(r"^backend journal-(\S+)\n\s+server receiver unix@(\S+)$", cfg, re.M)
    assert backends == [(FLEET_PI, f"/run/pi-daemon-journal/{FLEET_PI}.sock")], cfg
    links = root / "etc/haproxy/pi-daemon-journal"
    assert (links / "host.pem").readlink() == Path("/etc/fleet-ca/host.pem")
    assert (links / "host.pem.key").readlink() == Path("/etc/fleet-ca/host.key")
    check = rf.chroot_with_proc(root, "haproxy", "-c", "-f", "/etc/haproxy/pi-daemon-journal.cfg")
    assert check.returncode == 0, check.stdout + check.stderr
    dropin = (root / "etc/systemd/system/haproxy.service.d/pi-daemon-journal.conf").read_text()
    assert 'Environment="CONFIG=/etc/haproxy/pi-daemon-journal.cfg"' in dropin
    # The stock receiver is off (it would take the port and accept anyone: no GnuTLS).
    wants = root / "etc/systemd/system/sockets.target.wants"
    assert not (wants / "systemd-journal-remote.socket").exists()
    enabled = sorted(path.name for path in wants.iterdir())
    assert (wants / f"pi-daemon-journal-remote@{FLEET_PI}.socket").is_symlink(), enabled
    assert not [name for name in enabled if "journal-remote@" in name and FLEET_PI not in name]
    service = (root / "etc/systemd/system/pi-daemon-journal-remote@.service").read_text()
    assert "--listen-http=-3 --split-mode=none" in service
    assert "--output=/var/log/journal/remote/remote-%i.journal" in service
    socket = (root / "etc/systemd/system/pi-daemon-journal-remote@.socket").read_text()
    for line in (
        "ListenStream=/run/pi-daemon-journal/%i.sock",
        "SocketGroup=haproxy",
        "SocketMode=0660",
    ):
        assert re.search(rf"^{re.escape(line)}$", socket, re.M), (line, socket)
    # haproxy reads the key as root before it drops to its user; nobody else can.
    assert not can_read_as(root, "nobody", "/etc/fleet-ca/host.key")
    verify = rf.chroot_with_proc(
        root,
        "systemd-analyze",
        "verify",
        "--man=no",
        f"pi-daemon-journal-remote@{FLEET_PI}.socket",
        "haproxy.service",
    )
    assert verify.returncode == 0 and "pi-daemon" not in verify.stderr, verify.stderr


@pytest.mark.system
@pytest.mark.slow
def test_a_pi_that_left_the_fleet_loses_its_receiver_and_keeps_its_journal(fleet: Fleet) -> None:
    root = fleet.collector
    wants = root / "etc/systemd/system/sockets.target.wants"
    gone = wants / "pi-daemon-journal-remote@pi-gone.socket"  # as enabled by an earlier run
    gone.symlink_to("/etc/systemd/system/pi-daemon-journal-remote@.socket")
    journal_file = root / "var/log/journal/remote/remote-pi-gone.journal"
    journal_file.parent.mkdir(parents=True, exist_ok=True)
    journal_file.write_bytes(b"its entries")
    run = fleet.run("--limit", "collectors")
    assert run.returncode == 0, run.tail()
    assert not gone.exists() and not gone.is_symlink(), sorted(p.name for p in wants.iterdir())
    assert (wants / f"pi-daemon-journal-remote@{FLEET_PI}.socket").is_symlink()
    assert journal_file.read_bytes() == b"its entries"
    assert "pi-gone" not in (root / "etc/haproxy/pi-daemon-journal.cfg").read_text()
    changed = run.changed_tasks()
    assert any("left the fleet" in task for task in changed), changed


# --- The Pi ---------------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.slow
def test_the_pi_points_mqtt_and_metrics_at_the_collector(fleet: Fleet) -> None:
    root = fleet.pi
    config = tomllib.loads((root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8"))
    mqtt = config["mqtt"]
    assert {k: mqtt[k] for k in ("enabled", "host", "port", "tls", "username", "device_id")} == {
        "enabled": True,
        "host": COLLECTOR_ADDRESS,
        "port": 8883,
        "tls": True,
        "username": PI,
        "device_id": PI,
    }
    # The fleet CA's files where fleet_ca wrote them: nothing copied from the controller.
    assert (mqtt["ca_file"], mqtt["cert_file"], mqtt["key_file"]) == (
        "/etc/fleet-ca/ca.pem",
        "/etc/fleet-ca/host.pem",
        "/etc/fleet-ca/host.key",
    )
    assert sorted(p.name for p in (root / "etc/pi-daemon/mqtt").iterdir()) == ["password"]
    assert mqtt["password_file"] == "/etc/pi-daemon/mqtt/password"
    password = root / "etc/pi-daemon/mqtt/password"
    assert password.read_text(encoding="utf-8") == fleet.password(PI) + "\n"
    assert stat_of(root, "/etc/pi-daemon/mqtt/password") == (0o600, "pi-daemon", "pi-daemon")
    assert config["metrics"] == {
        "enabled": True,
        "address": PI_ADDRESS,
        "port": 9110,
        "cert_file": "/etc/fleet-ca/host.pem",
        "key_file": "/etc/fleet-ca/host.key",
        "client_ca_file": "/etc/fleet-ca/ca.pem",
    }
    # The release has both extras, and the service user reads the key (its group) and
    # passes the daemon's own check of this config.
    current = os.readlink(root / "opt/pi-daemon/current")
    assert current.endswith("-mqtt-metrics"), current
    probe = rf.chroot(
        root, "/opt/pi-daemon/venv/bin/python", "-c", "import paho.mqtt, prometheus_client"
    )
    assert probe.returncode == 0, probe.stderr
    assert can_read_as(root, "pi-daemon", "/etc/fleet-ca/host.key")
    check = rf.chroot(
        root,
        "/opt/pi-daemon/venv/bin/pi-daemon",
        "check-config",
        "/etc/pi-daemon/config.toml",
        user="pi-daemon",
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.system
@pytest.mark.slow
def test_the_pi_uploads_its_journal_and_keeps_trying(fleet: Fleet) -> None:
    root = fleet.pi
    conf = (root / "etc/systemd/journal-upload.conf.d/pi-daemon-fleet.conf").read_text()
    for line in (
        "[Upload]",
        f"URL=https://{COLLECTOR_ADDRESS}:19532",
        "ServerKeyFile=/etc/fleet-ca/host.key",
        "ServerCertificateFile=/etc/fleet-ca/host.pem",
        "TrustedCertificateFile=/etc/fleet-ca/ca.pem",
    ):
        assert re.search(rf"^{re.escape(line)}$", conf, re.M), (line, conf)
    dropin = (
        root / "etc/systemd/system/systemd-journal-upload.service.d/pi-daemon-fleet.conf"
    ).read_text()
    for line in ("StartLimitIntervalSec=0", "Restart=always", "SupplementaryGroups=fleet-tls"):
        assert re.search(rf"^{re.escape(line)}$", dropin, re.M), (line, dropin)
    wants = root / "etc/systemd/system/multi-user.target.wants/systemd-journal-upload.service"
    assert wants.is_symlink()
    verify = rf.chroot_with_proc(
        root, "systemd-analyze", "verify", "--man=no", "systemd-journal-upload.service"
    )
    assert verify.returncode == 0 and "pi-daemon-fleet" not in verify.stderr, verify.stderr
    # The package brings the receiver too; nothing enables it on a Pi.
    receiver = root / "etc/systemd/system/sockets.target.wants/systemd-journal-remote.socket"
    assert not receiver.is_symlink()


# --- The roles' documentation ----------------------------------------------------------------


def role_defaults(role: str) -> dict:
    import yaml

    path = rf.ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@pytest.mark.parametrize("role", ["collector", "fleet_ca"])
def test_every_variable_is_in_the_roles_readme_with_its_default(role: str) -> None:
    readme = (rf.ANSIBLE_DIR / "roles" / role / "README.md").read_text(encoding="utf-8")
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(\w+)` \| (.*?) \|", readme, re.M)
    }
    for name, default in role_defaults(role).items():
        assert name in rows, f"{role}/README.md does not list {name}"
        if isinstance(default, bool | int | float):
            assert json.dumps(default) in rows[name], (role, name, rows[name])
        elif isinstance(default, str) and "{{" not in default:
            assert default in rows[name], (role, name, rows[name])


def test_the_rules_use_only_metrics_the_daemon_exports() -> None:
    """Every metric name in the shipped rules (and in the test series above) is one a real
    scrape of the daemon's registry has, with MQTT delivery on."""
    pytest.importorskip("prometheus_client")
    from pi_daemon.metrics import Metrics
    from pi_daemon.mqtt.status import ConnectionState, DeliveryStatus
    from pi_daemon.readings import Readings
    from pi_daemon.status import DaemonStatus, ModelInfo

    status = DaemonStatus(
        monotonic=10.0,
        started_monotonic=0.0,
        model=ModelInfo("m", "aaaa", "litert", "2.3.0"),
        source="files",
        frames=5,
        skipped_frames=1,
        dropped_frames=0,
        sink_events_dropped=0,
        last_label="tabby",
        last_score=0.5,
        last_frame_monotonic=9.0,
        stalled=False,
        fps=1.0,
        latency_p50_ms=5.0,
        # A Pi's sensors (without them those families have no sample).
        readings=Readings(cpu_temp_c=50.0, undervoltage=False, throttled_flags=0),
        delivery=DeliveryStatus(ConnectionState.CONNECTED, "", 0, 0, 1 << 20),
    )
    metrics = Metrics()
    metrics.watch(lambda: status)
    body, _ = metrics.exposition()
    exported = set(re.findall(r"^([a-z_]+)(?:\{| )", body.decode(), re.M)) | {"up"}
    template = rf.ANSIBLE_DIR / "roles/collector/templates/pi-daemon-rules.yml.j2"
    used = set(re.findall(r"\b(up|pi_daemon_[a-z_]+)\{", template.read_text(encoding="utf-8")))
    used |= {series.split("{", 1)[0] for series in RULE_SERIES}
    assert used and used <= exported, used - exported
