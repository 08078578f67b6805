"""Shared fixtures: real models, real photos, a way to run the real CLI, and the session rules.

Every daemon a test starts reads its sensors from files the test wrote (`sensor_files`),
never this machine's /sys and /proc: a loaded CI host must not throttle a test's daemon.
With `CI` set, a skipped test fails the session (CI has every extra installed, so a skip
there is a missing install step); elsewhere each skip prints its reason (`-rs`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

if TYPE_CHECKING:
    from tests.mqtt_broker import Broker

REPO = Path(__file__).resolve().parent.parent
TEST_MODELS = REPO / "tests" / "data" / "models"
BUNDLED_MODEL = REPO / "pi_daemon" / "models" / "efficientnet-lite0-int8.tflite"
FLOAT_TWIN = REPO / "deploy" / "models" / "efficientnet-lite0-fp32.tflite"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A few-KB uint8 model with 10 classes (tests/data/models/README.md)."""
    return TEST_MODELS / "tiny_uint8.tflite"


@pytest.fixture(scope="session")
def tiny_labels() -> Path:
    return TEST_MODELS / "tiny_labels.txt"


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos shipped by scikit-image, written as JPEG files."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("coffee", "chelsea", "rocket", "astronaut"):
        image = getattr(data, name)()
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def demo_video(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Path]) -> Path:
    """A real MJPG/AVI video cycling through the photos, 30 frames at 640x480."""
    path = tmp_path_factory.mktemp("video") / "demo.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert writer.isOpened()
    frames = [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in photos.values()]
    for i in range(30):
        writer.write(frames[i % len(frames)])
    writer.release()
    return path


# -- sensors: the hardware edge, as files -----------------------------------------------------

MEMINFO_TEMPLATE = (
    "MemTotal:        3884096 kB\nMemAvailable:    {available_kb} kB\n"
    "SwapTotal:       {swap_total_kb} kB\nSwapFree:        {swap_free_kb} kB\n"
)


def write_sensor_files(
    folder: Path,
    *,
    temp_c: float = 50.0,
    available_kb: int = 2_000_000,
    swap_total_kb: int = 102_396,
    swap_free_kb: int = 102_396,
    undervoltage: bool = False,
    psi_avg10: float = 0.0,
) -> str:
    """Write Pi-like sensor files under `folder/sensors` and return the `[sensors]` TOML.

    Calling it again rewrites the values (atomically, as sysfs never shows half a value),
    so a test can change the readings under a running daemon. Defaults: a cool board with
    plenty of memory and no pressure, so the throttle stays normal.
    """
    root = folder / "sensors"
    hwmon = root / "hwmon" / "hwmon0"
    hwmon.mkdir(parents=True, exist_ok=True)
    files = {
        root / "temp": f"{round(temp_c * 1000)}\n",
        root / "meminfo": MEMINFO_TEMPLATE.format(
            available_kb=available_kb, swap_total_kb=swap_total_kb, swap_free_kb=swap_free_kb
        ),
        root / "vmstat": "pswpin 0\npswpout 0\n",
        root / "pressure": (
            f"some avg10={psi_avg10:.2f} avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        ),
        hwmon / "name": "rpi_volt\n",
        hwmon / "in0_lcrit_alarm": f"{int(undervoltage)}\n",
    }
    for path, text in files.items():
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
    return f"""[sensors]
thermal_path = "{root / "temp"}"
hwmon_root = "{root / "hwmon"}"
vcgencmd_enabled = false
meminfo_path = "{root / "meminfo"}"
vmstat_path = "{root / "vmstat"}"
pressure_path = "{root / "pressure"}"
"""


@pytest.fixture(autouse=True)
def private_state_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test's daemons keep their state (event seq, MQTT outbox, snapshots) in its own
    directory, as systemd's StateDirectory= would give them: never in the host's. Beside
    the test's tmp_path, not in it, so a test that lists tmp_path sees only its own files."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    return state


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A real mosquitto on a free loopback port, with the config tests/mqtt_broker.py
    writes (persistence, a password file, an ACL), for one test."""
    from tests.mqtt_broker import Broker

    server = Broker()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


# -- the real CLI ---------------------------------------------------------------------------


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pi_daemon ARGS` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pi_daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config file; unless it has its own `[sensors]`, they read test files."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        if not re.search(r"^\[sensors\]", text, re.M):
            text = f"{text}\n{write_sensor_files(tmp_path)}"
        path.write_text(text)
        return path

    return write


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    """The process failed with `code`, one stderr line with every fragment, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("pi-daemon:")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def rgb_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- per-test timeout -------------------------------------------------------------------------

# Far above the slowest unit or integration test (about 15 s here), far below CI's patience.
UNIT_TEST_TIMEOUT_S = 120


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("system") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TEST_TIMEOUT_S))


# -- no silent skip ------------------------------------------------------------------------


def _real_skips(config: pytest.Config) -> list[pytest.TestReport]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reports = reporter.stats.get("skipped", []) if reporter is not None else []
    return [r for r in reports if not hasattr(r, "wasxfail")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") and _real_skips(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: object, exitstatus: int, config: pytest.Config
) -> None:
    skips = _real_skips(config)
    if os.environ.get("CI") and skips:
        write = terminalreporter.write_line  # type: ignore[attr-defined]
        write(
            f"CI is set: {len(skips)} skipped test(s) fail this run (a missing install step?):",
            red=True,
        )
        for report in skips:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            write(f"  {report.nodeid}: {reason}", red=True)
