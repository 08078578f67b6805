"""Topic names, decided once from the config: an interface (issue 12), so kept in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pi_daemon import identity
from pi_daemon.config import MqttSection

ONLINE = b"online"
OFFLINE = b"offline"

# Home Assistant accepts only these characters in a discovery topic's node and object ids.
_NOT_HA_ID = re.compile(r"[^a-zA-Z0-9_-]")


def device_id_for(section: MqttSection, hostname: str | None = None) -> str:
    """The device id for `section` (pi_daemon/identity.py decides it, for every sink)."""
    return identity.device_id_for(section.device_id, hostname)


def ha_id(text: str) -> str:
    """`text` as a Home Assistant discovery id ([a-zA-Z0-9_-])."""
    return _NOT_HA_ID.sub("_", text)


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str
    discovery_prefix: str

    @classmethod
    def from_config(cls, section: MqttSection, device_id: str) -> Topics:
        return cls(section.topic_prefix, device_id, section.discovery_prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def commands(self) -> str:
        return f"{self.base}/set"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces itself ("online" when it starts: its birth)."""
        return f"{self.discovery_prefix}/status"

    @property
    def node_id(self) -> str:
        return ha_id(f"{self.prefix}_{self.device_id}")

    def discovery(self, component: str, object_id: str) -> str:
        """`<discovery_prefix>/<component>/<node_id>/<object_id>/config`."""
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    @property
    def client_id(self) -> str:
        return f"{self.prefix}-{self.device_id}"
