"""Test-only: a real process that publishes through pi_daemon.mqtt, as the daemon will.

    python -m tests.mqtt_publisher CONFIG STATE_DIR [--rate N] [--count N] [--size N]

It builds the Delivery from CONFIG's [mqtt] section, submits events shaped like the event
hub's (type, device_id, boot_id, seq, time, monotonic, clock_synced) at --rate per second,
with seq reserved in blocks of 100 in STATE_DIR/test-seq like the event hub does (a restarted
process starts after the last block, never reusing a number), and
prints one JSON object per line on stdout: {"submitted": seq, "status": {...}} every 0.2 s,
{"command": "pause"} per command, and {"done": ..., "submit_s": [...]} after SIGTERM (a clean
close). A ConfigError ends it like the daemon: one line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pi_daemon.bench.timing import write_bytes
from pi_daemon.config import load_config
from pi_daemon.errors import PiDaemonError
from pi_daemon.mqtt import Command, Delivery, DeviceState, RetryPolicy, device_id_for

SEQ_BLOCK = 100
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _print(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _status(delivery: Delivery) -> dict[str, Any]:
    status = delivery.status()
    return {
        "state": status.state.value,
        "reason": status.reason,
        "depth": status.outbox_depth,
        "bytes": status.outbox_bytes,
        "dropped": dict(status.dropped),
        "published": status.published,
        "acknowledged": status.acknowledged,
        "synced_seq": status.synced_seq,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--count", type=int, default=0, help="stop submitting after N (0: never)")
    parser.add_argument("--size", type=int, default=0, help="pad each event to about N bytes")
    parser.add_argument("--online", action="store_true", help="set_online() at once")
    parser.add_argument("--retry-initial", type=float, default=0.2)
    parser.add_argument("--retry-max", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seq_file = args.state_dir / "test-seq"
    seq = reserved = int(seq_file.read_text()) if seq_file.exists() else 0

    def on_command(command: Command) -> None:
        _print({"command": command.value})

    try:
        section = load_config(args.config).mqtt
        retry = RetryPolicy(initial_s=args.retry_initial, max_s=args.retry_max, stable_s=1.0)
        delivery = Delivery(
            section, device_id_for(section), args.state_dir, on_command=on_command, retry=retry
        )
    except PiDaemonError as error:
        sys.stderr.write(f"pi-daemon: {error}\n")
        return error.exit_code
    delivery.start()
    if args.online:
        delivery.set_online()
        delivery.publish_state(DeviceState(label="tabby", score=0.5, fps=args.rate))
    device_id = device_id_for(section)
    durations: list[float] = []
    write_bytes_start = write_bytes()
    next_report = 0.0
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    next_due = time.monotonic()
    submitted = 0
    while not stop.is_set():
        now = time.monotonic()
        if not args.count or submitted < args.count:
            seq += 1
            if seq > reserved:
                reserved = seq + SEQ_BLOCK - 1
                # No fsync: a kill -9 keeps what is in the page cache.
                seq_file.write_text(str(reserved))
            event = {
                "type": "result",
                "device_id": device_id,
                "boot_id": BOOT_ID,
                "seq": seq,
                "time": time.time(),
                "monotonic": now,
                "clock_synced": False,
                "top": [{"label": "tabby", "index": 281, "score": 0.5}],
            }
            if args.size:
                event["pad"] = "x" * max(0, args.size - len(json.dumps(event)) - 10)
            started = time.perf_counter()
            delivery.submit(event)
            durations.append(time.perf_counter() - started)
            submitted += 1
        if now >= next_report:
            _print({"submitted": seq, "status": _status(delivery)})
            next_report = now + 0.2
        next_due += interval
        stop.wait(max(0.0, next_due - time.monotonic()))
    delivery.close(timeout=5.0)
    _print(
        {
            "done": seq,
            "submitted_here": submitted,
            "status": _status(delivery),
            "submit_s": durations,
            "write_bytes": write_bytes() - write_bytes_start,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
