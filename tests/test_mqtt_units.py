"""The pure parts of pi_daemon.mqtt, by tables: backoff, topics, commands, discovery, the
local files (password, TLS), and the status types."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jinja2
import pytest

from pi_daemon.config import MqttSection, replace
from pi_daemon.errors import EX_CONFIG, ConfigError
from pi_daemon.events import FIELDS, MESSAGE_IDS, Event
from pi_daemon.mqtt import Command, DeliveryStatus, DeviceState, RetryPolicy, Topics
from pi_daemon.mqtt.backoff import Backoff
from pi_daemon.mqtt.commands import describe, parse_command
from pi_daemon.mqtt.discovery import discovery_messages
from pi_daemon.mqtt.link import Waker
from pi_daemon.mqtt.security import read_password, tls_context
from pi_daemon.mqtt.status import ConnectionState
from pi_daemon.mqtt.topics import device_id_for
from pi_daemon.throttle import STATES
from tests.mqtt_broker import make_certificates

# -- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "rand", "expected"),
    [
        (0, 0.5, 1.0),  # the first retry after initial_s
        (1, 0.5, 2.0),
        (5, 0.5, 32.0),
        (6, 0.5, 60.0),  # capped at max_s
        (200, 0.5, 60.0),  # no overflow however long it is down
        (0, 0.0, 0.8),  # -20 % jitter
        (0, 1.0, 1.2),  # +20 % jitter
        (6, 1.0, 72.0),
    ],
)
def test_backoff_doubles_with_jitter_up_to_the_cap(failures, rand, expected):
    backoff = Backoff(RetryPolicy(initial_s=1, max_s=60, jitter=0.2), rand=lambda: rand)
    for _ in range(failures):
        backoff.next_delay()
    assert backoff.next_delay() == pytest.approx(expected)


def test_backoff_unauthorized_is_long_and_does_not_advance_the_ladder():
    backoff = Backoff(RetryPolicy(initial_s=1, unauthorized_s=300, jitter=0), rand=lambda: 0.5)
    assert backoff.next_delay(unauthorized=True) == 300
    assert backoff.next_delay(unauthorized=True) == 300
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay() == 2.0
    backoff.reset()
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0}, {"initial_s": 10, "max_s": 1}, {"jitter": 1.0}, {"unauthorized_s": 0}],
)
def test_retry_policy_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# -- waking the network thread -----------------------------------------------------------


def test_the_waker_never_loses_a_wake_up():
    """A producer does work and wakes; the consumer selects, drains, takes the work. A lost
    wake-up shows as a select() that times out with work waiting. (With drain() clearing the
    flag before reading the socket, this failed within about a thousand rounds.)"""
    waker = Waker()
    work = [0]
    stop = threading.Event()

    def producer() -> None:
        while not stop.is_set():
            work[0] += 1
            waker.wake()
            time.sleep(0)

    thread = threading.Thread(target=producer)
    thread.start()
    seen, rounds = 0, 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([waker], [], [], 0.5)
            assert readable or work[0] == seen, f"lost wake-up after {rounds} rounds"
            if readable:
                waker.drain()
            seen = work[0]
            rounds += 1
    finally:
        stop.set()
        thread.join()
        waker.close()
    assert rounds > 100


# -- topics -------------------------------------------------------------------------------


def test_topics_are_the_issues():
    topics = Topics("pi-daemon", "kitchen", "homeassistant")
    assert topics.events == "pi-daemon/kitchen/events"
    assert topics.availability == "pi-daemon/kitchen/availability"
    assert topics.state == "pi-daemon/kitchen/state"
    assert topics.commands == "pi-daemon/kitchen/set"
    assert topics.ha_status == "homeassistant/status"
    assert topics.discovery("sensor", "label") == (
        "homeassistant/sensor/pi-daemon_kitchen/label/config"
    )


@pytest.mark.parametrize(
    ("configured", "hostname", "expected"),
    [
        ("", "Kitchen-Pi", "kitchen-pi"),  # the hostname, lower-cased
        ("", "cam.example.org", "cam.example.org"),
        ("Garage", "ignored", "Garage"),  # as configured, case kept
    ],
)
def test_device_id_defaults_to_the_lower_cased_hostname(configured, hostname, expected):
    section = MqttSection(device_id=configured)
    assert device_id_for(section, hostname=hostname) == expected


def test_a_hostname_that_is_no_topic_level_is_a_config_error():
    with pytest.raises(ConfigError, match=r"mqtt.device_id \(from the hostname\)"):
        device_id_for(MqttSection(), hostname="a/b")


def test_discovery_ids_only_use_home_assistants_characters():
    topics = Topics("pi daemon", "cam.1+", "homeassistant")
    topic = topics.discovery("sensor", "label")
    node = topic.split("/")[2]
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", node), node


# -- commands -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "retained", "expected"),
    [
        (b'{"command": "pause"}', False, Command.PAUSE),
        (b'{"command":"resume"}', False, Command.RESUME),
        (b' {"command": "reload"} \n', False, Command.RELOAD),
        (b'{"command": "pause"}', True, "retained message ignored"),
        (b"pause", False, "not JSON"),
        (b"", False, "not JSON"),
        (b"\xff\xfe", False, "not JSON"),
        (b'{"command": "Pause"}', False, 'unknown command "Pause"'),
        (b'{"command": "explode"}', False, 'unknown command "explode"'),
        (b'{"command": 1}', False, '"command" must be one of'),
        (b'{"command": null}', False, '"command" must be one of'),
        (b"{}", False, '"command" must be one of'),
        (b'{"command": "pause", "now": true}', False, "unknown key 'now'"),
        (b'{"command": "resume", "command": "pause"}', False, "a key appears twice"),
        (b'["pause"]', False, "not a JSON object (list)"),
        (b'"pause"', False, "not a JSON object (str)"),
        (b"[" * 600 + b"]" * 600, False, "more than 1024"),
        (b"[" * 500 + b"]" * 500, False, "not a JSON object"),
        (b'{"command": "pause"' + b" " * 2000 + b"}", False, "more than 1024"),
        (b'{"command": NaN}', False, '"command" must be one of'),
    ],
)
def test_commands_accept_exactly_three_shapes(payload, retained, expected):
    result = parse_command(payload, retained)
    if isinstance(expected, Command):
        assert result is expected
    else:
        assert not isinstance(result, Command) and expected in result, result


def test_command_payloads_are_described_printably():
    assert describe(b"a\x00b\nc") == "a?b?c"
    assert describe(b"x" * 100).endswith("...")


# -- Home Assistant discovery -------------------------------------------------------------

# Keys from Home Assistant's documentation (integrations/sensor.mqtt,
# integrations/binary_sensor.mqtt, integrations/mqtt "Discovery payload").
HA_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category",
    "entity_picture", "expire_after", "force_update", "icon", "json_attributes_template",
    "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "qos", "state_topic", "unique_id", "value_template",
}  # fmt: skip
HA_SENSOR_ONLY = {
    "last_reset_value_template", "options", "state_class", "suggested_display_precision",
    "unit_of_measurement",
}  # fmt: skip
HA_KEYS = {
    "sensor": HA_COMMON | HA_SENSOR_ONLY,
    "binary_sensor": HA_COMMON | {"off_delay", "payload_off", "payload_on"},
}
HA_DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
HA_ORIGIN_KEYS = {"name", "sw_version", "support_url"}
# Home Assistant's sensor and binary_sensor device classes used here.
HA_SENSOR_CLASSES = {"temperature", "enum"}
HA_BINARY_CLASSES = {"problem"}


def _configs() -> dict[str, tuple[str, dict]]:
    topics = Topics("pi-daemon", "kitchen", "homeassistant")
    return {
        topic: (topic.split("/")[1], json.loads(payload))
        for topic, payload in discovery_messages(topics, "1.2.3")
    }


def test_discovery_has_one_device_with_the_issues_entities():
    configs = _configs()
    by_kind = sorted((kind, topic.split("/")[3]) for topic, (kind, _) in configs.items())
    assert by_kind == [
        ("binary_sensor", "paused"),
        ("binary_sensor", "undervoltage"),
        ("sensor", "fps"),
        ("sensor", "label"),
        ("sensor", "score"),
        ("sensor", "soc_temperature"),
        ("sensor", "throttle_state"),
    ]
    devices = {json.dumps(config["device"], sort_keys=True) for _, config in configs.values()}
    assert len(devices) == 1, "one device per Pi"
    assert len({config["unique_id"] for _, config in configs.values()}) == len(configs)


def test_every_discovery_key_is_one_home_assistant_documents():
    for topic, (kind, config) in _configs().items():
        assert re.fullmatch(r"homeassistant/(sensor|binary_sensor)/[\w-]+/[\w-]+/config", topic)
        assert set(config) <= HA_KEYS[kind], (topic, set(config) - HA_KEYS[kind])
        assert set(config["device"]) <= HA_DEVICE_KEYS
        assert config["device"]["identifiers"]
        assert set(config["origin"]) <= HA_ORIGIN_KEYS and config["origin"]["name"]
        # Tied to the availability topic, with the payloads we publish.
        assert config["availability_topic"] == "pi-daemon/kitchen/availability"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online",
            "offline",
        )
        assert config["state_topic"] == "pi-daemon/kitchen/state"
        if "options" in config:  # documented: enum only, never with state_class or a unit
            assert config["device_class"] == "enum"
            assert "state_class" not in config and "unit_of_measurement" not in config
        if "entity_category" in config:
            assert config["entity_category"] == "diagnostic"
        classes = HA_SENSOR_CLASSES if kind == "sensor" else HA_BINARY_CLASSES
        assert config.get("device_class", next(iter(classes))) in classes


def test_throttle_sensor_options_are_the_throttle_states():
    configs = {topic.split("/")[3]: config for topic, (_, config) in _configs().items()}
    assert configs["throttle_state"]["options"] == list(STATES)
    assert configs["soc_temperature"]["unit_of_measurement"] == "°C"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            DeviceState("tabby", 0.91, 9.5, "warm", 71.25, False, "ab" * 32, False),
            {
                "label": "tabby",
                "score": "0.91",
                "fps": "9.5",
                "soc_temperature": "71.25",
                "throttle_state": "warm",
                "undervoltage": "OFF",
                "paused": "OFF",
            },
        ),
        (
            # Nothing known yet: Home Assistant reads "None" as unknown.
            DeviceState(paused=True, undervoltage=None),
            {
                "label": "None",
                "score": "None",
                "fps": "None",
                "soc_temperature": "None",
                "throttle_state": "normal",
                "undervoltage": "None",
                "paused": "ON",
            },
        ),
        (DeviceState(undervoltage=True), {"undervoltage": "ON"}),
    ],
)
def test_value_templates_render_the_published_state(state, expected):
    # Home Assistant renders value_template with Jinja2 and `value_json` = the payload.
    value_json = json.loads(json.dumps(state.as_dict(1.0)))
    environment = jinja2.Environment()
    configs = {topic.split("/")[3]: config for topic, (_, config) in _configs().items()}
    for object_id, text in expected.items():
        template = environment.from_string(configs[object_id]["value_template"])
        assert template.render(value_json=value_json) == text, object_id


def test_device_state_json_keys_and_non_finite_numbers():
    state = DeviceState("cat", float("nan"), float("inf"), "hot", 80.0, True, "f" * 64, True)
    data = state.as_dict(12.5)
    assert list(data) == [
        "time", "label", "score", "fps", "throttle_state", "cpu_temp_c", "undervoltage",
        "model_sha256", "paused",
    ]  # fmt: skip
    assert data["score"] is None and data["fps"] is None  # JSON has no NaN


def test_status_snapshot_is_frozen_and_lists_every_drop_reason():
    status = DeliveryStatus(ConnectionState.CONNECTED, "", 3, 300, 1000, {"full": 2}, 5, 4, 7)
    assert status.connected and status.outbox_fill == 0.3 and status.dropped_total == 2
    assert dict(status.dropped) == {"full": 2, "oversized": 0}
    with pytest.raises(TypeError):
        status.dropped["full"] = 0  # type: ignore[index]


def test_mqtt_journal_event_is_registered():
    assert Event("mqtt") is Event.MQTT
    assert re.fullmatch(r"[0-9a-f]{32}", MESSAGE_IDS[Event.MQTT])
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    assert {"MQTT_STATE", "MQTT_REASON", "MQTT_COMMAND", "OUTBOX_DEPTH"} <= set(FIELDS)


# -- local files: the password and the TLS files (ConfigError, exit 78, one line) ---------


def _one_line(error: pytest.ExceptionInfo[ConfigError], *fragments: str) -> None:
    text = str(error.value)
    assert "\n" not in text and error.value.exit_code == EX_CONFIG
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def _password_file(tmp_path: Path, content: bytes, mode: int) -> Path:
    path = tmp_path / "password"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (b"s3cret\n", 0o600, "s3cret"),
        (b"s3cret", 0o400, "s3cret"),
        (b"s3cret\r\n", 0o600, "s3cret"),
        (b"with space \n", 0o600, "with space "),
        (b"\xef\xbb\xbfs3cret\n", 0o600, "s3cret"),  # a BOM from an editor
    ],
)
def test_password_file_holds_the_password(tmp_path, content, mode, expected):
    assert read_password(str(_password_file(tmp_path, content, mode))) == expected


@pytest.mark.parametrize(
    ("content", "mode", "fragments"),
    [
        (b"s3cret\n", 0o640, ["readable by group or others", "mode 0640", "chmod 600"]),
        (b"s3cret\n", 0o604, ["readable by group or others", "mode 0604"]),
        (b"s3cret\n", 0o644, ["readable by group or others"]),
        (b"", 0o600, ["is empty"]),
        (b"\n", 0o600, ["is empty"]),
        (b"one\ntwo\n", 0o600, ["more than one line"]),
        (b"\xff\xfe\xfd", 0o600, ["cannot read", "not UTF-8"]),
        (b"x" * 5000, 0o600, ["cannot read", "larger than"]),
    ],
)
def test_bad_password_files_are_config_errors(tmp_path, content, mode, fragments):
    path = _password_file(tmp_path, content, mode)
    with pytest.raises(ConfigError) as error:
        read_password(str(path))
    _one_line(error, "mqtt.password_file:", str(path), *fragments)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "missing", "No such file or directory"),
        (lambda tmp: tmp, "not a regular file (a directory)"),
        (lambda tmp: os.mkfifo(tmp / "fifo") or tmp / "fifo", "not a regular file (a FIFO)"),
    ],
)
def test_unreadable_password_files_are_config_errors(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as error:
        read_password(str(path))
    _one_line(error, "mqtt.password_file:", str(path), "cannot read", fragment)


def test_password_file_unreadable_by_the_service_user():
    # A root-owned 0600 file, as the unprivileged service user sees it.
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid (CI runs as root)")
    folder = Path(tempfile.mkdtemp(prefix="pi-daemon-pw-"))
    try:
        folder.chmod(0o755)
        path = _password_file(folder, b"s3cret\n", 0o600)
        code = (
            "import os, sys\n"
            "from pi_daemon.mqtt.security import read_password\n"
            "from pi_daemon.errors import ConfigError\n"
            "os.setgid(54321); os.setuid(54321)\n"
            "try:\n    read_password(sys.argv[1])\n"
            "except ConfigError as e:\n    print(e); sys.exit(e.exit_code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
    finally:
        shutil.rmtree(folder)
    assert result.returncode == EX_CONFIG, result.stderr
    assert "mqtt.password_file" in result.stdout and "Permission denied" in result.stdout


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _tls(**files: str) -> MqttSection:
    return replace(MqttSection(), tls=True, **files)


def test_tls_context_loads_ca_and_client_certificate(certificates):
    context = tls_context(
        _tls(
            ca_file=str(certificates.ca),
            cert_file=str(certificates.client_cert),
            key_file=str(certificates.client_key),
        )
    )
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    assert len(context.get_ca_certs()) == 1


def test_tls_without_ca_file_trusts_the_system(certificates):
    assert tls_context(_tls()).verify_mode.name == "CERT_REQUIRED"


@pytest.fixture
def bad_files(tmp_path, certificates):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(certificates.client_key), "-aes256", "-passout",
         "pass:x", "-out", str(encrypted)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return {"garbage": garbage, "plain": plain, "encrypted": encrypted, "dir": tmp_path}


@pytest.mark.parametrize(
    ("files", "fragments"),
    [
        ({"ca_file": "missing"}, ["mqtt.ca_file:", "cannot read", "No such file"]),
        ({"ca_file": "dir"}, ["mqtt.ca_file:", "not a regular file"]),
        ({"ca_file": "plain"}, ["mqtt.ca_file:", "not a PEM file"]),
        ({"ca_file": "garbage"}, ["mqtt.ca_file:", "not a valid CA certificate"]),
        ({"cert_file": "missing"}, ["mqtt.cert_file:", "No such file"]),
        ({"cert_file": "garbage"}, ["mqtt.cert_file:", "not a valid certificate"]),
        ({"cert_file": "client_cert"}, ["mqtt.cert_file:", "no private key"]),
        (
            {"cert_file": "client_cert", "key_file": "missing"},
            ["mqtt.key_file:", "No such file"],
        ),
        (
            {"cert_file": "client_cert", "key_file": "server_key"},
            ["mqtt.key_file:", "not a private key matching cert_file"],
        ),
        (
            {"cert_file": "client_cert", "key_file": "garbage"},
            ["mqtt.key_file:", "not a private key matching cert_file"],
        ),
        (
            {"cert_file": "client_cert", "key_file": "encrypted"},
            ["mqtt.key_file:", "encrypted"],
        ),
    ],
)
def test_bad_tls_files_are_config_errors(certificates, bad_files, files, fragments):
    known = {
        "client_cert": certificates.client_cert,
        "server_key": certificates.server_key,
        "missing": bad_files["dir"] / "missing.pem",
        **bad_files,
    }
    section = _tls(**{key: str(known[name]) for key, name in files.items()})
    with pytest.raises(ConfigError) as error:
        tls_context(section)
    _one_line(error, *fragments)
