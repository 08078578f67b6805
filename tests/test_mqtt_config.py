"""The [mqtt] section: every bad value is a config error with its key path (exit 78)."""

from __future__ import annotations

import pytest

from pi_daemon.config import Config, MqttSection, load_config, parse_config
from pi_daemon.errors import EX_CONFIG, ConfigError
from tests.conftest import assert_one_line_error


def test_defaults_are_the_issues():
    section = Config().mqtt
    assert section == MqttSection(
        enabled=False,
        host="localhost",
        port=1883,
        keepalive_s=30,
        qos=1,
        username="",
        password_file="",
        tls=False,
        ca_file="",
        cert_file="",
        key_file="",
        topic_prefix="pi-daemon",
        device_id="",
        discovery=True,
        discovery_prefix="homeassistant",
        outbox_max_bytes=16 * 1024 * 1024,
        outbox_fsync_interval_s=1.0,
        commands=False,
    )


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[mqtt]\nqos = 2", ["mqtt.qos:", "must be 0 or 1, got int 2"]),
        ("[mqtt]\nqos = true", ["mqtt.qos:"]),
        ('[mqtt]\nqos = "1"', ["mqtt.qos:"]),
        ("[mqtt]\nport = 0", ["mqtt.port:", "expected int >= 1"]),
        ("[mqtt]\nport = 70000", ["mqtt.port:", "<= 65535"]),
        ("[mqtt]\nkeepalive_s = 0", ["mqtt.keepalive_s:", ">= 1"]),
        ("[mqtt]\nkeepalive_s = 1.5", ["mqtt.keepalive_s:", "expected int, got float"]),
        ('[mqtt]\nhost = ""', ["mqtt.host:"]),
        ('[mqtt]\nenabled = "true"', ["mqtt.enabled:", "expected bool"]),
        ('[mqtt]\ntopic_prefix = "a/b"', ["mqtt.topic_prefix:", "single MQTT topic level", "'/'"]),
        ('[mqtt]\ntopic_prefix = "cams+"', ["mqtt.topic_prefix:", "'+'"]),
        ('[mqtt]\ntopic_prefix = "#"', ["mqtt.topic_prefix:", "'#'"]),
        ('[mqtt]\ntopic_prefix = ""', ["mqtt.topic_prefix:", "must not be empty"]),
        ('[mqtt]\ntopic_prefix = "$SYS"', ["mqtt.topic_prefix:", "'$'"]),
        ('[mqtt]\ntopic_prefix = "a\\u0000b"', ["mqtt.topic_prefix:", "NUL"]),
        ('[mqtt]\ntopic_prefix = "a\\tb"', ["mqtt.topic_prefix:", "control character"]),
        ('[mqtt]\ndevice_id = "kitchen/cam"', ["mqtt.device_id:", "'/'"]),
        ('[mqtt]\ndevice_id = "cam#1"', ["mqtt.device_id:", "'#'"]),
        ('[mqtt]\ndevice_id = "+"', ["mqtt.device_id:", "'+'"]),
        ('[mqtt]\ndiscovery_prefix = "ha//x"', ["mqtt.discovery_prefix:", "empty level"]),
        ('[mqtt]\ndiscovery_prefix = "ha/"', ["mqtt.discovery_prefix:", "empty level"]),
        ('[mqtt]\ndiscovery_prefix = ""', ["mqtt.discovery_prefix:", "must not be empty"]),
        ('[mqtt]\ndiscovery_prefix = "ha/+"', ["mqtt.discovery_prefix:", "'+'"]),
        ('[mqtt]\npassword_file = "/etc/pw"', ["mqtt.password_file:", "needs username"]),
        ('[mqtt]\nca_file = "/etc/ca.pem"', ["mqtt.ca_file:", "tls = true"]),
        ('[mqtt]\ncert_file = "/etc/c.pem"', ["mqtt.cert_file:", "tls = true"]),
        ('[mqtt]\ntls = true\nkey_file = "/etc/k.pem"', ["mqtt.key_file:", "needs cert_file"]),
        ("[mqtt]\noutbox_max_bytes = 1000", ["mqtt.outbox_max_bytes:", ">= 65536"]),
        ("[mqtt]\noutbox_fsync_interval_s = 0", ["mqtt.outbox_fsync_interval_s:", ">= 0.1"]),
        ("[mqtt]\noutbox_fsync_interval_s = nan", ["mqtt.outbox_fsync_interval_s:"]),
        ("[mqtt]\ncommand = true", ["mqtt.command: unknown key"]),
        ("mqtt = 1", ["mqtt:", "expected a table"]),
    ],
)
def test_bad_mqtt_config_reports_key_path(write_config, cli, toml, fragments):
    path = write_config(toml)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
    result = cli("check-config", str(path))
    assert_one_line_error(result, EX_CONFIG, str(path), *fragments)
    # The daemon refuses to start on it with the same code (systemd won't restart it).
    result = cli("run", "--config", str(path))
    assert_one_line_error(result, EX_CONFIG, *fragments)


def test_every_mqtt_problem_is_listed_under_its_own_key(write_config, cli):
    path = write_config(
        '[mqtt]\ntopic_prefix = "a/b"\ndevice_id = "c#"\npassword_file = "/x"\nca_file = "/y"'
    )
    result = cli("check-config", str(path))
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    keys = [line.split(": ")[2] for line in lines]
    assert keys == ["mqtt.topic_prefix", "mqtt.device_id", "mqtt.password_file", "mqtt.ca_file"]


def test_valid_mqtt_config_loads():
    config = parse_config(
        {
            "mqtt": {
                "enabled": True,
                "host": "broker.lan",
                "qos": 0,
                "username": "pi",
                "password_file": "~/pw",
                "tls": True,
                "ca_file": "ca.pem",
                "cert_file": "c.pem",
                "topic_prefix": "cams",
                "device_id": "Kitchen.Pi-1",
                "discovery_prefix": "ha/discovery",
            }
        }
    )
    assert config.mqtt.qos == 0
    assert not config.mqtt.password_file.startswith("~")  # expanded at load
    assert config.mqtt.device_id == "Kitchen.Pi-1"
