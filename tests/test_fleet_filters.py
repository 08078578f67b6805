"""ansible/filter_plugins/fleet_collector.py against the real engines it writes for.

* The password hash is checked against the real `mosquitto_passwd` (the same format and,
  given its salt, the same hash) and against the real broker: a password file written by
  the filter lets the right password in and keeps a wrong one out.
* The Home Assistant node id is the daemon's own (pi_daemon/mqtt/topics.py).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pytest

from pi_daemon.mqtt.topics import Topics
from tests import mqtt_broker

REPO = Path(__file__).resolve().parents[1]


def load_filters() -> ModuleType:
    path = REPO / "ansible" / "filter_plugins" / "fleet_collector.py"
    spec = importlib.util.spec_from_file_location("fleet_collector", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fc = load_filters()

needs_mosquitto = pytest.mark.skipif(
    not (shutil.which("mosquitto_passwd") or os.path.exists(mqtt_broker.MOSQUITTO_PASSWD)),
    reason="mosquitto is not installed (.ci/apt-packages.txt installs it)",
)


def split_entry(entry: str) -> tuple[str, int, bytes, bytes]:
    empty, tag, iterations, salt, digest = entry.split("$")
    assert empty == ""
    return tag, int(iterations), base64.b64decode(salt), base64.b64decode(digest)


def test_the_hash_has_mosquitto_2s_pbkdf2_sha512_shape() -> None:
    tag, iterations, salt, digest = split_entry(fc.mosquitto_password_hash("hunter2", "pi-a"))
    assert (tag, iterations, len(salt), len(digest)) == ("7", 101, 12, 64)


def test_the_salt_is_deterministic_per_user_and_password() -> None:
    first = fc.mosquitto_password_hash("hunter2", "pi-a")
    assert fc.mosquitto_password_hash("hunter2", "pi-a") == first  # a rerun changes nothing
    assert fc.mosquitto_password_hash("hunter2", "pi-b") != first
    assert fc.mosquitto_password_hash("hunter3", "pi-a") != first
    assert split_entry(fc.mosquitto_password_hash("hunter2", "pi-b"))[2] != split_entry(first)[2]


@pytest.mark.parametrize(
    ("password", "username"),
    [("", "pi-a"), ("secret", ""), ("secret", "a:b"), (None, "pi-a")],
)
def test_unusable_passwords_and_user_names_are_refused(password, username) -> None:
    with pytest.raises(fc.AnsibleFilterError):
        fc.mosquitto_password_hash(password, username)


@needs_mosquitto
def test_the_hash_is_what_the_real_mosquitto_passwd_computes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    password = "s3cret with spaces and ünïcode"
    subprocess.run(
        [mqtt_broker.MOSQUITTO_PASSWD, "-c", "-b", str(passwd), "pi-a", password],
        check=True,
        capture_output=True,
        timeout=30,
    )
    user, entry = passwd.read_text(encoding="utf-8").strip().split(":", 1)
    assert user == "pi-a"
    tag, iterations, salt, _ = split_entry(entry)
    assert (tag, iterations, len(salt)) == ("7", fc.MOSQUITTO_ITERATIONS, fc.MOSQUITTO_SALT_BYTES)
    # Given mosquitto_passwd's own (random) salt, the filter computes the very same line.
    assert fc.pbkdf2_entry(password, salt, iterations) == entry


@needs_mosquitto
@pytest.mark.skipif(os.geteuid() != 0, reason="the broker test runs mosquitto as root")
def test_the_real_broker_accepts_the_filters_password_file() -> None:
    """A broker whose password file the filter wrote: the right password connects, a
    wrong one and an unknown user are refused."""
    # Not pytest's private tmp_path: the broker reads the file as the mosquitto user.
    root = Path(tempfile.mkdtemp(prefix="pi-daemon-passwd-"))
    root.chmod(0o755)
    user = pwd.getpwnam("mosquitto")
    passwd = root / "passwd"
    passwd.write_text(
        f"pi-a:{fc.mosquitto_password_hash('right one', 'pi-a')}\n"
        f"consumer:{fc.mosquitto_password_hash('other', 'consumer')}\n",
        encoding="utf-8",
    )
    os.chown(passwd, 0, user.pw_gid)
    passwd.chmod(0o640)
    port = mqtt_broker.free_port()
    config = root / "mosquitto.conf"
    config.write_text(
        f"listener {port} {mqtt_broker.HOST}\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        "log_dest stderr\n",
        encoding="utf-8",
    )
    broker = subprocess.Popen(
        [mqtt_broker.MOSQUITTO, "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def publish(username: str, password: str) -> subprocess.CompletedProcess[str]:
            pub = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
            argv = [pub, "-h", mqtt_broker.HOST, "-p", str(port), "-u", username, "-P", password]
            return subprocess.run(
                [*argv, "-t", "t", "-m", "m", "-q", "1"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        # The broker needs a moment to listen; retry the good login until it does.
        for _ in range(100):
            good = publish("pi-a", "right one")
            if "Connection refused" not in good.stderr:
                break
            time.sleep(0.05)
        assert good.returncode == 0, good.stderr
        wrong = publish("pi-a", "wrong one")
        assert wrong.returncode != 0 and "not authorised" in wrong.stderr.lower(), wrong.stderr
        unknown = publish("pi-b", "right one")
        assert unknown.returncode != 0, unknown.stderr
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    ("prefix", "device_id"),
    [("pi-daemon", "pi-a"), ("pi-daemon", "pi-kitchen.local"), ("cams", "Pi A-2"), ("x", "ä")],
)
def test_the_node_id_is_the_daemons_own(prefix: str, device_id: str) -> None:
    topics = Topics(prefix, device_id, "homeassistant")
    assert fc.ha_node_id(prefix, device_id) == topics.node_id


@pytest.mark.parametrize(
    ("name", "address", "expected"),
    [
        ("pi-a", "192.0.2.10", ["DNS:pi-a", "IP:192.0.2.10"]),
        ("pi-a", "pi-a", ["DNS:pi-a"]),
        ("pi-a", "pi-a.lan", ["DNS:pi-a", "DNS:pi-a.lan"]),
        ("collector", "2001:db8::1", ["DNS:collector", "IP:2001:db8::1"]),
        ("192.0.2.7", "192.0.2.7", ["IP:192.0.2.7"]),
    ],
)
def test_subject_alt_names(name: str, address: str, expected: list[str]) -> None:
    assert fc.fleet_subject_alt_names(name, address) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [("192.0.2.1", "192.0.2.1"), ("2001:db8::1", "[2001:db8::1]"), ("c.lan", "c.lan")],
)
def test_url_host(address: str, expected: str) -> None:
    assert fc.url_host(address) == expected


def test_a_pi_without_instances_is_one_device() -> None:
    assert fc.fleet_devices("pi-a", [], 9110) == [
        {"device_id": "pi-a", "metrics_port": 9110, "instance": ""}
    ]


def test_each_instance_is_a_device_with_the_daemons_suffix() -> None:
    instances = [
        {"name": "cam1", "vars": {"pi_daemon_metrics_port": 9111}},
        {"name": "cam2", "vars": {"pi_daemon_mqtt_device_id": "porch"}},
        {"name": "cam3"},
    ]
    assert fc.fleet_devices("pi-a", instances, "9110") == [
        {"device_id": "pi-a-cam1", "metrics_port": 9111, "instance": "cam1"},
        {"device_id": "porch-cam2", "metrics_port": 9110, "instance": "cam2"},
        {"device_id": "pi-a-cam3", "metrics_port": 9110, "instance": "cam3"},
    ]
