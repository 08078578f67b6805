"""Delivery of every event to an MQTT broker, through an on-disk outbox that loses nothing.

The daemon builds one `Delivery` from the `[mqtt]` section and wires it:

    delivery = Delivery(config.mqtt, device_id, state_dir, on_command=handle)
    delivery.start()                       # threads; never blocks on the network
    delivery.submit(event)                 # sink thread: a JSON-ready dict with its seq
    delivery.set_online()                  # after the first classified frame
    delivery.publish_state(DeviceState(...))   # on label changes and summaries
    delivery.status()                      # -> DeliveryStatus, for /healthz and metrics
    delivery.close(timeout=5.0)            # offline (retained), disconnect, outbox synced

`device_id_for(section)` resolves `device_id = ""` to the lower-cased hostname. The event
dicts come from the daemon's event hub and already carry `type`, `device_id`, `boot_id`,
`seq` (rising by one, never reused), `time`, `monotonic` and `clock_synced`; they are sent
byte for byte as first queued, so a replay after an outage keeps its original timestamps.

Topics (an interface): `<topic_prefix>/<device_id>/events` (every event, QoS from config,
not retained), `.../availability` (`online`/`offline`, retained; `offline` is also the last
will), `.../state` (retained JSON, latest wins), `.../set` (commands, with `commands =
true`), and Home Assistant discovery under `discovery_prefix`.

`on_command(Command)` runs on the MQTT network thread for each accepted command (pause,
resume, reload); it must return quickly (set an Event). Rejected messages are logged, one
journal line each (PI_DAEMON_EVENT=mqtt, RESULT=rejected), and never reach it. Commands
published while the daemon is offline are not queued for it (a clean session): a stale
"pause" is never applied later.

Modules, one concern each: `status` (the shared types), `config`'s `MqttSection`,
`topics`, `outbox` (memory + flusher) over `store` (sqlite3 in WAL mode, crash recovery),
`link` (the network thread around paho-mqtt 2.x), `backoff`, `commands`, `discovery`,
`security` (password file and TLS files). paho-mqtt is imported only when a `Delivery` is
built, so this package imports without the `mqtt` extra.
"""

from typing import TYPE_CHECKING, Any

from pi_daemon.mqtt.backoff import RetryPolicy
from pi_daemon.mqtt.status import (
    Command,
    ConnectionState,
    DeliveryStatus,
    DeviceState,
    DropReason,
)
from pi_daemon.mqtt.topics import Topics, device_id_for

__all__ = [
    "Command",
    "ConnectionState",
    "Delivery",
    "DeliveryStatus",
    "DeviceState",
    "DropReason",
    "RetryPolicy",
    "Topics",
    "device_id_for",
]

if TYPE_CHECKING:
    from pi_daemon.mqtt.delivery import Delivery


def __getattr__(name: str) -> Any:
    # The delivery (sqlite3, the outbox, the network link) is imported only when it is
    # used: the daemon with MQTT off, and the status types, never pay for it.
    if name == "Delivery":
        from pi_daemon.mqtt.delivery import Delivery

        return Delivery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
