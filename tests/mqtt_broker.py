"""Test-only: a real mosquitto broker and a real paho subscriber, on loopback.

`Broker` writes its own config (persistence on, a password file, an ACL), picks a free
127.0.0.1 port, and can be stopped, restarted on the same port, frozen (SIGSTOP) and thawed.
Started as root, mosquitto drops to the `mosquitto` user: its directory is made traversable
and its persistence directory writable by that user, or it would lose the sessions on restart.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"
# The daemon's user and the subscriber's (Home Assistant's) user.
USERS = {"pi": "pi-secret", "ha": "ha-secret"}
ACL = """\
user pi
topic readwrite pi-daemon/#
topic readwrite homeassistant/#
user ha
topic read #
topic write pi-daemon/+/set
topic write homeassistant/status
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def sign_certificate(
    folder: Path, name: str, common_name: str, ca: Path, ca_key: Path, extension: str
) -> tuple[Path, Path]:
    """A new key and a certificate for `common_name` signed by an existing CA (the
    `extension` line, e.g. a subjectAltName, added): (certificate, key) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={common_name}")  # fmt: skip
    extfile = folder / f"{name}.ext"
    extfile.write_text(extension + "\n")
    sign = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2"]
    openssl("x509", "-req", "-in", str(csr), *sign, "-out", str(cert), "-extfile", str(extfile))
    return cert, key


def make_certificates(folder: Path, server_name: str = HOST) -> TlsFiles:
    """A CA, a server certificate for `server_name` (an IP SAN) and a client certificate,
    made with the openssl command line."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(ca), "-subj", "/CN=test CA", "-days", "2")  # fmt: skip
    server = sign_certificate(
        folder, "server", server_name, ca, ca_key, f"subjectAltName=IP:{server_name}"
    )
    client = sign_certificate(folder, "client", "pi", ca, ca_key, "extendedKeyUsage=clientAuth")
    return TlsFiles(ca, *server, *client)


class Broker:
    """One mosquitto process (restartable on the same port)."""

    def __init__(self, tls: TlsFiles | None = None, keepalive_max: int = 65535) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pi-daemon-mosquitto-"))
        self.root.chmod(0o755)  # the mosquitto user must traverse it
        user = pwd.getpwnam("mosquitto")
        self.data = self.root / "data"
        self.data.mkdir()
        os.chown(self.data, user.pw_uid, user.pw_gid)
        self.passwd = self.root / "passwd"
        for index, (name, password) in enumerate(USERS.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [MOSQUITTO_PASSWD, *create, "-b", str(self.passwd), name, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        os.chown(self.passwd, user.pw_uid, user.pw_gid)
        self.passwd.chmod(0o600)
        acl = self.root / "acl"
        acl.write_text(ACL)
        acl.chmod(0o644)
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous false",
            f"password_file {self.passwd}",
            f"acl_file {acl}",
            "persistence true",
            f"persistence_location {self.data}/",
            # Offline subscribers with a persistent session get everything queued.
            "max_queued_messages 0",
            f"max_keepalive {keepalive_max}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if tls is not None:
            # Copied where the mosquitto user can read them (pytest's tmp_path is private).
            copies = []
            for path in (tls.ca, tls.server_cert, tls.server_key):
                copy = self.root / f"tls-{path.name}"
                shutil.copyfile(path, copy)
                os.chown(copy, user.pw_uid, user.pw_gid)
                copy.chmod(0o600)
                copies.append(copy)
            lines += [
                f"cafile {copies[0]}",
                f"certfile {copies[1]}",
                f"keyfile {copies[2]}",
                "require_certificate true",
            ]
        self.config = self.root / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = self.root / "mosquitto.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in cleanup()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        mark = self.log_text().count(" running")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=self._log, stderr=self._log
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while self.log_text().count(" running") <= mark:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"mosquitto exited {code}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistent database and exits."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def connection_attempts(self) -> int:
        return self.log_text().count("New connection from")

    def cleanup(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    received: float  # time.time() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A real paho client subscribed at QoS 1. With clean_session=False the broker keeps
    its session (and queues for it) across a broker restart."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        client_id: str = "test-subscriber",
        clean_session: bool = False,
        user: str = "ha",
        tls: TlsFiles | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.topics = topics
        self.messages: list[Message] = []
        self._lock = threading.Lock()  # guards messages
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(user, USERS[user])
        self.client.reconnect_delay_set(0.1, 0.5)
        if tls is not None:
            self.client.tls_set(str(tls.ca), str(tls.client_cert), str(tls.client_key))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(HOST, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "subscriber could not connect and subscribe"

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, _client: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        # Only now does the broker hold the subscription (and, with clean_session=False,
        # keep it and queue for it across its own restart).
        self.connected.set()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append(
                Message(message.topic, bytes(message.payload), bool(message.retain), time.time())
            )

    def snapshot(self, topic_suffix: str = "") -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    def events(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.snapshot("/events")]

    def wait_for(
        self, predicate: Callable[[Subscriber], bool], timeout: float, poll: float = 0.05
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(poll)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker: Broker, topic: str, payload: bytes, retain: bool = False) -> None:
    """One message from a real mosquitto_pub process (user ha)."""
    args = ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-u", "ha", "-P", USERS["ha"]]
    args += ["-q", "1", "-t", topic, "-m", payload.decode("utf-8", "surrogateescape")]
    if retain:
        args.append("-r")
    subprocess.run(args, check=True, capture_output=True, timeout=30)
