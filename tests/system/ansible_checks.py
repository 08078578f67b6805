"""Assertions on playbook runs and on what a provisioned root filesystem holds.

Shared by the chroot tests (test_ansible.py), the mounted-image tests
(test_ansible_image.py) and the live-host tests (test_ansible_live.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tests.system import rootfs as rf

PREFIX = Path("opt/pi-daemon")
LINKS = ("current", "previous", "venv", "models/current", "models/previous")


def assert_ok(run: rf.PlaybookRun, what: str) -> None:
    assert run.returncode == 0, f"{what}: ansible-playbook exited {run.returncode}\n{run.tail()}"


def assert_failed(run: rf.PlaybookRun, host: str, what: str) -> None:
    assert run.returncode != 0, f"{what}: ansible-playbook should have failed\n{run.tail()}"
    counts = run.recap.get(host)
    assert counts is not None, f"{what}: no PLAY RECAP line for {host}\n{run.tail()}"
    assert counts["failed"] == 1, f"{what}: {counts}\n{run.tail()}"


def assert_says(run: rf.PlaybookRun, *texts: str) -> None:
    """Each text is in the run's output (a regular expression when it starts with ^)."""
    for text in texts:
        found = (
            re.search(text[1:], run.output, re.M) if text.startswith("^") else text in run.output
        )
        if not found:
            raise AssertionError(f"the run does not say {text!r}:\n{run.tail()}")


def assert_nothing_changed(run: rf.PlaybookRun, host: str, what: str) -> None:
    assert_ok(run, what)
    counts = run.recap.get(host)
    assert counts is not None, f"{what}: no PLAY RECAP line for {host}\n{run.tail()}"
    changed = "\n".join(
        f"--- {name}\n{body[:3000]}" for name, body in run.changed_results().items()
    )
    assert counts["changed"] == 0, (
        f"{what}: changed={counts['changed']}:\n{changed}\n--- output (tail)\n{run.tail(3000)}"
    )
    assert counts["failed"] == 0 and counts["unreachable"] == 0, counts


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


@dataclass(frozen=True)
class HostState:
    """What a failed run must leave exactly as it was: the links, the config and unit the
    service reads, the releases in place, the swap size and what /etc/pi-daemon holds."""

    links: tuple[tuple[str, str], ...]
    config_sha256: str
    unit_sha256: str
    releases: tuple[str, ...]
    etc_pi_daemon: tuple[str, ...]
    dphys_swapfile: str

    @classmethod
    def of(cls, root: Path) -> HostState:
        prefix = root / PREFIX
        links = tuple(
            (name, os.readlink(prefix / name)) for name in LINKS if (prefix / name).is_symlink()
        )
        releases = prefix / "releases"
        etc = root / "etc" / "pi-daemon"
        dphys = root / "etc" / "dphys-swapfile"
        return cls(
            links=links,
            config_sha256=sha256(etc / "config.toml"),
            unit_sha256=sha256(root / "etc/systemd/system/pi-daemon.service"),
            releases=tuple(sorted(p.name for p in releases.iterdir())) if releases.is_dir() else (),
            etc_pi_daemon=tuple(sorted(p.name for p in etc.iterdir())) if etc.is_dir() else (),
            dphys_swapfile=dphys.read_text(encoding="utf-8") if dphys.is_file() else "",
        )

    def link(self, name: str) -> str:
        return dict(self.links).get(name, "")


def release_id(wheel: Path) -> str:
    """The release directory name the role gives a wheel: <version>-<sha256[:12]>."""
    return f"{wheel.name.split('-')[1]}-{sha256(wheel)[:12]}"
