"""Filters for the pi_daemon role's instances: several cameras on one Pi.

Pure functions of their arguments, tested by tests/system/test_ansible_instances.py:

* `instances_checked(instances, rules, host_values, overridable, ...)`: every entry of
  `pi_daemon_instances` checked (its name, the role variables it overrides, and what two
  instances must not share), and each instance's config values: the host's checked values
  with the instance's own on top. Every problem is reported at once, each naming the
  instance and the variable, like `checked_vars`.
* `pi_daemon_units(names, service_name, config_file, config_dir)`: the unit, config file
  and unit file of each unit name (`pi-daemon.service`, `pi-daemon@cam1.service`), for
  the units the host runs now and those a recorded known-good state ran.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _load_fleet_checks() -> Any:
    """fleet_checks.py beside this file: its rules check an instance's variables exactly as
    preflight checks the host's (Ansible loads filter plugins without a package to import
    from)."""
    path = Path(__file__).with_name("fleet_checks.py")
    spec = importlib.util.spec_from_file_location("pi_daemon_fleet_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CHECKS = _load_fleet_checks()
Invalid = _CHECKS.Invalid
check_value = _CHECKS.check_value

# A systemd instance name (no escaping needed: %i and %I are the same), one MQTT topic
# level, a file name under /etc/pi-daemon and a directory under /var/lib/pi-daemon.
# Lower case only: the daemon lower-cases the instance in its device_id, so "Cam1" and
# "cam1" would be one device.
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
NAME_MEANS = "must be 1-32 lower-case letters, digits, _ and - (starting with a letter or digit)"
# config.toml is the plain unit's config; seq and snapshots are in the plain unit's state
# directory, /var/lib/pi-daemon, which holds each instance's state directory too.
RESERVED = ("config", "seq", "snapshots")
ENTRY_KEYS = ("name", "vars")


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def template_unit(service_name: str) -> str:
    """pi-daemon.service -> pi-daemon@.service."""
    return re.sub(r"\.service$", "", service_name) + "@.service"


def instance_unit(service_name: str, name: str) -> str:
    return re.sub(r"\.service$", "", service_name) + f"@{name}.service"


def pi_daemon_units(
    names: Sequence[str], service_name: str, config_file: str, config_dir: str
) -> list[dict[str, str]]:
    """[{name, config, unit_file}] for each unit name: the plain unit reads config_file,
    an instance <base>@<name>.service reads <config_dir>/<name>.toml."""
    base = re.sub(r"\.service$", "", service_name)
    units = []
    for unit in names:
        match = re.fullmatch(re.escape(base) + r"@([^.@]+)\.service", unit)
        if unit == service_name:
            config, unit_file = config_file, service_name
        elif match:
            config, unit_file = f"{config_dir}/{match.group(1)}.toml", template_unit(service_name)
        else:
            raise Invalid(f"{unit}: neither {service_name} nor an instance of it")
        units.append(
            {"name": unit, "config": config, "unit_file": f"/etc/systemd/system/{unit_file}"}
        )
    return units


def _problems_of_entry(
    index: int, entry: Any, rules: Mapping[str, Mapping[str, Any]], overridable: Sequence[str]
) -> tuple[str, list[str], dict[str, Any]]:
    """(name, problems, typed overrides) of one entry."""
    where = f"pi_daemon_instances[{index}]"
    if not isinstance(entry, Mapping):
        return "", [f"{where}={_shown(entry)}: must be a mapping with name and vars"], {}
    problems = []
    name = entry.get("name")
    if isinstance(name, str) and NAME.fullmatch(name):
        where = f"pi_daemon_instances[{name}]"
        if name in RESERVED:
            problems.append(
                f"{where}: the name {_shown(name)} is reserved (one of {', '.join(RESERVED)}: "
                "the plain unit's config or state)"
            )
    else:
        problems.append(f"{where}.name={_shown(name)}: {NAME_MEANS}")
        name = ""
    for key in entry:
        if key not in ENTRY_KEYS:
            problems.append(f"{where}.{key}: unknown key (an instance has {', '.join(ENTRY_KEYS)})")
    overrides = entry.get("vars", {})
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        problems.append(f"{where}.vars={_shown(overrides)}: must be a mapping of role variables")
        return name, problems, {}
    typed = {}
    for variable, value in overrides.items():
        if variable not in overridable:
            problems.append(
                f"{where}.vars.{variable}: not a variable an instance may set "
                f"(those are: {', '.join(overridable)})"
            )
            continue
        try:
            typed[variable] = check_value(value, rules[variable])
        except Invalid as error:
            problems.append(f"{where}.vars.{variable}={_shown(value)}: {error}")
    return name, problems, typed


def _camera(values: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What a config opens as its camera, where two instances must differ (files: none)."""
    source = values.get("pi_daemon_source")
    camera_num = values.get("pi_daemon_picamera2_camera_num")
    device = values.get("pi_daemon_opencv_device")
    if source == "picamera2":
        return ("picamera2.camera_num", camera_num)
    if source == "opencv":
        return ("opencv.device", device)
    if source == "auto":
        return ("picamera2.camera_num and opencv.device", camera_num, device)
    return None


