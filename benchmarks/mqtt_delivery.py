#!/usr/bin/env python3
"""MQTT delivery figures, in one run, against a real local mosquitto (loopback only).

    python -m benchmarks.mqtt_delivery [--events 2000] [--rate 200] [--size 400] [--json]

Builds the service's own `Delivery` and submits events shaped like the event hub's, at
--rate per second, in three phases: a live broker, a dead one (its port closed), and a
frozen one (SIGSTOP: connected, then silent). It reports:

* submit() cost per event (the sink thread's side), per phase: p50, p99, max;
* event-to-subscriber latency on loopback with the live broker, p50 and p95 (receive time
  minus the event's own `time`);
* disk bytes written per event from /proc/self/io write_bytes (what this process sent to
  the block layer: the outbox's log, checkpoints, the final fold at close), per phase, each
  phase with its own outbox from open to close;
* that every event was delivered after the outages (the dead phase's by a new Delivery on
  its outbox, as after a daemon restart).

The broker comes from tests/mqtt_broker.py (mosquitto with persistence, passwords, an ACL);
needs the `mqtt` extra and Debian's mosquitto.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pi_daemon.config import MqttSection
from pi_daemon.mqtt import Delivery, RetryPolicy
from tests.mqtt_broker import HOST, USERS, Broker, Subscriber


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[int(0.95 * (len(ordered) - 1))],
        "p99": ordered[int(0.99 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


def make_event(seq: int, size: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "result",
        "device_id": "bench",
        "boot_id": "0" * 32,
        "seq": seq,
        "time": time.time(),
        "monotonic": time.monotonic(),
        "clock_synced": True,
        "top": [{"label": "tabby", "index": 281, "score": 0.5}],
    }
    event["pad"] = "x" * max(0, size - len(json.dumps(event)))
    return event


def submit(delivery: Delivery, first: int, count: int, size: int, rate: float) -> list[float]:
    """Per-call seconds of `count` submit() calls at `rate` per second."""
    costs = []
    next_due = time.monotonic()
    for seq in range(first, first + count):
        event = make_event(seq, size)
        started = time.perf_counter()
        delivery.submit(event)
        costs.append(time.perf_counter() - started)
        next_due += 1 / rate
        time.sleep(max(0.0, next_due - time.monotonic()))
    return costs


def wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--events", type=int, default=2000, help="events per phase")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--size", type=int, default=400, help="bytes per event (JSON)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    count, size, rate = args.events, args.size, args.rate
    broker = Broker()
    folder = Path(tempfile.mkdtemp(prefix="pi-daemon-bench-mqtt-"))
    try:
        return _run(broker, folder, count, size, rate, args.json)
    finally:
        broker.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _run(broker: Broker, folder: Path, count: int, size: int, rate: float, as_json: bool) -> int:
    broker.start()
    password = folder / "password"
    password.write_text(USERS["pi"] + "\n")
    password.chmod(0o600)
    section = MqttSection(
        enabled=True,
        host=HOST,
        port=broker.port,
        username="pi",
        password_file=str(password),
        keepalive_s=5,
        device_id="bench",
    )
    retry = RetryPolicy(initial_s=0.2, max_s=1.0, stable_s=1.0)
    subscriber = Subscriber(broker, ["pi-daemon/bench/events"], client_id="bench-sub")

    def delivered() -> set[int]:
        return {event["seq"] for event in subscriber.events()}

    def phase(name: str, connected: bool) -> tuple[Delivery, int]:
        """A new Delivery on its own outbox, and write_bytes when it starts."""
        delivery = Delivery(section, "bench", folder / name, retry=retry)
        before = write_bytes()
        delivery.start()
        if connected:
            wait(lambda: delivery.status().connected, 10)
        return delivery, before

    report: dict[str, Any] = {"events_per_phase": count, "rate": rate, "size": size}
    try:
        # A live broker: events are acknowledged within ms, before their flush.
        delivery, before = phase("live", connected=True)
        costs = submit(delivery, 1, count, size, rate)
        wait(lambda: delivery.status().outbox_depth == 0, 30)
        delivery.close()
        latencies = [m.received - m.json()["time"] for m in subscriber.snapshot("/events")]
        report["live"] = {
            "submit_us": {k: v * 1e6 for k, v in percentiles(costs).items()},
            "latency_ms": {k: v * 1e3 for k, v in percentiles(latencies).items()},
            "disk_bytes_per_event": (write_bytes() - before) / count,
        }
        # A dead broker: everything goes to the file (log, then folded into the database).
        broker.stop()
        delivery, before = phase("dead", connected=False)
        costs = submit(delivery, count + 1, count, size, rate)
        delivery.close()
        report["dead"] = {
            "submit_us": {k: v * 1e6 for k, v in percentiles(costs).items()},
            "disk_bytes_per_event": (write_bytes() - before) / count,
        }
        # Back: a new process's Delivery replays what the dead phase left.
        broker.start()
        replayed = Delivery(section, "bench", folder / "dead", retry=retry)
        replayed.start()
        wait(lambda: set(range(1, 2 * count + 1)) <= delivered(), 60)
        replayed.close()
        # A frozen broker: connected, then silent (no PUBACK, no PINGRESP).
        delivery, before = phase("frozen", connected=True)
        broker.freeze()
        try:
            costs = submit(delivery, 2 * count + 1, count, size, rate)
        finally:
            broker.thaw()
        wait(lambda: set(range(1, 3 * count + 1)) <= delivered(), 60)
        delivery.close()
        report["frozen"] = {
            "submit_us": {k: v * 1e6 for k, v in percentiles(costs).items()},
            "disk_bytes_per_event": (write_bytes() - before) / count,
        }
        got = delivered()
        report["replay"] = {
            "submitted": 3 * count,
            "delivered": len(got & set(range(1, 3 * count + 1))),
            "duplicates": len(subscriber.events()) - len(got),
        }
    finally:
        subscriber.close()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{count} events per phase at {rate:.0f}/s, {size} bytes each")
        for name in ("live", "dead", "frozen"):
            phase_report = report[name]
            cost = phase_report["submit_us"]
            print(
                f"  {name:6} broker: submit() p50 {cost['p50']:.0f} us, p99 {cost['p99']:.0f} "
                f"us, max {cost['max']:.0f} us; disk {phase_report['disk_bytes_per_event']:.0f} "
                "bytes/event"
            )
        latency = report["live"]["latency_ms"]
        print(f"  event to subscriber: p50 {latency['p50']:.2f} ms, p95 {latency['p95']:.2f} ms")
        replay = report["replay"]
        print(
            f"  after the outages: {replay['delivered']} of {replay['submitted']} delivered, "
            f"{replay['duplicates']} duplicates"
        )
    return 0 if report["replay"]["delivered"] == report["replay"]["submitted"] else 1


if __name__ == "__main__":
    sys.exit(main())
