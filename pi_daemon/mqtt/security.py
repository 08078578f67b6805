"""The local files MQTT needs: the password file and the TLS certificates.

Each problem is the operator's to fix, so each is a ConfigError (exit 78, one line naming the
key and the file): a missing or unreadable file, a password file that others may read, a
certificate or key that does not parse. Files are opened through pi_daemon.fileio (regular
files only, size-limited); the ssl module then loads the certificate chain from the same path.
"""

from __future__ import annotations

import os
import ssl
import stat

from pi_daemon import fileio
from pi_daemon.config import MqttSection
from pi_daemon.errors import ConfigError

PASSWORD_LIMIT = 4 * fileio.KIB
PEM_LIMIT = 1 * fileio.MIB


def read_password(path: str) -> str:
    """The password: the file's only line (a final newline is not part of it)."""
    key = "mqtt.password_file"
    try:
        fd = fileio.open_regular(path)
    except fileio.FileProblem as error:
        raise ConfigError(f"{key}: {path}: cannot read: {error.reason}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    if mode & 0o044:
        raise ConfigError(
            f"{key}: {path} is readable by group or others (mode {mode:04o}); "
            f"make it private: chmod 600 {path}"
        )
    try:
        text = fileio.read_text(path, PASSWORD_LIMIT)
    except fileio.FileProblem as error:
        raise ConfigError(f"{key}: {path}: cannot read: {error.reason}") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(f"{key}: {path} is empty")
    if "\n" in password or "\r" in password:
        raise ConfigError(f"{key}: {path} holds more than one line (only the password)")
    return password


def _read_pem(key: str, path: str) -> str:
    try:
        text = fileio.read_text(path, PEM_LIMIT, encoding="ascii")
    except fileio.FileProblem as error:
        raise ConfigError(f"{key}: {path}: cannot read: {error.reason}") from None
    if "-----BEGIN " not in text:
        raise ConfigError(f"{key}: {path}: not a PEM file (no -----BEGIN line)")
    return text


def _no_password() -> bytes:
    # Called by OpenSSL for an encrypted key. Without it OpenSSL would prompt on the
    # terminal, and a service has none: fail instead.
    raise ConfigError("encrypted")


def tls_context(section: MqttSection) -> ssl.SSLContext:
    """A client context that verifies the broker (its name and chain) and, with cert_file,
    presents our certificate. Without ca_file the system's CAs are trusted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname check and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if section.ca_file:
        text = _read_pem("mqtt.ca_file", section.ca_file)
        try:
            context.load_verify_locations(cadata=text)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(
                f"mqtt.ca_file: {section.ca_file}: not a valid CA certificate: {_why(error)}"
            ) from None
    else:
        context.load_default_certs()
    if section.cert_file:
        text = _read_pem("mqtt.cert_file", section.cert_file)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            probe.load_verify_locations(cadata=text)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(
                f"mqtt.cert_file: {section.cert_file}: not a valid certificate: {_why(error)}"
            ) from None
        if section.key_file:
            _read_pem("mqtt.key_file", section.key_file)
        key = "mqtt.key_file" if section.key_file else "mqtt.cert_file"
        key_path = section.key_file or section.cert_file
        try:
            context.load_cert_chain(section.cert_file, section.key_file or None, _no_password)
        except ConfigError:
            raise ConfigError(
                f"{key}: {key_path}: the private key is encrypted; give an unencrypted key "
                "readable only by the service user"
            ) from None
        except (ssl.SSLError, OSError) as error:
            what = (
                "not a private key matching cert_file"
                if section.key_file
                else "holds no private key for the certificate (set key_file)"
            )
            raise ConfigError(f"{key}: {key_path}: {what}: {_why(error)}") from None
    return context


def _why(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    if reason:
        return str(reason).replace("_", " ").lower()
    return str(error).split(" (_ssl.c")[0]
