"""The systemd unit: `systemd-analyze verify` is silent and the security exposure stays low.

`verify` checks that ExecStart= names an executable file, and the unit's path
(/opt/pi-daemon/venv, where the Ansible role installs it) does not exist on a test machine.
So the test verifies a temporary copy whose ExecStart points at this venv's `pi-daemon`;
every other line is the file as shipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "pi-daemon.service"
INSTALLED_BINARY = "/opt/pi-daemon/venv/bin/pi-daemon"
# Measured 1.5 with systemd 252 (the figure in the unit's header comment). A change that
# gives up hardening must lower the figure again or argue for raising this in review.
MAX_EXPOSURE = 1.6


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not found: apt install systemd (.ci/apt-packages.txt)")
    local = Path(sys.executable).with_name("pi-daemon")
    assert local.exists(), f"{local}: install the package into the test venv"
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    copy = tmp_path / "pi-daemon.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(local)))
    return copy


def test_unit_keeps_the_paths_the_ansible_role_installs() -> None:
    text = UNIT.read_text()
    assert (
        "ExecStart=/opt/pi-daemon/venv/bin/pi-daemon run --config /etc/pi-daemon/config.toml"
        in text
    )
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "SupplementaryGroups=video",
        "User=pi-daemon",
        "DevicePolicy=closed",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not re.search(r"^PrivateDevices=(yes|true)", text, re.M), "breaks libcamera"


def test_systemd_analyze_verify_is_silent(unit_copy: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys or bad values and only warns: stderr must be empty.
    assert result.stderr == "", result.stderr


def test_security_exposure_is_low(unit_copy: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout
    header = UNIT.read_text().splitlines()[:5]
    assert any(f"exposure {exposure}" in line for line in header), (
        f"update the exposure figure in the unit's header comment to {exposure}"
    )
