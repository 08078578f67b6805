"""The TOML configuration: one pydantic model per section, unknown keys rejected.

Every key, its default and its meaning is documented in `examples/config.toml`;
keep that file and these models in step (a test checks they agree).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pi_daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/pi-daemon/config.toml")


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class ModelSection(Section):
    path: str = Field("", description="TFLite model file; empty means the bundled default.")
    labels: str = Field("", description="Labels file, one per line; empty means beside the model.")
    sha256: str = Field(
        "", pattern=r"^([0-9a-f]{64})?$", description="Expected sha256 of the model file."
    )
    backend: Literal["auto", "litert", "tflite-runtime"] = "auto"
    num_threads: int = Field(2, ge=1, le=64)
    top_k: int = Field(3, ge=1, le=100)


class Picamera2Section(Section):
    camera_num: int = Field(0, ge=0)
    main_size: tuple[Annotated[int, Field(ge=64)], Annotated[int, Field(ge=64)]] = (640, 480)
    frame_rate: float = Field(10.0, gt=0, le=120)
    capture_timeout_s: float = Field(2.0, gt=0, le=60)


class OpenCVSection(Section):
    device: str = Field("/dev/video0", min_length=1)
    read_timeout_s: float = Field(5.0, gt=0, le=300)


class FilesSection(Section):
    paths: list[str] = Field(default_factory=list)
    loop: bool = True
    fps: float = Field(0.0, ge=0, le=1000)


class CaptureSection(Section):
    stall_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_consecutive_failures: int = Field(5, ge=1, le=10_000)
    backoff_initial_s: float = Field(0.5, gt=0, le=60)
    backoff_max_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _backoff_order(self) -> CaptureSection:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class PreprocessSection(Section):
    crop: Literal["center", "letterbox", "stretch"] = "center"


class OutputSection(Section):
    log_score_threshold: float = Field(0.5, ge=0, le=1)
    summary_interval_s: float = Field(60.0, ge=1, le=86_400)
    events_file: str = ""
    events_max_bytes: int = Field(10 * 1024 * 1024, ge=4096)
    events_backup_count: int = Field(3, ge=0, le=100)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


FAULTS_ENV = "PI_DAEMON_ALLOW_FAULTS"


class TestingSection(Section):
    """Test-only fault injection, so system tests can prove the watchdog fires.

    Any fault other than "none" is refused unless PI_DAEMON_ALLOW_FAULTS=1 is in the
    daemon's environment, so a production config cannot hang the daemon by accident.
    """

    __test__ = False  # not a pytest test class, despite the name

    fault: Literal["none", "hang-invoke", "hang-capture"] = "none"
    fault_after_frames: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _only_when_allowed(self) -> TestingSection:
        if self.fault != "none" and os.environ.get(FAULTS_ENV) != "1":
            raise ValueError(
                f'fault = "{self.fault}" is a test-only switch; refused unless '
                f"{FAULTS_ENV}=1 is set in the environment"
            )
        return self


class SensorsSection(Section):
    """Where the sensor adapters read from (pi_daemon/sensors.py); tests point these at files."""

    thermal_path: str = Field("/sys/class/thermal/thermal_zone0/temp", min_length=1)
    hwmon_root: str = Field("/sys/class/hwmon", min_length=1)
    # raspberrypi-hwmon registers itself under this name (drivers/hwmon/raspberrypi-hwmon.c).
    hwmon_name: str = Field("rpi_volt", min_length=1)
    vcgencmd_enabled: bool = True
    vcgencmd_path: str = Field("vcgencmd", min_length=1)
    # vcgencmd forks a process and talks to the firmware mailbox: not every poll.
    vcgencmd_interval_s: float = Field(10.0, ge=1, le=3600)
    meminfo_path: str = Field("/proc/meminfo", min_length=1)
    vmstat_path: str = Field("/proc/vmstat", min_length=1)
    pressure_path: str = Field("/proc/pressure/memory", min_length=1)
    poll_interval_s: float = Field(1.0, ge=0.05, le=60)


class ThrottleSection(Section):
    """Thermal and memory throttle policy (pi_daemon/throttle.py).

    Defaults rest on Pi 4B facts: the firmware throttles the ARM cores from 80 °C and
    stops hard at 85 °C; the Pi 4 has no soft limit. examples/config.toml says why
    each default was chosen.
    """

    enabled: bool = True
    # Temperature states, °C. warm: 10 °C under the firmware's 80, where control starts.
    warm_c: float = Field(70.0, ge=20, le=85)
    # Held under load; 4 °C of margin for sensor jitter, the die's fast rise, overshoot.
    setpoint_c: float = Field(76.0, ge=20, le=85)
    # 2 °C over the setpoint: the controller is losing (WARNING).
    hot_c: float = Field(78.0, ge=20, le=85)
    # Pause at once, 1 °C (~5 polls of the fastest bare-board rise) short of 80 °C.
    critical_c: float = Field(79.0, ge=20, le=85)
    # Wider than the sensor's ~0.5 °C steps, so a threshold cannot flap.
    hysteresis_c: float = Field(2.0, gt=0, le=10)
    # The warm/hot label averages this long; critical and the controller use raw readings.
    label_smoothing_s: float = Field(10.0, ge=0, le=600)
    # Bounds throttle events to a few a minute; entering critical ignores it.
    min_dwell_s: float = Field(30.0, ge=0, le=3600)
    # One Lite0 invoke on a Pi 4B (~49 ms): the controller's first stretch already bites.
    start_interval_s: float = Field(0.05, gt=0, le=10)
    # ~1 % duty with Lite0: about idle.
    max_interval_s: float = Field(5.0, gt=0, le=600)
    # ln(interval) per °C over the setpoint (+65 % per °C) ...
    proportional_gain: float = Field(0.5, ge=0, le=10)
    # ... and per °C·s: integral time 50 s, under the SoC's time constant of minutes.
    integral_gain: float = Field(0.01, ge=0, le=1)
    # Under-voltage / firmware flags: 2 fps, less current from a sagging supply.
    flags_min_interval_s: float = Field(0.5, ge=0, le=600)
    # Pages/s averaged over the window: sustained thrash, not a program starting.
    swap_in_limit_per_s: float = Field(100.0, gt=0, le=1e6)
    swap_in_resume_per_s: float = Field(50.0, ge=0, le=1e6)
    swap_window_s: float = Field(60.0, ge=1, le=3600)
    # Pi OS has 100 MB of swap: 80 % full leaves ~20 MB before the OOM killer.
    swap_used_limit_fraction: float = Field(0.8, gt=0, le=1)
    swap_used_resume_fraction: float = Field(0.7, ge=0, le=1)
    # PSI some avg10 %: felt as lag at 10; systemd-oomd kills at 60.
    pressure_limit_pct: float = Field(10.0, gt=0, le=100)
    pressure_resume_pct: float = Field(5.0, ge=0, le=100)
    # 1 fps while swap/memory pressure lasts: alive and reporting, memory left to others.
    pressure_min_interval_s: float = Field(1.0, ge=0, le=600)
    # About the daemon's own footprint; the 50 MiB gap dwarfs per-frame buffers.
    mem_floor_mib: float = Field(100.0, ge=0, le=1e6)
    mem_resume_mib: float = Field(150.0, ge=0, le=1e6)

    @model_validator(mode="after")
    def _ordered(self) -> ThrottleSection:
        if not self.warm_c < self.hot_c < self.critical_c:
            raise ValueError("need warm_c < hot_c < critical_c")
        if not self.warm_c <= self.setpoint_c <= self.hot_c:
            raise ValueError("need warm_c <= setpoint_c <= hot_c")
        if self.max_interval_s <= self.start_interval_s:
            raise ValueError("max_interval_s must be > start_interval_s")
        if self.swap_in_resume_per_s >= self.swap_in_limit_per_s:
            raise ValueError("swap_in_resume_per_s must be < swap_in_limit_per_s")
        if self.swap_used_resume_fraction >= self.swap_used_limit_fraction:
            raise ValueError("swap_used_resume_fraction must be < swap_used_limit_fraction")
        if self.pressure_resume_pct >= self.pressure_limit_pct:
            raise ValueError("pressure_resume_pct must be < pressure_limit_pct")
        if self.mem_resume_mib <= self.mem_floor_mib:
            raise ValueError("mem_resume_mib must be > mem_floor_mib")
        return self


class MetricsSection(Section):
    """The optional Prometheus endpoint (pi_daemon/metrics.py); needs `pi-daemon[metrics]`."""

    enabled: bool = False
    # Loopback by default: a fleet scrapes through its own tunnel or proxy, or sets this.
    address: str = Field("127.0.0.1", min_length=1)
    port: int = Field(9110, ge=0, le=65535)  # 0: any free port (tests, bench)


class Config(Section):
    source: Literal["auto", "picamera2", "opencv", "files"] = "auto"
    model: ModelSection = ModelSection()
    picamera2: Picamera2Section = Picamera2Section()
    opencv: OpenCVSection = OpenCVSection()
    files: FilesSection = FilesSection()
    capture: CaptureSection = CaptureSection()
    preprocess: PreprocessSection = PreprocessSection()
    output: OutputSection = OutputSection()
    sensors: SensorsSection = SensorsSection()
    throttle: ThrottleSection = ThrottleSection()
    testing: TestingSection = TestingSection()
    metrics: MetricsSection = MetricsSection()


def format_validation_error(error: ValidationError, origin: str) -> list[str]:
    """One line per problem: `origin: key.path: message`."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{origin}: {path}: {message}")
    return lines


def parse_config(data: dict[str, Any], origin: str = "<config>") -> Config:
    """Validate a parsed mapping; raise ConfigError listing every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError("\n".join(format_validation_error(error, origin))) from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config file. `None` means all defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(data, str(path))


def resolve_relative(path: str, base: Path | None) -> Path:
    """Paths in a config file are relative to the file's own directory."""
    candidate = Path(path).expanduser()
    if base is not None and not candidate.is_absolute():
        return base / candidate
    return candidate
