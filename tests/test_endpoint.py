"""The HTTP endpoint: /metrics and /healthz over real sockets, plain and over TLS."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from pi_daemon.endpoint import Endpoint, TlsFiles, format_url
from pi_daemon.errors import ConfigError
from tests.tls import TestCA


def probes(state: dict):
    def metrics() -> tuple[bytes, str]:
        return b"pi_daemon_up 1\n", "text/plain; version=0.0.4"

    def health() -> tuple[int, dict]:
        return state["code"], {"status": "ok" if state["code"] == 200 else "unhealthy"}

    return metrics, health


def get(port: int, path: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def test_metrics_and_health_over_plain_http():
    state = {"code": 200}
    endpoint = Endpoint("127.0.0.1", 0, *probes(state))
    try:
        port = endpoint.address[1]
        assert get(port, "/metrics") == (200, b"pi_daemon_up 1\n")
        status, body = get(port, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        state["code"] = 503
        assert get(port, "/healthz")[0] == 503
        assert get(port, "/nothing")[0] == 404
    finally:
        endpoint.close()
        endpoint.close()


def test_a_silent_client_does_not_block_other_requests():
    endpoint = Endpoint("127.0.0.1", 0, *probes({"code": 200}))
    try:
        port = endpoint.address[1]
        with socket.create_connection(("127.0.0.1", port)):  # connects, never speaks
            started = time.monotonic()
            assert get(port, "/metrics")[0] == 200
            assert time.monotonic() - started < 5
    finally:
        endpoint.close()


def test_a_taken_port_is_a_config_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on http://127.0.0.1:{port}"):
            Endpoint("127.0.0.1", port, *probes({"code": 200}))


def test_ipv6_urls_have_brackets():
    assert format_url("::1", 9110, False) == "http://[::1]:9110"
    assert format_url("10.0.0.2", 9110, True) == "https://10.0.0.2:9110"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


def client_context(ca: TestCA, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def test_tls_requires_a_client_certificate_from_the_ca(ca: TestCA, tmp_path: Path):
    server = ca.issue("pi-a", server=True)
    collector = ca.issue("collector")
    endpoint = Endpoint(
        "127.0.0.1",
        0,
        *probes({"code": 200}),
        TlsFiles(str(server.cert), str(server.key), str(ca.cert)),
    )
    try:
        port = endpoint.address[1]
        assert endpoint.url.startswith("https://")
        assert get(port, "/metrics", client_context(ca, collector))[0] == 200
        # No client certificate: the handshake fails, nothing is served.
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
            get(port, "/metrics", client_context(ca))
        # A certificate from another CA: refused the same way.
        stranger = TestCA.create(tmp_path / "other").issue("intruder")
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
            get(port, "/metrics", client_context(ca, stranger))
        # Plain HTTP on the TLS port gets nothing either, and the server keeps serving.
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            get(port, "/metrics")
        assert get(port, "/healthz", client_context(ca, collector))[0] == 200
    finally:
        endpoint.close()


@pytest.mark.parametrize("broken", ["cert", "key", "ca"])
def test_unusable_tls_files_are_config_errors(ca: TestCA, tmp_path: Path, broken: str):
    server = ca.issue("pi-b", server=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    files = {"cert": str(server.cert), "key": str(server.key), "ca": str(ca.cert)}
    files[broken] = str(garbage) if broken != "key" else str(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match=r"metrics\.(cert_file/key_file|client_ca_file)"):
        Endpoint(
            "127.0.0.1",
            0,
            *probes({"code": 200}),
            TlsFiles(files["cert"], files["key"], files["ca"]),
        )
