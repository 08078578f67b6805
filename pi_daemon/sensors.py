"""Thin adapters over the Pi's heat, power and memory sensors.

Every path comes from `[sensors]` so tests point them at temp files. A sensor that
is missing or returns garbage becomes *unavailable*: its field in `Readings` is None,
one SENSOR_UNAVAILABLE event says so (not one per poll), an INFO line says when it
comes back, and the daemon carries on. The throttle policy never throttles on a
None by itself.

psutil is imported lazily so the package imports on any machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

from pi_daemon import fileio
from pi_daemon.config import SensorsSection
from pi_daemon.events import Event, emit
from pi_daemon.readings import Readings

log = logging.getLogger(__name__)

DEFAULT_MEMINFO = "/proc/meminfo"
DEFAULT_VMSTAT = "/proc/vmstat"
# psutil reports swap-in/out as pswpin/pswpout × 4 KiB; the kernel counts pages.
SWAP_PAGE_BYTES = 4096
# vcgencmd normally answers in milliseconds. Sensors are polled off the inference loop's
# thread (pi_daemon/governor.py), so a hang delays only the other readings, by this much.
VCGENCMD_TIMEOUT_S = 2.0
# After a timeout vcgencmd is asked again only after twice the previous wait, up to this.
VCGENCMD_MAX_BACKOFF_S = 600.0
# A killed vcgencmd stuck in the firmware mailbox (uninterruptible) is given this long to
# go; then it is abandoned and never run again by this process.
VCGENCMD_REAP_S = 1.0
SENSOR_FILE_LIMIT = 64 * 1024
# Outside this range a thermal zone reading is a driver error, not a temperature.
PLAUSIBLE_TEMP_C = (-40.0, 150.0)


class SensorUnavailable(Exception):
    """A sensor could not be read. `missing` is True when it simply is not there."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


# -- parsers (pure: text in, value out, SensorUnavailable on garbage) ---------------------------


def parse_millidegrees(text: str) -> float:
    """`/sys/class/thermal/.../temp` holds an integer in millidegrees Celsius."""
    try:
        value = int(text.strip()) / 1000.0
    except ValueError:
        raise SensorUnavailable(f"not an integer: {text.strip()[:40]!r}") from None
    low, high = PLAUSIBLE_TEMP_C
    if not low <= value <= high:
        raise SensorUnavailable(f"implausible temperature {value:.1f} °C")
    return value


