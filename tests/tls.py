"""A throwaway certificate authority for TLS tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestCA:
    __test__ = False

    directory: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "pi-daemon test CA") -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "ca.crt", directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(directory, cert, key)

    def issue(self, name: str, *, server: bool = False) -> Issued:
        """A certificate for CN=name (and DNS/IP SANs for a server on loopback)."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        extensions = self.directory / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        extensions.write_text(
            f"extendedKeyUsage={usage}\n"
            + ("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n" if server else "")
        )
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions,
        )  # fmt: skip
        key.chmod(0o600)
        return Issued(cert, key)
