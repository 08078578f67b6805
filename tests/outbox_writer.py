"""Test-only: a real process appending to an Outbox with its flusher running, as the sink
thread does while the broker is away. Killed with SIGKILL by the tests.

    python -m tests.outbox_writer PATH --rate N [--interval S] [--count N] [--ack]

Prints one JSON line per event appended, {"seq": n, "t": monotonic, "synced": synced_seq},
on stdout (a pipe: nothing of it touches the disk). With --ack every event is acknowledged
at once, as a healthy broker would, before the flusher sees it. At the end (--count reached)
it closes the outbox and prints {"done": n, "write_bytes": ...} from /proc/self/io.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pi_daemon.bench.timing import write_bytes
from pi_daemon.mqtt.outbox import Outbox


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--ack", action="store_true")
    parser.add_argument("--capacity", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args()
    outbox = Outbox(args.path, args.capacity, args.interval)
    outbox.start()
    before = write_bytes()
    seq = args.first - 1
    next_due = time.monotonic()
    while not args.count or seq - args.first + 1 < args.count:
        seq += 1
        payload = json.dumps({"seq": seq, "time": time.time()}).ljust(args.size).encode()
        outbox.append(seq, payload)
        if args.ack:
            for claimed, body in outbox.claim(64, 1 << 20):
                outbox.ack(claimed, len(body))
        sys.stdout.write(
            json.dumps({"seq": seq, "t": time.monotonic(), "synced": outbox.counts().synced_seq})
            + "\n"
        )
        sys.stdout.flush()
        next_due += 1 / args.rate
        time.sleep(max(0.0, next_due - time.monotonic()))
    outbox.close()
    sys.stdout.write(json.dumps({"done": seq, "write_bytes": write_bytes() - before}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
