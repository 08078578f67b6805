"""Home Assistant MQTT discovery: one device per Pi, its sensors read the retained state.

Single-component discovery (`<discovery_prefix>/<component>/<node_id>/<object_id>/config`,
retained), which every Home Assistant release understands. Every key below is from Home
Assistant's MQTT documentation (integrations/mqtt, sensor.mqtt, binary_sensor.mqtt):
`name`, `unique_id`, `state_topic`, `value_template`, `availability_topic`,
`payload_available`, `payload_not_available`, `device` (`identifiers`, `name`, `model`,
`sw_version`), `origin` (`name`, `sw_version`), `qos`, `icon`,
`entity_category`, and for sensors `device_class`, `state_class`, `unit_of_measurement`,
`suggested_display_precision`, `options` (device_class enum only, never with state_class or a
unit), for binary sensors `device_class`, `payload_on`, `payload_off`.

A value of null in the state renders as "None", which Home Assistant reads as unknown
(its PAYLOAD_NONE) for sensors and binary sensors alike.
"""

from __future__ import annotations

import json
from typing import Any

from pi_daemon.mqtt.topics import OFFLINE, ONLINE, Topics
from pi_daemon.throttle import STATES

# (component, object_id, entity-specific keys). The value templates name DeviceState's keys.
ENTITIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "sensor",
        "label",
        {"name": "Label", "icon": "mdi:label-outline", "value_template": "{{ value_json.label }}"},
    ),
    (
        "sensor",
        "score",
        {
            "name": "Score",
            "icon": "mdi:percent-outline",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "value_template": "{{ value_json.score }}",
        },
    ),
    (
        "sensor",
        "fps",
        {
            "name": "Frame rate",
            "icon": "mdi:speedometer",
            "unit_of_measurement": "fps",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "entity_category": "diagnostic",
            "value_template": "{{ value_json.fps }}",
        },
    ),
    (
        "sensor",
        "soc_temperature",
        {
            "name": "SoC temperature",
            "device_class": "temperature",
            "unit_of_measurement": "°C",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "entity_category": "diagnostic",
            "value_template": "{{ value_json.cpu_temp_c }}",
        },
    ),
    (
        "sensor",
        "throttle_state",
        {
            "name": "Throttle state",
            "device_class": "enum",
            "options": list(STATES),
            "entity_category": "diagnostic",
            "value_template": "{{ value_json.throttle_state }}",
        },
    ),
    (
        "binary_sensor",
        "undervoltage",
        {
            "name": "Under-voltage",
            "device_class": "problem",
            "entity_category": "diagnostic",
            "payload_on": "ON",
            "payload_off": "OFF",
            "value_template": (
                "{% if value_json.undervoltage is none %}None"
                "{% elif value_json.undervoltage %}ON{% else %}OFF{% endif %}"
            ),
        },
    ),
    (
        "binary_sensor",
        "paused",
        {
            "name": "Paused",
            "icon": "mdi:pause-circle-outline",
            "payload_on": "ON",
            "payload_off": "OFF",
            "value_template": "{% if value_json.paused %}ON{% else %}OFF{% endif %}",
        },
    ),
)


def discovery_messages(topics: Topics, version: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of every retained discovery config for this device."""
    node = topics.node_id
    device = {
        "identifiers": [node],
        "name": topics.device_id,
        "model": "pi-daemon camera classifier",
        "sw_version": version,
    }
    origin = {"name": "pi-daemon", "sw_version": version}
    messages = []
    for component, object_id, keys in ENTITIES:
        config = {
            **keys,
            "unique_id": f"{node}_{object_id}",
            "state_topic": topics.state,
            "availability_topic": topics.availability,
            "payload_available": ONLINE.decode(),
            "payload_not_available": OFFLINE.decode(),
            "qos": 1,
            "device": device,
            "origin": origin,
        }
        payload = json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode()
        messages.append((topics.discovery(component, object_id), payload))
    return messages
