"""Event identity: device and boot ids, sequence numbers that never repeat, clock state."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pi_daemon.errors import ConfigError
from pi_daemon.fileio import FileProblem
from pi_daemon.identity import (
    ClockSync,
    SequenceNumbers,
    device_id_for,
    kernel_clock_synced,
    read_boot_id,
)
from pi_daemon.statedir import resolve_state_dir


@pytest.mark.parametrize(
    ("configured", "hostname", "instance", "expected"),
    [
        ("", "Pi-Kitchen", "", "pi-kitchen"),  # the host name, lower-cased
        ("", "pi4.example.org", "", "pi4.example.org"),
        ("", "pi4", "Cam1", "pi4-cam1"),  # pi-daemon@Cam1.service
        ("Garage", "ignored", "", "Garage"),  # as configured
        ("garage", "ignored", "left", "garage-left"),
    ],
)
def test_device_id(configured, hostname, instance, expected):
    assert device_id_for(configured, hostname, instance) == expected


@pytest.mark.parametrize(("configured", "hostname"), [("", "a/b"), ("x#", "pi"), ("", "")])
def test_a_device_id_that_is_no_topic_level_is_a_config_error(configured, hostname):
    with pytest.raises(ConfigError, match=r"^mqtt\.device_id"):
        device_id_for(configured, hostname, "")


def test_boot_id_is_the_kernels(tmp_path):
    assert read_boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace(
        "-", ""
    )
    assert read_boot_id(tmp_path / "missing") == "unknown"


def test_sequence_rises_by_one_and_a_clean_restart_leaves_no_gap(tmp_path):
    path = tmp_path / "seq"
    first = SequenceNumbers(path, block=10)
    assert [first.next() for _ in range(25)] == list(range(1, 26))
    first.close()
    first.close()  # twice is fine
    second = SequenceNumbers(path, block=10)
    assert second.next() == 26


def test_a_crash_skips_at_most_a_block_and_never_repeats(tmp_path):
    path = tmp_path / "seq"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from pi_daemon.identity import SequenceNumbers\n"
        "s = SequenceNumbers(Path(sys.argv[1]), block=100)\n"
        "print(max(s.next() for _ in range(250)), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    last = int(done.stdout)
    assert last == 250
    after = SequenceNumbers(path, block=100).next()
    assert last < after <= last + 100


def test_numbers_are_unique_across_threads(tmp_path):
    numbers = SequenceNumbers(tmp_path / "seq", block=7)
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [numbers.next() for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 2001))


def test_a_damaged_sequence_file_is_refused_not_reset(tmp_path):
    path = tmp_path / "seq"
    path.write_text("garbage\n")
    with pytest.raises(FileProblem, match="not a sequence number"):
        SequenceNumbers(path)


def test_clock_sync_follows_the_flag_file(tmp_path, monkeypatch):
    flag = tmp_path / "synchronized"
    clock = ClockSync(str(flag))
    assert clock.synced() is False
    flag.touch()
    monkeypatch.setattr(clock, "_checked_at", -1e9)  # skip the once-a-second cache
    assert clock.synced() is True
    flag.unlink()
    assert clock.synced() is True  # synchronised once means synchronised until reboot


def test_kernel_clock_state_is_readable():
    assert kernel_clock_synced() in (True, False)


def test_state_dir_prefers_config_then_systemd(tmp_path):
    configured = tmp_path / "configured"
    systemd = tmp_path / "systemd"
    env = {"STATE_DIRECTORY": f"{systemd}:{tmp_path / 'other'}", "HOME": str(tmp_path)}
    assert resolve_state_dir(str(configured), env) == configured
    assert resolve_state_dir("", env) == systemd
    assert configured.is_dir() and systemd.is_dir()


def test_an_unusable_chosen_state_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^output.state_dir: .*cannot use as state directory"):
        resolve_state_dir(str(blocker / "sub"), {})
    with pytest.raises(ConfigError, match=r"^\$STATE_DIRECTORY: "):
        resolve_state_dir("", {"STATE_DIRECTORY": str(blocker)})