def _shared(instances: list[dict[str, Any]], what: str, key: Any) -> list[str]:
    """A problem for each value that more than one instance has."""
    seen: dict[Any, list[str]] = {}
    for instance in instances:
        value = key(instance["settings"], instance["name"])
        if value is not None:
            seen.setdefault(json.dumps(value), []).append(instance["name"])
    return [
        f"pi_daemon_instances {', '.join(names)}: the same {what} ({value})"
        for value, names in seen.items()
        if len(names) > 1
    ]


def instances_checked(
    instances: Any,
    rules: Sequence[Mapping[str, Any]],
    host_values: Mapping[str, Any],
    overridable: Sequence[str],
    service_name: str,
    config_dir: str,
    state_dir: str,
) -> dict[str, Any]:
    """{"problems": [...], "instances": [{name, unit, config, settings}]}.

    `host_values` are the role's variables as checked_vars typed them. Each instance's
    values are those with its own `vars` on top; unless it sets pi_daemon_output_events_file,
    its events go to <state_dir>/<name>/events.jsonl (its own StateDirectory=), or nowhere
    when the host's events file is "" (off).
    """
    if instances is None:
        instances = []
    if isinstance(instances, str | bytes | Mapping) or not isinstance(instances, Sequence):
        return {
            "problems": [f"pi_daemon_instances={_shown(instances)}: must be a list"],
            "instances": [],
        }
    by_name = {rule["name"]: rule for rule in rules}
    missing = [name for name in overridable if name not in by_name]
    if missing:
        raise Invalid(f"overridable variables without a rule: {', '.join(missing)}")
    problems: list[str] = []
    checked: list[dict[str, Any]] = []
    names: list[str] = []
    for index, entry in enumerate(instances):
        name, entry_problems, typed = _problems_of_entry(index, entry, by_name, overridable)
        problems += entry_problems
        if not name:
            continue
        if name in names:
            problems.append(f"pi_daemon_instances[{name}]: listed more than once")
            continue
        names.append(name)
        values = {**{k: v for k, v in host_values.items() if k != "pi_daemon_instances"}, **typed}
        if "pi_daemon_output_events_file" not in typed:
            host_events = host_values.get("pi_daemon_output_events_file", "")
            values["pi_daemon_output_events_file"] = (
                f"{state_dir}/{name}/events.jsonl" if host_events else ""
            )
        checked.append(
            {
                "name": name,
                "unit": instance_unit(service_name, name),
                "config": f"{config_dir}/{name}.toml",
                "settings": values,
            }
        )

    def device_id(values: Mapping[str, Any], name: str) -> str:
        return f"{(values.get('pi_daemon_mqtt_device_id') or '<host name>').lower()}-{name}"

    def metrics_port(values: Mapping[str, Any], name: str) -> int | None:
        port = values.get("pi_daemon_metrics_port")
        return port if values.get("pi_daemon_metrics_enabled") and port else None

    problems += _shared(checked, "device_id", device_id)
    problems += _shared(checked, "camera", lambda values, name: _camera(values))
    problems += _shared(
        checked,
        "output.events_file",
        lambda values, name: values["pi_daemon_output_events_file"] or None,
    )
    problems += _shared(checked, "metrics port", metrics_port)
    return {"problems": problems, "instances": checked}


class FilterModule:
    """Ansible's entry point for this file."""

    def filters(self) -> dict[str, Any]:
        return {"instances_checked": instances_checked, "pi_daemon_units": pi_daemon_units}
