"""Test-only clients of the fleet's collector, run inside the fleet's network namespaces.

The fleet test (test_fleet_collector.py) runs these with the venv's Python through
`FleetNet.run`/`popen` (tests/system/fleetnet.py), so they reach the containers over the
private network and resolve the fleet's host names, and never the host's own network:

    python -m tests.system.fleet_clients get URL [--ca F] [--cert F --key F]
    python -m tests.system.fleet_clients upload URL --field NAME=VALUE...
        [--ca F] [--cert F --key F]
    python -m tests.system.fleet_clients mqtt-probe --host H --port P --ca F
        [--cert F --key F] [--username U --password-file F] [--publish TOPIC PAYLOAD]
    python -m tests.system.fleet_clients subscribe --host H --port P --ca F
        [--cert F --key F] --username U --password-file F --client-id ID
        --topic T [--topic T...] --out FILE

`get` and `mqtt-probe` print one JSON object saying what happened (a refusal is an
answer, not an error: they exit 0 unless their own arguments are wrong). `subscribe`
runs until SIGTERM, as a Home Assistant or Node-RED consumer would: a persistent session
(clean_session off, QoS 1), reconnecting within seconds, and it appends one JSON line
per message to FILE with the time it arrived, and one per connect and disconnect.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


# --- HTTP(S) ---------------------------------------------------------------------------


def request(
    url: str,
    ca: str | None,
    cert: str | None,
    key: str | None,
    timeout: float,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    """GET `url` (POST `data`, when given): {"status", "body"}, or {"error"} on no answer."""
    context = tls_context(ca, cert, key) if url.startswith("https:") else None
    message = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(message, timeout=timeout, context=context) as response:
            return {"status": response.status, "body": response.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "body": error.read().decode("utf-8", "replace")}
    except (OSError, ssl.SSLError) as error:  # URLError is an OSError
        reason = getattr(error, "reason", error)
        return {"error": f"{type(reason).__name__}: {reason}"}


# --- MQTT ------------------------------------------------------------------------------


def mqtt_client(args: argparse.Namespace, protocol: Any, **kwargs: Any) -> Any:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, **kwargs)
    client.tls_set_context(tls_context(args.ca, args.cert, args.key))
    if args.username is not None:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        client.username_pw_set(args.username, password)
    return client


def mqtt_probe(args: argparse.Namespace) -> dict:
    """Connect (MQTT 5, so a denied publish comes back with its reason code), optionally
    publish one QoS 1 message, and say what the broker answered."""
    import paho.mqtt.client as mqtt

    outcome: dict[str, Any] = {}
    done = threading.Event()
    client = mqtt_client(args, mqtt.MQTTv5, client_id=f"fleet-test-probe-{time.monotonic_ns()}")

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        outcome["connect"] = "connected" if not reason.is_failure else f"refused: {reason}"
        if reason.is_failure or not args.publish:
            done.set()
        else:
            topic, payload = args.publish
            client.publish(topic, payload.encode(), qos=1)

    def on_publish(_c: Any, _u: Any, _mid: Any, reason: Any, _p: Any) -> None:
        outcome["publish"] = "accepted" if not reason.is_failure else f"denied: {reason}"
        done.set()

    def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        outcome.setdefault("connect", f"disconnected: {reason}")
        done.set()

    client.on_connect, client.on_publish, client.on_disconnect = (
        on_connect,
        on_publish,
        on_disconnect,
    )
    try:
        client.connect(args.host, args.port, keepalive=10)
    except (OSError, ssl.SSLError) as error:
        return {"connect": f"error: {type(error).__name__}: {error}"}
    deadline = time.monotonic() + args.timeout
    while not done.is_set() and time.monotonic() < deadline:
        try:
            rc = client.loop(timeout=0.2)
        except (OSError, ssl.SSLError) as error:
            outcome.setdefault("connect", f"error: {type(error).__name__}: {error}")
            break
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            outcome.setdefault("connect", f"lost: {mqtt.error_string(rc)}")
            break
    outcome.setdefault("connect", "no answer")
    if args.publish and outcome["connect"] == "connected":
        outcome.setdefault("publish", "no answer")
    client.disconnect()
    return outcome


def subscribe(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt

    out = Path(args.out).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115 (lives as long as the process)
    lock = threading.Lock()  # protects `out`: callbacks run on paho's thread, SIGTERM on main

    def write(record: dict) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")

    client = mqtt_client(args, mqtt.MQTTv311, client_id=args.client_id, clean_session=False)
    client.reconnect_delay_set(min_delay=1, max_delay=2)

    def on_connect(c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        write(
            {
                "event": "connect",
                "reason": str(reason),
                "session_present": bool(flags.session_present),
                "recv": time.time(),
            }
        )
        if not reason.is_failure:
            c.subscribe([(topic, 1) for topic in args.topic])

    def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        write({"event": "subscribed", "codes": [str(code) for code in codes], "recv": time.time()})

    def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        write({"event": "disconnect", "reason": str(reason), "recv": time.time()})

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        received = time.time()
        write(
            {
                "recv": received,
                "topic": message.topic,
                "retain": bool(message.retain),
                "payload": message.payload.decode("utf-8", "replace"),
            }
        )

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_disconnect, client.on_message = on_disconnect, on_message

    def stop(_signum: int, _frame: Any) -> None:
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    client.connect_async(args.host, args.port, keepalive=10)
    client.loop_forever(retry_first_connection=True)
    out.close()
    return 0


# --- command line ----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fleet_clients", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    def tls(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--ca")
        sub.add_argument("--cert")
        sub.add_argument("--key")
        sub.add_argument("--timeout", type=float, default=10.0)

    http = commands.add_parser("get")
    http.add_argument("url")
    tls(http)
    # What systemd-journal-upload sends: one entry in the journal export format.
    upload = commands.add_parser("upload")
    upload.add_argument("url")
    upload.add_argument("--field", action="append", default=[], metavar="NAME=VALUE")
    tls(upload)

    for name in ("mqtt-probe", "subscribe"):
        sub = commands.add_parser(name)
        sub.add_argument("--host", required=True)
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--username")
        sub.add_argument("--password-file")
        tls(sub)
        if name == "mqtt-probe":
            sub.add_argument("--publish", nargs=2, metavar=("TOPIC", "PAYLOAD"))
        else:
            sub.add_argument("--client-id", required=True)
            sub.add_argument("--topic", action="append", required=True)
            sub.add_argument("--out", required=True)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "subscribe":
        return subscribe(args)
    if args.command == "get":
        result = request(args.url, args.ca, args.cert, args.key, args.timeout)
    elif args.command == "upload":
        entry = "".join(f"{field}\n" for field in args.field) + "\n"
        headers = {"Content-Type": "application/vnd.fdo.journal"}
        body = entry.encode()
        result = request(args.url, args.ca, args.cert, args.key, args.timeout, body, headers)
    else:
        result = mqtt_probe(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
