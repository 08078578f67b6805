"""A local apt repository with a stand-in rpi-swap, to test the swap role's Pi OS branch.

The real rpi-swap (Raspberry Pi OS Trixie's swap manager) and the packages it depends on
(rpi-loop-utils, rpi-systemd-config) come only from archive.raspberrypi.com, which test
machines cannot reach. What the swap role relies on is the package's apt metadata and its
configuration file, so the stand-in has exactly those, as the real package declares them
(raspberrypi/rpi-swap 1.2.1, `debian/control` and `etc/rpi/swap.conf`):

- `Provides`, `Conflicts` and `Replaces: dphys-swapfile`;
- the conffile `/etc/rpi/swap.conf`, with the defaults commented out, read with drop-ins
  from `/etc/rpi/swap.conf.d/*.conf` (swap.conf(5)).

It has no generator: what rpi-swap does at boot (size and enable the swap file from the
merged configuration) is not tested here, and no test may turn swap on anyway.

The repository is a flat one (`deb [trusted=yes] file:/srv/... ./`) with a Packages
index and a Release file, built with `dpkg-deb` (part of dpkg, on every Debian host).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

STANDIN_VERSION = "1.2.1+pidaemon.standin1"
REPO_DIR = "/srv/pi-daemon-standin-apt"  # inside the root filesystem
SOURCES_FILE = "etc/apt/sources.list.d/pi-daemon-standin.list"

# The vendor configuration, as rpi-swap ships it: every default commented out.
VENDOR_SWAP_CONF = """\
#  /etc/rpi/swap.conf: stand-in for rpi-swap's vendor file (tests/system/standin_apt.py).
#  The defaults are commented out; local settings belong in swap.conf.d/*.conf drop-ins.
#  See swap.conf(5).

[Main]
#Mechanism=auto

[File]
#Path=/var/swap
#RamMultiplier=1
#MaxSizeMiB=2048
#MaxDiskPercent=50
#FixedSizeMiB=

[Zram]
#RamMultiplier=1
#MaxSizeMiB=2048
#FixedSizeMiB=
"""

CONTROL = f"""\
Package: rpi-swap
Version: {STANDIN_VERSION}
Architecture: all
Maintainer: pi-daemon system tests <root@localhost>
Provides: dphys-swapfile
Conflicts: dphys-swapfile
Replaces: dphys-swapfile
Section: embedded
Priority: optional
Description: stand-in for Raspberry Pi OS's rpi-swap (pi-daemon tests only)
 Same package relationships and configuration file as rpi-swap 1.2.1; no generator.
"""


def build_deb(workdir: Path) -> Path:
    """The stand-in rpi-swap .deb, built with dpkg-deb."""
    tree = workdir / "rpi-swap-standin"
    if tree.exists():
        shutil.rmtree(tree)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(CONTROL, encoding="utf-8")
    (tree / "DEBIAN" / "conffiles").write_text("/etc/rpi/swap.conf\n", encoding="utf-8")
    conf = tree / "etc" / "rpi" / "swap.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(VENDOR_SWAP_CONF, encoding="utf-8")
    for path in [tree, *tree.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    deb = workdir / f"rpi-swap_{STANDIN_VERSION}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
        text=True,
    )
    return deb


def _digests(data: bytes) -> dict[str, str]:
    return {"MD5sum": hashlib.md5(data).hexdigest(), "SHA256": hashlib.sha256(data).hexdigest()}


def install_repository(root: Path, workdir: Path) -> Path:
    """Put the repository into `root` and list it in its apt sources; return the .deb.

    The caller runs `apt-get update` in the root filesystem afterwards, as an operator
    who adds an archive would.
    """
    deb = build_deb(workdir)
    repo = root / REPO_DIR.lstrip("/")
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(deb, repo / deb.name)
    data = deb.read_bytes()
    stanza = CONTROL.rstrip("\n") + "\n"
    stanza += f"Filename: ./{deb.name}\nSize: {len(data)}\n"
    stanza += "".join(f"{name}: {value}\n" for name, value in _digests(data).items())
    packages = stanza.encode()
    (repo / "Packages").write_bytes(packages)
    release = (
        "Origin: pi-daemon-tests\nLabel: rpi-swap stand-in\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
    )
    (repo / "Release").write_text(release, encoding="utf-8")
    for path in [repo, *repo.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    sources = root / SOURCES_FILE
    sources.write_text(
        "# The stand-in rpi-swap for the system tests (tests/system/standin_apt.py).\n"
        f"deb [trusted=yes] file:{REPO_DIR} ./\n",
        encoding="utf-8",
    )
    return deb
