"""Sensor adapters against real files, a real hwmon-like tree and a real fake vcgencmd."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from pi_daemon.config import SensorsSection, parse_config
from pi_daemon.readings import SUMMARY_FIELDS, Readings
from pi_daemon.sensors import (
    Sensors,
    SensorUnavailable,
    find_hwmon,
    parse_meminfo,
    parse_pressure_some_avg10,
    parse_throttled,
)

MEMINFO = """\
MemTotal:        3884096 kB
MemFree:          123456 kB
MemAvailable:     204800 kB
Buffers:           10000 kB
SwapCached:          512 kB
SwapTotal:        102396 kB
SwapFree:          51198 kB
"""
PRESSURE = """\
some avg10=12.34 avg60=3.00 avg300=1.00 total=123456
full avg10=1.00 avg60=0.50 avg300=0.10 total=2345
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Every sensor path in a temp dir: nothing exists until a test writes it."""
    return {
        "thermal": tmp_path / "temp",
        "hwmon": tmp_path / "hwmon",
        "meminfo": tmp_path / "meminfo",
        "vmstat": tmp_path / "vmstat",
        "pressure": tmp_path / "pressure",
    }


def sensors_for(files: dict[str, Path], **overrides: object) -> Sensors:
    settings: dict[str, object] = {
        "thermal_path": str(files["thermal"]),
        "hwmon_root": str(files["hwmon"]),
        "meminfo_path": str(files["meminfo"]),
        "vmstat_path": str(files["vmstat"]),
        "pressure_path": str(files["pressure"]),
        "vcgencmd_enabled": False,
    }
    return Sensors(parse_config({"sensors": {**settings, **overrides}}).sensors)


def unavailable_records(caplog: pytest.LogCaptureFixture, sensor: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if getattr(r, "PI_DAEMON_EVENT", None) == "sensor_unavailable"
        and getattr(r, "SENSOR", None) == sensor
    ]


# -- SoC temperature -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("51234\n", 51.234), ("80000", 80.0), ("-5000", -5.0)]
)
def test_temperature_in_millidegrees(files: dict[str, Path], text: str, expected: float) -> None:
    files["thermal"].write_text(text)
    assert sensors_for(files).read(0.0).cpu_temp_c == pytest.approx(expected)


@pytest.mark.parametrize("garbage", ["", "abc\n", "51.2", "999999", "-273000"])
def test_garbage_temperature_is_unavailable(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture, garbage: str
) -> None:
    files["thermal"].write_text(garbage)
    with caplog.at_level(logging.INFO, logger="pi_daemon"):
        assert sensors_for(files).read(0.0).cpu_temp_c is None
    [record] = unavailable_records(caplog, "cpu_temp")
    assert record.levelno == logging.WARNING
    assert str(files["thermal"]) in record.getMessage()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: os.mkfifo(p) or p, "not a regular file (a FIFO)"),
        (lambda p: Path("/dev/zero"), "not a regular file (a character device)"),
        (lambda p: p.mkdir() or p, "not a regular file (a directory)"),
        (lambda p: (p.write_text("5" * 100_000), p)[1], "larger than 65536 bytes"),
    ],
    ids=["fifo", "dev-zero", "directory", "huge"],
)
def test_special_or_huge_sensor_files_are_unavailable_at_once(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture, make, fragment: str
) -> None:
    """A FIFO would block open() forever, /dev/zero would be read until memory runs out."""
    path = make(files["thermal"])
    sensors = sensors_for(files, thermal_path=str(path), meminfo_path=str(path))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pi_daemon"):
        readings = sensors.read(0.0)
    assert time.monotonic() - started < 2
    assert readings.cpu_temp_c is None and readings.mem_available_bytes is None
    [record] = unavailable_records(caplog, "cpu_temp")
    assert fragment in record.getMessage(), record.getMessage()


def test_missing_sensor_is_logged_once_then_again_when_it_returns(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    sensors = sensors_for(files)
    with caplog.at_level(logging.INFO, logger="pi_daemon"):
        for now in range(5):
            assert sensors.read(float(now)).cpu_temp_c is None
        assert len(unavailable_records(caplog, "cpu_temp")) == 1
        files["thermal"].write_text("60000\n")
        assert sensors.read(5.0).cpu_temp_c == 60.0
        assert sensors.read(6.0).cpu_temp_c == 60.0
        back = [r for r in caplog.records if "cpu_temp is available again" in r.getMessage()]
        assert len(back) == 1 and back[0].levelno == logging.INFO
        files["thermal"].write_text("junk")
        sensors.read(7.0)
        sensors.read(8.0)
    assert len(unavailable_records(caplog, "cpu_temp")) == 2


def test_absent_pi_only_sensors_are_info_not_warning(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pi_daemon"):
        sensors_for(files).read(0.0)
    for name in ("undervoltage", "memory_pressure"):
        [record] = unavailable_records(caplog, name)
        assert record.levelno == logging.INFO


# -- under-voltage through hwmon -------------------------------------------------------------


def make_hwmon(root: Path, entries: dict[str, dict[str, str]]) -> None:
    for entry, contents in entries.items():
        (root / entry).mkdir(parents=True)
        for name, text in contents.items():
            (root / entry / name).write_text(text)


@pytest.mark.parametrize(("alarm", "expected"), [("1\n", True), ("0\n", False), ("x", None)])
def test_undervoltage_from_the_hwmon_found_by_name(
    files: dict[str, Path], alarm: str, expected: bool | None
) -> None:
    make_hwmon(
        files["hwmon"],
        {
            "hwmon0": {"name": "cpu_thermal\n", "in0_lcrit_alarm": "1\n"},  # not ours
            "hwmon1": {"name": "rpi_volt\n", "in0_lcrit_alarm": alarm},
            "hwmon2": {},  # no name file at all
        },
    )
    assert find_hwmon(files["hwmon"], "rpi_volt") == files["hwmon"] / "hwmon1"
    assert sensors_for(files).read(0.0).undervoltage is expected


def test_hwmon_appearing_later_is_found(files: dict[str, Path]) -> None:
    sensors = sensors_for(files)
    assert sensors.read(0.0).undervoltage is None
    make_hwmon(files["hwmon"], {"hwmon4": {"name": "rpi_volt\n", "in0_lcrit_alarm": "1\n"}})
    assert sensors.read(1.0).undervoltage is True


# -- vcgencmd --------------------------------------------------------------------------------


@pytest.fixture
def fake_vcgencmd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real executable named vcgencmd first on PATH; it logs each call to calls.log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "vcgencmd"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{tmp_path / "calls.log"}"\n'
        'if [ "$1" = get_throttled ]; then echo "throttled=0x50005"; exit 0; fi\n'
        'echo "bad command" >&2; exit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


def calls(script: Path) -> list[str]:
    log = script.parent.parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_vcgencmd_flags_from_a_real_process(files: dict[str, Path], fake_vcgencmd: Path) -> None:
    sensors = sensors_for(files, vcgencmd_enabled=True)
    assert sensors.read(0.0).throttled_flags == 0x50005
    assert calls(fake_vcgencmd) == ["get_throttled"]


def test_vcgencmd_is_rate_limited(files: dict[str, Path], fake_vcgencmd: Path) -> None:
    sensors = sensors_for(files, vcgencmd_enabled=True, vcgencmd_interval_s=10.0)
    flags = [sensors.read(t).throttled_flags for t in (0.0, 1.0, 9.9, 10.0, 15.0, 20.0)]
    assert flags == [0x50005] * 6  # the cached value in between
    assert len(calls(fake_vcgencmd)) == 3  # at 0, 10 and 20 s


def test_vcgencmd_by_absolute_path(files: dict[str, Path], fake_vcgencmd: Path) -> None:
    sensors = sensors_for(files, vcgencmd_enabled=True, vcgencmd_path=str(fake_vcgencmd))
    assert sensors.read(0.0).throttled_flags == 0x50005


def test_missing_vcgencmd_is_unavailable_once(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    sensors = sensors_for(
        files,
        vcgencmd_enabled=True,
        vcgencmd_path=str(tmp_path / "nowhere" / "vcgencmd"),
        vcgencmd_interval_s=1.0,
    )
    with caplog.at_level(logging.INFO, logger="pi_daemon"):
        assert [sensors.read(float(t)).throttled_flags for t in range(4)] == [None] * 4
    [record] = unavailable_records(caplog, "throttled_flags")
    assert record.levelno == logging.INFO


@pytest.mark.parametrize(
    "body",
    ['echo "throttled=zzz"', 'echo "frequency(48)=0"', "exit 3", "sleep 5"],
    ids=["garbage", "wrong-key", "exit-3", "hangs"],
)
def test_failing_vcgencmd_is_unavailable(
    files: dict[str, Path], tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pi_daemon.sensors as sensors_module

    monkeypatch.setattr(sensors_module, "VCGENCMD_TIMEOUT_S", 0.3)
    script = tmp_path / "vcgencmd"
    script.write_text(f"#!/bin/sh\nexec 2>/dev/null\n{body}\n")
    script.chmod(0o755)
    sensors = sensors_for(files, vcgencmd_enabled=True, vcgencmd_path=str(script))
    assert sensors.read(0.0).throttled_flags is None


def test_vcgencmd_disabled_is_not_run(files: dict[str, Path], fake_vcgencmd: Path) -> None:
    assert sensors_for(files).read(0.0).throttled_flags is None
    assert calls(fake_vcgencmd) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [("throttled=0x50005\n", 0x50005), ("throttled=0x0", 0), ("throttled=0xe0000", 0xE0000)],
)
def test_parse_throttled(text: str, value: int) -> None:
    assert parse_throttled(text) == value


# -- memory ----------------------------------------------------------------------------------


def test_meminfo_file_parsed_when_not_the_default(files: dict[str, Path]) -> None:
    files["meminfo"].write_text(MEMINFO)
    readings = sensors_for(files).read(0.0)
    assert readings.mem_available_bytes == 204800 * 1024
    assert readings.swap_total_bytes == 102396 * 1024
    assert readings.swap_used_bytes == (102396 - 51198) * 1024


@pytest.mark.parametrize(
    "text", ["", "MemAvailable: 100 kB\n", "MemAvailable: lots kB\nSwapTotal: 0 kB\nSwapFree: 0 kB"]
)
def test_bad_meminfo_is_unavailable(text: str) -> None:
    with pytest.raises(SensorUnavailable):
        parse_meminfo(text)


def test_swap_rates_from_vmstat_deltas(files: dict[str, Path]) -> None:
    sensors = sensors_for(files)
    files["vmstat"].write_text("nr_free_pages 1000\npswpin 100\npswpout 50\n")
    first = sensors.read(10.0)
    assert (first.swap_in_per_s, first.swap_out_per_s) == (None, None)  # no rate yet
    files["vmstat"].write_text("nr_free_pages 1000\npswpin 400\npswpout 70\n")
    second = sensors.read(12.0)
    assert (second.swap_in_per_s, second.swap_out_per_s) == (150.0, 10.0)
    files["vmstat"].write_text("pswpin 10\npswpout 10\n")  # counters went backwards
    assert sensors.read(13.0).swap_in_per_s is None


def test_default_paths_use_psutil(files: dict[str, Path]) -> None:
    config = SensorsSection(thermal_path=str(files["thermal"]), vcgencmd_enabled=False)
    sensors = Sensors(config)
    first = sensors.read(0.0)
    second = sensors.read(1.0)
    assert first.mem_available_bytes and first.mem_available_bytes > 0
    assert first.swap_total_bytes is not None and first.swap_used_bytes is not None
    assert second.swap_in_per_s is not None and second.swap_in_per_s >= 0
    assert first.rss_bytes and first.rss_bytes > 10 * 1024 * 1024  # this Python process


def test_pressure_file(files: dict[str, Path]) -> None:
    files["pressure"].write_text(PRESSURE)
    assert sensors_for(files).read(0.0).memory_pressure_some_avg10 == pytest.approx(12.34)


@pytest.mark.parametrize("text", ["", "full avg10=1.00\n", "some avg10=abc\n", "some avg10=250\n"])
def test_bad_pressure_is_unavailable(text: str) -> None:
    with pytest.raises(SensorUnavailable):
        parse_pressure_some_avg10(text)


# -- what the governor passes on -------------------------------------------------------------


def test_summary_readings_use_the_stable_keys_and_omit_unavailable() -> None:
    readings = Readings(cpu_temp_c=61.5, swap_out_per_s=3.0, rss_bytes=5, undervoltage=False)
    assert readings.summary_fields() == {
        "cpu_temp_c": 61.5,
        "rss_bytes": 5,
        "undervoltage": False,
    }
    full = Readings(*range(1, 11))
    assert set(full.summary_fields()) == set(SUMMARY_FIELDS)


# -- a hanging sensor never blocks the loop --------------------------------------------------


def hanging_vcgencmd(folder: Path) -> Path:
    """A vcgencmd that logs when it starts, then hangs (a firmware mailbox that never answers)."""
    script = folder / "vcgencmd"
    script.write_text(
        f'#!/bin/sh\necho "$(date +%s.%N)" >> "{folder / "started.log"}"\nexec sleep 60\n'
    )
    script.chmod(0o755)
    return script


def test_the_governor_answers_at_once_while_vcgencmd_hangs(
    files: dict[str, Path], tmp_path: Path
) -> None:
    from pi_daemon.config import parse_config
    from pi_daemon.governor import FIRST_READING_WAIT_S, SensorGovernor
    from pi_daemon.throttle import ThrottlePolicy

    files["thermal"].write_text("50000\n")
    script = hanging_vcgencmd(tmp_path)
    sensors = sensors_for(
        files, vcgencmd_enabled=True, vcgencmd_path=str(script), vcgencmd_interval_s=1.0
    )
    governor = SensorGovernor(sensors, ThrottlePolicy(parse_config({}).throttle), 0.1)
    try:
        started = time.perf_counter()
        governor.poll(time.monotonic())  # starts the sensor thread; waits for one reading
        first = time.perf_counter() - started
        slowest = 0.0
        until = time.monotonic() + 5  # vcgencmd hangs 2 s, backs off 2 s, hangs again
        while time.monotonic() < until:
            started = time.perf_counter()
            governor.poll(time.monotonic())
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.01)
        runs = (tmp_path / "started.log").read_text().splitlines()
    finally:
        governor.close()
    assert len(runs) >= 2, runs
    assert first <= FIRST_READING_WAIT_S + 0.3, first  # bounded, even for the first
    assert slowest < 0.05, slowest


def test_a_hung_vcgencmd_is_backed_off(files: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    import pi_daemon.sensors as sensors_module

    monkeypatch.setattr(sensors_module, "VCGENCMD_TIMEOUT_S", 0.2)
    script = hanging_vcgencmd(tmp_path)
    sensors = sensors_for(
        files, vcgencmd_enabled=True, vcgencmd_path=str(script), vcgencmd_interval_s=1.0
    )
    for now in range(0, 8):  # without backoff: a call every second
        assert sensors.read(float(now)).throttled_flags is None
    starts = (tmp_path / "started.log").read_text().splitlines()
    assert len(starts) == 3, starts  # at 0 s, then after 2 s and 4 s of backoff: 0, 2, 6


def test_the_daemon_keeps_its_frame_rate_while_vcgencmd_hangs(tmp_path: Path) -> None:
    """The real daemon at 20 fps with a vcgencmd that hangs for its whole 2 s timeout every
    time it runs: frames keep coming while it hangs (they used to stop for the 2 s)."""
    from tests.test_notify import DaemonProcess, read_events, write_config

    script = hanging_vcgencmd(tmp_path)
    config = write_config(
        tmp_path,
        fps=20,
        extra=f'[sensors]\nvcgencmd_enabled = true\nvcgencmd_path = "{script}"\n'
        "vcgencmd_interval_s = 1.0\npoll_interval_s = 0.2\n",
    )
    daemon = DaemonProcess(config, {})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            starts = (
                (tmp_path / "started.log").read_text().split()
                if (tmp_path / "started.log").exists()
                else []
            )
            if len(starts) >= 2 and time.time() > float(starts[1]) + 2.5:
                break
            time.sleep(0.2)
        code, _ = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    assert "vcgencmd: no answer in 2 s" in daemon.log()
    times = [e["time"] for e in read_events(tmp_path) if e["type"] == "result"]
    for started in map(float, starts[:2]):
        # While vcgencmd hangs (it is killed after 2 s): 20 fps would be ~32 frames here.
        during = [t for t in times if started + 0.2 <= t <= started + 1.8]
        assert len(during) >= 8, (started, len(during), daemon.log())