def parse_throttled(text: str) -> int:
    """`vcgencmd get_throttled` prints `throttled=0x50005`."""
    key, _, value = text.strip().partition("=")
    if key != "throttled":
        raise SensorUnavailable(f"unexpected output: {text.strip()[:60]!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise SensorUnavailable(f"unexpected output: {text.strip()[:60]!r}") from None


def parse_meminfo(text: str) -> dict[str, int]:
    """MemAvailable, SwapTotal and SwapFree from /proc/meminfo format, in bytes."""
    wanted = {"MemAvailable", "SwapTotal", "SwapFree"}
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            parts = rest.split()
            try:
                values[name] = int(parts[0]) * 1024  # the kernel writes kB (KiB)
            except (IndexError, ValueError):
                raise SensorUnavailable(f"bad {name} line: {line.strip()[:60]!r}") from None
    if missing := wanted - values.keys():
        raise SensorUnavailable(f"no {', '.join(sorted(missing))}")
    return values


def parse_vmstat_swap(text: str) -> tuple[int, int]:
    """Cumulative (pswpin, pswpout) pages from /proc/vmstat format."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("pswpin", "pswpout"):
            try:
                found[parts[0]] = int(parts[1])
            except ValueError:
                raise SensorUnavailable(f"bad line: {line.strip()[:60]!r}") from None
    if len(found) != 2:
        raise SensorUnavailable("no pswpin/pswpout")
    return found["pswpin"], found["pswpout"]


def parse_pressure_some_avg10(text: str) -> float:
    """The `some avg10=` percentage from /proc/pressure/memory."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "some":
            for part in parts[1:]:
                key, _, value = part.partition("=")
                if key == "avg10":
                    try:
                        result = float(value)
                    except ValueError:
                        break
                    if 0.0 <= result <= 100.0:
                        return result
                    break
    raise SensorUnavailable(f"no valid 'some avg10=' in {text.strip()[:60]!r}")


def read_text(path: str | Path) -> str:
    """A sysfs/procfs file's text; SensorUnavailable(missing=True) when it is not there.

    Through fileio: a FIFO or a device (`/dev/zero`) configured as a sensor is refused
    instead of blocking the reader or filling memory, and at most SENSOR_FILE_LIMIT bytes
    are read (/proc/vmstat, the largest, is ~5 KiB).
    """
    try:
        data = fileio.read_bytes(path, SENSOR_FILE_LIMIT)
    except fileio.FileProblem as error:
        if error.missing:
            raise SensorUnavailable(f"{path}: not found", missing=True) from None
        # EIO/ENODATA from a driver, EACCES, a FIFO: present but unusable right now.
        raise SensorUnavailable(f"{path}: {error.reason}") from None
    return data.decode("ascii", errors="replace")


def find_hwmon(root: str | Path, name: str) -> Path | None:
    """The hwmonN directory whose `name` file says `name` (N changes between boots)."""
    try:
        entries = sorted(Path(root).iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            if read_text(entry / "name").strip() == name:
                return entry
        except SensorUnavailable:
            continue
    return None


# -- availability bookkeeping ---------------------------------------------------------------


class _Availability:
    """Logs each sensor's transitions once: unavailable (event) and back again (INFO)."""

    # Sensors whose absence is worth a WARNING even at start: the SoC temperature is
    # what keeps the board out of firmware throttling. Absent Pi-only sensors (hwmon,
    # vcgencmd, PSI which Pi kernels disable) are normal off-Pi and get INFO.
    IMPORTANT = frozenset({"cpu_temp"})

    def __init__(self) -> None:
        # name -> True (available) / False (unavailable); absent until first poll.
        self._state: dict[str, bool] = {}

    def ok(self, name: str) -> None:
        if self._state.get(name) is False:
            log.info("sensor %s is available again", name)
        self._state[name] = True

    def fail(self, name: str, error: SensorUnavailable) -> None:
        previous = self._state.get(name)
        self._state[name] = False
        if previous is False:
            return
        quiet = error.missing and previous is None and name not in self.IMPORTANT
        emit(
            log,
            logging.INFO if quiet else logging.WARNING,
            Event.SENSOR_UNAVAILABLE,
            "sensor %s unavailable: %s; carrying on without it",
            name,
            error,
            sensor=name,
        )

    def is_unavailable(self, name: str) -> bool:
        return self._state.get(name) is False


# -- the sensor set -------------------------------------------------------------------------


class Sensors:
    """Reads every sensor once per `read(now)`; the governor decides how often.

    Memory: with the default `/proc/meminfo` and `/proc/vmstat`, psutil reads them (its
    parsing copes with old and odd kernels). psutil cannot be pointed at another file
    without changing its process-wide PROCFS_PATH, which would also move RSS, so a
    non-default path is parsed here: that is how system tests drive memory readings.
    """

    def __init__(self, config: SensorsSection) -> None:
        self.config = config
        self._availability = _Availability()
        self._hwmon_dir: Path | None = None
        self._vcgencmd: str | None = None
        self._vcgencmd_due = 0.0
        self._vcgencmd_backoff_s = 0.0  # > 0 after timeouts
        self._vcgencmd_abandoned = False
        self._throttled_flags: int | None = None
        self._swap_counters: tuple[float, int, int] | None = None  # (now, pages in, pages out)
        self._process: Any = None

    def read(self, now: float) -> Readings:
        """Poll every sensor; never raises for a sensor problem."""
        memory = self._memory()
        swap_in, swap_out = self._swap_rates(now)
        return Readings(
            cpu_temp_c=self._guard("cpu_temp", self._cpu_temp),
            undervoltage=self._guard("undervoltage", self._undervoltage),
            throttled_flags=self._throttled(now),
            swap_used_bytes=memory.get("swap_used"),
            swap_total_bytes=memory.get("swap_total"),
            swap_in_per_s=swap_in,
            swap_out_per_s=swap_out,
            mem_available_bytes=memory.get("available"),
            rss_bytes=self._guard("rss", self._rss),
            memory_pressure_some_avg10=self._guard(
                "memory_pressure",
                lambda: parse_pressure_some_avg10(read_text(self.config.pressure_path)),
            ),
        )

    def _guard(self, name: str, read: Any) -> Any:
        try:
            value = read()
        except SensorUnavailable as error:
            self._availability.fail(name, error)
            return None
        self._availability.ok(name)
        return value

    # -- individual sensors --

    def _cpu_temp(self) -> float:
        path = self.config.thermal_path
        try:
            return parse_millidegrees(read_text(path))
        except SensorUnavailable as error:
            if error.missing:
                raise
            raise SensorUnavailable(f"{path}: {error}") from None

    def _undervoltage(self) -> bool:
        if self._hwmon_dir is None:
            self._hwmon_dir = find_hwmon(self.config.hwmon_root, self.config.hwmon_name)
        if self._hwmon_dir is None:
            raise SensorUnavailable(
                f"no hwmon named {self.config.hwmon_name!r} under {self.config.hwmon_root}",
                missing=True,
            )
        path = self._hwmon_dir / "in0_lcrit_alarm"
        try:
            text = read_text(path).strip()
        except SensorUnavailable:
            self._hwmon_dir = None  # hwmonN may be renumbered if the driver reloads
            raise
        if text not in ("0", "1"):
            raise SensorUnavailable(f"{path}: unexpected {text[:20]!r}")
        return text == "1"

    def _throttled(self, now: float) -> int | None:
        """Firmware flags from vcgencmd, re-run at most every vcgencmd_interval_s (it forks)."""
        if not self.config.vcgencmd_enabled or self._vcgencmd_abandoned:
            return None
        if now < self._vcgencmd_due:
            return self._throttled_flags
        self._throttled_flags = self._guard("throttled_flags", self._run_vcgencmd)
        wait = max(self.config.vcgencmd_interval_s, self._vcgencmd_backoff_s)
        self._vcgencmd_due = now + wait
        return self._throttled_flags

    def _run_vcgencmd(self) -> int:
        if self._vcgencmd is None:
            configured = self.config.vcgencmd_path
            found = configured if os.sep in configured else shutil.which(configured)
            if not found or not os.access(found, os.X_OK):
                raise SensorUnavailable(f"{configured}: command not found", missing=True)
            self._vcgencmd = found
        try:
            process = subprocess.Popen(
                [self._vcgencmd, "get_throttled"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except OSError as error:
            self._vcgencmd = None
            raise SensorUnavailable(f"vcgencmd: {error.strerror or error}") from None
        try:
            stdout, stderr = process.communicate(timeout=VCGENCMD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._vcgencmd_hung(process)
            raise SensorUnavailable(
                f"vcgencmd: no answer in {VCGENCMD_TIMEOUT_S:.0f} s; next try in "
                f"{self._vcgencmd_backoff_s:.0f} s"
            ) from None
        self._vcgencmd_backoff_s = 0.0
        if process.returncode != 0:
            detail = (stderr or stdout).strip()[:80]
            raise SensorUnavailable(f"vcgencmd exited {process.returncode}: {detail}")
        return parse_throttled(stdout[:SENSOR_FILE_LIMIT])

    def _vcgencmd_hung(self, process: subprocess.Popen[str]) -> None:
        """Kill a hung vcgencmd and back off; one stuck in the kernel is left for good."""
        self._vcgencmd_backoff_s = min(
            VCGENCMD_MAX_BACKOFF_S,
            max(2 * self._vcgencmd_backoff_s, 2 * self.config.vcgencmd_interval_s),
        )
        process.kill()
        try:
            process.communicate(timeout=VCGENCMD_REAP_S)
        except subprocess.TimeoutExpired:
            self._vcgencmd_abandoned = True
            log.warning(
                "vcgencmd (pid %d) does not die even when killed (stuck in the firmware "
                "mailbox?); not running it again until restart",
                process.pid,
            )

    def _memory(self) -> dict[str, int]:
        """Available memory and swap amounts, in bytes; {} when unavailable."""
        path = self.config.meminfo_path
        try:
            if path == DEFAULT_MEMINFO:
                values = self._psutil_memory()
            else:
                meminfo = parse_meminfo(read_text(path))
                values = {
                    "available": meminfo["MemAvailable"],
                    "swap_total": meminfo["SwapTotal"],
                    "swap_used": meminfo["SwapTotal"] - meminfo["SwapFree"],
                }
        except SensorUnavailable as error:
            self._availability.fail("memory", SensorUnavailable(f"{path}: {error}", error.missing))
            return {}
        self._availability.ok("memory")
        return values

    @staticmethod
    def _psutil_memory() -> dict[str, int]:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
            with warnings.catch_warnings():
                # psutil warns (and reports 0) when /proc/vmstat is unreadable; the
                # swap amounts come from meminfo and are still right.
                warnings.simplefilter("ignore", RuntimeWarning)
                swap = psutil.swap_memory()
        except (ImportError, OSError) as error:
            raise SensorUnavailable(f"psutil: {error}") from None
        return {"available": available, "swap_total": int(swap.total), "swap_used": int(swap.used)}

    def _swap_counters_now(self) -> tuple[int, int]:
        path = self.config.vmstat_path
        if path != DEFAULT_VMSTAT:
            return parse_vmstat_swap(read_text(path))
        try:
            import psutil

            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # psutil's "set to 0" fallback
                swap = psutil.swap_memory()
        except (ImportError, OSError, RuntimeWarning) as error:
            raise SensorUnavailable(f"psutil: {error}") from None
        return int(swap.sin) // SWAP_PAGE_BYTES, int(swap.sout) // SWAP_PAGE_BYTES

    def _swap_rates(self, now: float) -> tuple[float | None, float | None]:
        """Pages swapped in/out per second since the previous poll (None on the first)."""
        counters = self._guard("swap_rate", self._swap_counters_now)
        if counters is None:
            self._swap_counters = None
            return None, None
        previous = self._swap_counters
        self._swap_counters = (now, counters[0], counters[1])
        if previous is None or now <= previous[0]:
            return None, None
        elapsed = now - previous[0]
        delta_in, delta_out = counters[0] - previous[1], counters[1] - previous[2]
        if delta_in < 0 or delta_out < 0:
            return None, None  # counters went backwards (file rewritten, or wrapped)
        return delta_in / elapsed, delta_out / elapsed

    def _rss(self) -> int:
        try:
            import psutil

            if self._process is None:
                self._process = psutil.Process()
            return int(self._process.memory_info().rss)
        except Exception as error:  # psutil.Error is not an OSError; none may stop the loop
            raise SensorUnavailable(f"psutil: {error}") from None
