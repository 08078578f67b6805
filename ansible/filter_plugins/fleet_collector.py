"""Filters for the fleet's collector (roles collector, fleet_ca and pi_daemon's fleet.yml).

Pure functions of their arguments, tested in tests/test_fleet_filters.py against the real
`mosquitto_passwd` and the daemon's own topic code:

* `mosquitto_password_hash(password, username)`: one password file entry's hash, in the
  format mosquitto 2.0's `mosquitto_passwd` writes (`$7$<iterations>$<salt>$<hash>`:
  PBKDF2-HMAC-SHA512 over the password, 101 iterations, a 12-byte salt, both base64).
  The salt is derived from the user and password instead of drawn at random, so that an
  unchanged password renders the same line and a second playbook run changes nothing.
* `fleet_subject_alt_names(name, address)`: the subjectAltName entries of a host's
  certificate: its inventory name and its fleet address (IP: or DNS:, as it is).
* `ha_node_id(topic_prefix, device_id)`: the Home Assistant node id the daemon publishes
  its discovery configs under (pi_daemon/mqtt/topics.py, `Topics.node_id`).
* `url_host(address)`: an address as the host part of a URL (IPv6 in brackets).
* `fleet_devices(device_id, instances, metrics_port)`: what one Pi runs, as the collector
  must know it: each daemon's MQTT device id and metrics port (one, or one per entry of
  `pi_daemon_instances`, whose device id the daemon suffixes with `-<instance>`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

try:  # Ansible is there whenever a playbook calls these; the tests import them without it.
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only outside Ansible
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

# mosquitto 2.0: apps/mosquitto_passwd and src/password_mosq.c (pw_sha512_pbkdf2 = 7).
MOSQUITTO_PBKDF2_TAG = 7
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12
# Domain separation for the derived salt (not a secret: the salt is stored in the file).
SALT_CONTEXT = b"pi-daemon fleet mosquitto salt\x00"

# What Home Assistant accepts in a discovery topic's node id (the daemon's own rule).
NOT_HA_ID = re.compile(r"[^a-zA-Z0-9_-]")


def mosquitto_password_hash(
    password: str, username: str, iterations: int = MOSQUITTO_ITERATIONS
) -> str:
    """`$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>` for `password`."""
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError("mosquitto_password_hash: the password must be a non-empty string")
    if not isinstance(username, str) or not username or ":" in username:
        raise AnsibleFilterError(
            f"mosquitto_password_hash: {username!r} cannot be a mosquitto user name "
            "(not empty, no ':')"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise AnsibleFilterError("mosquitto_password_hash: iterations must be a positive integer")
    secret = password.encode("utf-8")
    salt = hmac.new(secret, SALT_CONTEXT + username.encode("utf-8"), hashlib.sha256).digest()
    return pbkdf2_entry(password, salt[:MOSQUITTO_SALT_BYTES], iterations)


def pbkdf2_entry(password: str, salt: bytes, iterations: int) -> str:
    """The `$7$...` hash of `password` with a given salt (what mosquitto recomputes)."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "${}${}${}${}".format(
        MOSQUITTO_PBKDF2_TAG,
        iterations,
        base64.b64encode(salt).decode("ascii"),
        base64.b64encode(digest).decode("ascii"),
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def fleet_subject_alt_names(name: str, address: str) -> list[str]:
    """`DNS:<name>` and the fleet address as `IP:` or `DNS:`, without repeats."""
    names: list[str] = []
    for text in (str(name), str(address)):
        entry = f"IP:{ipaddress.ip_address(text)}" if _is_ip(text) else f"DNS:{text}"
        if entry not in names:
            names.append(entry)
    return names


def ha_node_id(topic_prefix: str, device_id: str) -> str:
    """The node id of the daemon's Home Assistant discovery topics."""
    return NOT_HA_ID.sub("_", f"{topic_prefix}_{device_id}")


def url_host(address: str) -> str:
    """`address` as the host of a URL: an IPv6 address in brackets."""
    text = str(address)
    return f"[{text}]" if ":" in text and _is_ip(text) else text


def fleet_devices(
    device_id: str, instances: Sequence[Mapping[str, Any]] | None, metrics_port: Any
) -> list[dict[str, Any]]:
    """[{device_id, metrics_port, instance}] of the daemons one Pi runs.

    Without instances: the plain unit, `device_id` on `metrics_port`. With them: each
    instance's `vars` may set its own `pi_daemon_mqtt_device_id` and
    `pi_daemon_metrics_port`; the daemon appends `-<instance>` (lower case) to the device
    id either way (pi_daemon/identity.py).
    """
    if not device_id:
        raise AnsibleFilterError("fleet_devices: the device id must not be empty")
    if not instances:
        return [{"device_id": device_id, "metrics_port": int(metrics_port), "instance": ""}]
    devices = []
    for entry in instances:
        name = str(entry["name"])
        overrides = entry.get("vars") or {}
        base = overrides.get("pi_daemon_mqtt_device_id") or device_id
        devices.append(
            {
                "device_id": f"{base}-{name.lower()}",
                "metrics_port": int(overrides.get("pi_daemon_metrics_port", metrics_port)),
                "instance": name,
            }
        )
    return devices


class FilterModule:
    """Ansible's entry point for this file."""

    def filters(self) -> dict[str, Any]:
        return {
            "mosquitto_password_hash": mosquitto_password_hash,
            "fleet_subject_alt_names": fleet_subject_alt_names,
            "ha_node_id": ha_node_id,
            "url_host": url_host,
            "fleet_devices": fleet_devices,
        }
