"""The daemon's one HTTP listener: `/metrics` for Prometheus and `/healthz` for checks.

Both come from callables the wiring hands in, so this module knows HTTP and TLS, not the
daemon. It is the standard library's threading HTTP server: each request runs on its own
short-lived thread with a socket timeout, so a slow or stuck client can hold one thread
for at most `REQUEST_TIMEOUT_S`, never the daemon.

TLS, for a fleet whose collector scrapes every Pi: with `cert_file` and `key_file` it
serves HTTPS, and with `client_ca_file` it also requires a client certificate signed by
that CA (the collector's). The TLS handshake happens on the request's thread, not in
`accept()`, so a client that connects and never speaks cannot stall other scrapes.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pi_daemon.errors import ConfigError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0

# (status code, JSON-ready body) for /healthz; (body, content type) for /metrics.
HealthProbe = Callable[[], tuple[int, dict[str, Any]]]
MetricsProbe = Callable[[], tuple[bytes, str]]


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str
    client_ca_file: str = ""


def server_context(files: TlsFiles, where: str = "metrics") -> ssl.SSLContext:
    """A server TLS context; a missing or malformed file is a ConfigError naming its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"{where}.cert_file/key_file: {files.cert_file}, {files.key_file}: "
            f"cannot load the certificate and key: {_reason(error)}"
        ) from None
    if files.client_ca_file:
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"{where}.client_ca_file: {files.client_ca_file}: cannot load: {_reason(error)}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, content_type = self.server.metrics()
                self._send(200, body, content_type)
            elif path in ("/healthz", "/health"):
                status, data = self.server.health()
                self._send(status, json.dumps(data).encode() + b"\n", "application/json")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")
        except Exception:
            log.exception("endpoint: %s failed", path)
            self._send(500, b"internal error\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not news for the journal


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        metrics: MetricsProbe,
        health: HealthProbe,
        context: ssl.SSLContext | None,
    ) -> None:
        self.address_family = family
        self.metrics, self.health, self.context = metrics, health, context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(REQUEST_TIMEOUT_S)
        if self.context is not None:
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as error:
                # No certificate, the wrong CA, plain HTTP on a TLS port: refused.
                log.debug("endpoint: TLS handshake with %s failed: %s", client_address, error)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("endpoint: request from %s failed", client_address, exc_info=True)


def host_port(host: str, port: int) -> str:
    """`host:port` as in a URL: an IPv6 address goes in brackets ([::1]:9110)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_url(host: str, port: int, tls: bool) -> str:
    """http(s)://host:port with an IPv6 host in brackets."""
    return f"{'https' if tls else 'http'}://{host_port(host, port)}"


class Endpoint:
    """Serves /metrics and /healthz on `address:port` until `close()`."""

    def __init__(
        self,
        address: str,
        port: int,
        metrics: MetricsProbe,
        health: HealthProbe,
        tls: TlsFiles | None = None,
    ) -> None:
        context = server_context(tls) if tls is not None else None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._server: _Server | None = None
        try:
            self._server = _Server((address, port), family, metrics, health, context)
        except OSError as error:
            raise ConfigError(
                f"metrics: cannot listen on {format_url(address, port, tls is not None)}: "
                f"{error.strerror or error} (change [metrics] port or address)"
            ) from None
        server = self._server
        host, bound = server.server_address[:2]
        self.address = (str(host), int(bound))
        self.url = format_url(str(host), int(bound), tls is not None)
        self._thread = threading.Thread(target=server.serve_forever, name="endpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
