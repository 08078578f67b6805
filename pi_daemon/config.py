"""The TOML configuration: one msgspec Struct per section, strictly typed, unknown keys rejected.

Every key, its default and its meaning is documented in `examples/config.toml`;
keep that file and these structs in step (a test checks they agree).

Validation is strict: a value of the wrong type is an error, never coerced
(`enabled = "false"` is not a boolean, `num_threads = "4"` not an integer, 2.9 not an
int); floats must be finite; no string may contain NUL; path keys expand `~` now,
so a user without a home directory is told at load time, not when the file is opened.
Every problem is reported, one line each, as `origin: key.path: message`.
"""

from __future__ import annotations

import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from pi_daemon import fileio
from pi_daemon.errors import ConfigError, PiDaemonError

DEFAULT_CONFIG_PATH = Path("/etc/pi-daemon/config.toml")
# A config file is a few KiB; anything this large is not one.
MAX_CONFIG_BYTES = fileio.MIB

# A string naming a file or directory: `~` is expanded when the config is loaded.
PathStr = Annotated[str, Meta(extra={"path": True})]


def _range(low: float | None = None, high: float | None = None, **given: float) -> Meta:
    """Bounds for a number: ge/le by default, or gt=/lt= given by name."""
    bounds: dict[str, Any] = dict(given)
    if low is not None:
        bounds.setdefault("ge", low)
    if high is not None:
        bounds.setdefault("le", high)
    return Meta(**bounds)


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for every section: immutable, keyword-only, unknown keys are errors."""


class FieldErrors(ValueError):
    """Raised by a section's `__post_init__` for problems that each belong to one key, so
    every one is reported under its own key path (`mqtt.topic_prefix: ...`) instead of the
    section's. A key may be a dotted path below the section ("min_scores.tabby", "mask.2").
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {text}" for key, text in problems))
        self.problems = problems


class FieldError(FieldErrors):
    """One problem with one key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__([(key, message)])
        self.key = key
        self.message = message


class ModelSection(Section, frozen=True):
    path: PathStr = ""
    labels: PathStr = ""
    sha256: Annotated[str, Meta(pattern=r"^([0-9a-f]{64})?$")] = ""
    backend: Literal["auto", "litert", "tflite-runtime"] = "auto"
    num_threads: Annotated[int, _range(1, 64)] = 2
    top_k: Annotated[int, _range(1, 100)] = 3


class Picamera2Section(Section, frozen=True):
    camera_num: Annotated[int, _range(0, 16)] = 0
    main_size: tuple[Annotated[int, _range(64, 8192)], Annotated[int, _range(64, 8192)]] = (
        640,
        480,
    )
    frame_rate: Annotated[float, _range(gt=0, le=120)] = 10.0
    capture_timeout_s: Annotated[float, _range(gt=0, le=60)] = 2.0


class OpenCVSection(Section, frozen=True):
    device: Annotated[str, Meta(min_length=1, extra={"path": True})] = "/dev/video0"
    read_timeout_s: Annotated[float, _range(gt=0, le=300)] = 5.0


class FilesSection(Section, frozen=True):
    paths: list[PathStr] = msgspec.field(default_factory=list)
    loop: bool = True
    fps: Annotated[float, _range(0, 1000)] = 0.0


class CaptureSection(Section, frozen=True):
    stall_timeout_s: Annotated[float, _range(gt=0, le=3600)] = 10.0
    max_consecutive_failures: Annotated[int, _range(1, 10_000)] = 5
    backoff_initial_s: Annotated[float, _range(gt=0, le=60)] = 0.5
    backoff_max_s: Annotated[float, _range(gt=0, le=3600)] = 30.0

    def __post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")


_Fraction = Annotated[float, _range(0, 1)]
# [x, y, w, h] in fractions of the frame (pi_daemon/roi.py maps it to pixels).
Roi = tuple[_Fraction, _Fraction, _Fraction, _Fraction]
# Float slack for regions that end exactly at the frame's edge (0.7 + 0.3 > 1 in binary).
_ROI_SLACK = 1e-9


class PreprocessSection(Section, frozen=True):
    crop: Literal["center", "letterbox", "stretch"] = "center"
    # Classification and motion look only inside this region; crop modes apply within it.
    roi: Roi = (0.0, 0.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        x, y, w, h = self.roi
        if w <= 0 or h <= 0:
            raise FieldError("roi", f"empty region: w and h must be > 0, got {list(self.roi)}")
        for name, start, size in (("x + w", x, w), ("y + h", y, h)):
            if start + size > 1 + _ROI_SLACK:
                raise FieldError(
                    "roi",
                    f"region {list(self.roi)} reaches outside the frame ({name} = "
                    f"{start + size:g} > 1)",
                )


# A polygon: at least three [x, y] points in fractions of the frame.
Polygon = Annotated[list[tuple[_Fraction, _Fraction]], Meta(min_length=3)]


def _polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace area, in squared frame fractions."""
    total = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


class MotionSection(Section, frozen=True):
    """The motion gate (pi_daemon/motion.py): classify only when the scene changed."""

    enabled: bool = False
    # A keyframe is classified at least this often (s), so slow changes are still seen.
    max_skip_s: Annotated[float, _range(gt=0, le=3600)] = 10.0
    # A grid cell has changed when its luma differs from the background by this much (0-255).
    pixel_threshold: Annotated[int, _range(1, 255)] = 25
    # Motion: at least this fraction of the watched cells changed.
    min_changed_fraction: Annotated[float, _range(gt=0, le=1)] = 0.005
    # Time constant (s) of the running background: how fast a parked car becomes scenery.
    background_s: Annotated[float, _range(gt=0, le=3600)] = 5.0
    # About this many grid cells across the longer side of the region of interest.
    resolution: Annotated[int, _range(8, 640)] = 80
    # Areas never watched for motion (a tree, a road): polygons in fractions of the frame.
    mask: list[Polygon] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for index, polygon in enumerate(self.mask):
            if _polygon_area(list(polygon)) <= 0:
                raise FieldError(f"mask.{index}", "polygon has no area (its points are in line)")


# A label as the labels file spells it.
Label = Annotated[str, Meta(min_length=1)]


def _key_path(label: str) -> str:
    """A label as a TOML key in an error's key path: bare when it can be, else quoted."""
    bare = label.replace("_", "").replace("-", "").isalnum() and label.isascii()
    return label if bare else msgspec.json.encode(label).decode()


class RulesSection(Section, frozen=True):
    """Event rules (pi_daemon/rules.py): per-frame results become start/end events."""

    enabled: bool = True
    # Only these labels make events (empty: every label) ...
    include: list[Label] = msgspec.field(default_factory=list)
    # ... or every label but these. Give one list, not both.
    exclude: list[Label] = msgspec.field(default_factory=list)
    # A frame counts for a label when it is top-1 with at least this score ...
    min_score: Annotated[float, _range(0, 1)] = 0.5
    # ... or this label's own minimum: { "tabby" = 0.3, "tiger cat" = 0.4 }. Checked entry
    # by entry in __post_init__, so an error names the label.
    min_scores: dict[str, Any] = msgspec.field(default_factory=dict)
    # A label starts when it counts in start_frames of the last window_frames classified frames.
    start_frames: Annotated[int, _range(1, 100)] = 3
    window_frames: Annotated[int, _range(1, 100)] = 5
    # An active label ends once it has not counted for this long (s).
    end_after_s: Annotated[float, _range(0, 86_400)] = 10.0
    # No new start of the same label within this long (s) after its end.
    cooldown_s: Annotated[float, _range(0, 86_400)] = 30.0
    # The journal's per-frame result lines: "events" (start/end only) or "changes" (every
    # top-1 change or output.log_score_threshold crossing, as before rules existed).
    journal_results: Literal["events", "changes"] = "events"

    def __post_init__(self) -> None:
        if self.include and self.exclude:
            raise FieldError("exclude", "give include or exclude, not both")
        if self.start_frames > self.window_frames:
            raise FieldError(
                "start_frames",
                f"{self.start_frames} frames cannot be found in a window of "
                f"window_frames = {self.window_frames}",
            )
        for label, score in self.min_scores.items():
            where = f"min_scores.{_key_path(label)}"
            if not label or "\x00" in label:
                raise FieldError(where, "a label must be non-empty text without NUL")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise FieldError(where, f"expected a number, got {_describe(score)}")
            if not (math.isfinite(score) and 0 <= score <= 1):
                raise FieldError(where, f"must be between 0 and 1, got {score}")


class SnapshotsSection(Section, frozen=True):
    """JPEG snapshots of start events (pi_daemon/snapshots.py)."""

    enabled: bool = False
    # Empty: $STATE_DIRECTORY/snapshots (systemd's StateDirectory=, /var/lib/pi-daemon).
    directory: PathStr = ""
    # The snapshots kept never add up to more than this; the oldest go first.
    snapshots_max_bytes: Annotated[int, _range(64 * 1024, 1 << 40)] = 64 * 1024 * 1024
    # JPEG quality (Pillow's scale, 1-95).
    quality: Annotated[int, _range(1, 95)] = 85


class OutputSection(Section, frozen=True):
    log_score_threshold: Annotated[float, _range(0, 1)] = 0.5
    summary_interval_s: Annotated[float, _range(1, 86_400)] = 60.0
    events_file: PathStr = ""
    events_max_bytes: Annotated[int, _range(4096, 1 << 40)] = 10 * 1024 * 1024
    events_backup_count: Annotated[int, _range(0, 100)] = 3
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Sequence numbers, the MQTT outbox, snapshots: "" = $STATE_DIRECTORY (systemd's
    # StateDirectory=), else /var/lib/pi-daemon, else the user's XDG state directory.
    state_dir: PathStr = ""
    # Exists once the wall clock is synchronised (systemd-timesyncd); "" asks the kernel
    # (adjtimex) instead, for chrony or ntpd.
    clock_synced_path: PathStr = "/run/systemd/timesync/synchronized"


FAULTS_ENV = "PI_DAEMON_ALLOW_FAULTS"


class TestingSection(Section, frozen=True):
    """Test-only fault injection, so system tests can prove the watchdog fires.

    Any fault other than "none" is refused unless PI_DAEMON_ALLOW_FAULTS=1 is in the
    daemon's environment, so a production config cannot hang the daemon by accident.
    """

    __test__ = False  # not a pytest test class, despite the name

    fault: Literal["none", "hang-invoke", "hang-capture"] = "none"
    fault_after_frames: Annotated[int, _range(0, 1 << 31)] = 0

    def __post_init__(self) -> None:
        if self.fault != "none" and os.environ.get(FAULTS_ENV) != "1":
            raise ValueError(
                f'fault = "{self.fault}" is a test-only switch; refused unless '
                f"{FAULTS_ENV}=1 is set in the environment"
            )


class SensorsSection(Section, frozen=True):
    """Where the sensor adapters read from (pi_daemon/sensors.py); tests point these at files."""

    thermal_path: Annotated[str, Meta(min_length=1, extra={"path": True})] = (
        "/sys/class/thermal/thermal_zone0/temp"
    )
    hwmon_root: Annotated[str, Meta(min_length=1, extra={"path": True})] = "/sys/class/hwmon"
    # raspberrypi-hwmon registers itself under this name (drivers/hwmon/raspberrypi-hwmon.c).
    hwmon_name: Annotated[str, Meta(min_length=1)] = "rpi_volt"
    vcgencmd_enabled: bool = True
    vcgencmd_path: Annotated[str, Meta(min_length=1, extra={"path": True})] = "vcgencmd"
    # vcgencmd forks a process and talks to the firmware mailbox: not every poll.
    vcgencmd_interval_s: Annotated[float, _range(1, 3600)] = 10.0
    meminfo_path: Annotated[str, Meta(min_length=1, extra={"path": True})] = "/proc/meminfo"
    vmstat_path: Annotated[str, Meta(min_length=1, extra={"path": True})] = "/proc/vmstat"
    pressure_path: Annotated[str, Meta(min_length=1, extra={"path": True})] = (
        "/proc/pressure/memory"
    )
    poll_interval_s: Annotated[float, _range(0.05, 60)] = 1.0


class ThrottleSection(Section, frozen=True):
    """Thermal and memory throttle policy (pi_daemon/throttle.py).

    Defaults rest on Pi 4B facts: the firmware throttles the ARM cores from 80 °C and
    stops hard at 85 °C; the Pi 4 has no soft limit. examples/config.toml says why
    each default was chosen.
    """

    enabled: bool = True
    # Temperature states, °C. warm: 10 °C under the firmware's 80, where control starts.
    warm_c: Annotated[float, _range(20, 85)] = 70.0
    # Held under load; 4 °C of margin for sensor jitter, the die's fast rise, overshoot.
    setpoint_c: Annotated[float, _range(20, 85)] = 76.0
    # 2 °C over the setpoint: the controller is losing (WARNING).
    hot_c: Annotated[float, _range(20, 85)] = 78.0
    # Pause at once, 1 °C (~5 polls of the fastest bare-board rise) short of 80 °C.
    critical_c: Annotated[float, _range(20, 85)] = 79.0
    # Wider than the sensor's ~0.5 °C steps, so a threshold cannot flap.
    hysteresis_c: Annotated[float, _range(gt=0, le=10)] = 2.0
    # The warm/hot label averages this long; critical and the controller use raw readings.
    label_smoothing_s: Annotated[float, _range(0, 600)] = 10.0
    # Bounds throttle events to a few a minute; entering critical ignores it.
    min_dwell_s: Annotated[float, _range(0, 3600)] = 30.0
    # One Lite0 invoke on a Pi 4B (~49 ms): the controller's first stretch already bites.
    start_interval_s: Annotated[float, _range(gt=0, le=10)] = 0.05
    # ~1 % duty with Lite0: about idle.
    max_interval_s: Annotated[float, _range(gt=0, le=600)] = 5.0
    # ln(interval) per °C over the setpoint (+65 % per °C) ...
    proportional_gain: Annotated[float, _range(0, 10)] = 0.5
    # ... and per °C·s: integral time 50 s, under the SoC's time constant of minutes.
    integral_gain: Annotated[float, _range(0, 1)] = 0.01
    # Under-voltage / firmware flags: 2 fps, less current from a sagging supply.
    flags_min_interval_s: Annotated[float, _range(0, 600)] = 0.5
    # Pages/s averaged over the window: sustained thrash, not a program starting.
    swap_in_limit_per_s: Annotated[float, _range(gt=0, le=1e6)] = 100.0
    swap_in_resume_per_s: Annotated[float, _range(0, 1e6)] = 50.0
    swap_window_s: Annotated[float, _range(1, 3600)] = 60.0
    # Pi OS has 100 MB of swap: 80 % full leaves ~20 MB before the OOM killer.
    swap_used_limit_fraction: Annotated[float, _range(gt=0, le=1)] = 0.8
    swap_used_resume_fraction: Annotated[float, _range(0, 1)] = 0.7
    # PSI some avg10 %: felt as lag at 10; systemd-oomd kills at 60.
    pressure_limit_pct: Annotated[float, _range(gt=0, le=100)] = 10.0
    pressure_resume_pct: Annotated[float, _range(0, 100)] = 5.0
    # 1 fps while swap/memory pressure lasts: alive and reporting, memory left to others.
    pressure_min_interval_s: Annotated[float, _range(0, 600)] = 1.0
    # About the daemon's own footprint; the 50 MiB gap dwarfs per-frame buffers.
    mem_floor_mib: Annotated[float, _range(0, 1e6)] = 100.0
    mem_resume_mib: Annotated[float, _range(0, 1e6)] = 150.0

    def __post_init__(self) -> None:
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


class MetricsSection(Section, frozen=True):
    """The optional Prometheus endpoint (pi_daemon/metrics.py); needs `pi-daemon[metrics]`."""

    enabled: bool = False
    # Loopback by default: a fleet scrapes through its own tunnel or proxy, or sets this.
    address: Annotated[str, Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, _range(0, 65535)] = 9110  # 0: any free port (tests, bench)
    # HTTPS instead of HTTP (both or neither), and a client certificate from this CA
    # required of every scraper (a fleet's collector).
    cert_file: PathStr = ""
    key_file: PathStr = ""
    client_ca_file: PathStr = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key_file" if self.cert_file else "cert_file"
            raise FieldError(missing, "cert_file and key_file go together (HTTPS needs both)")
        if self.client_ca_file and not self.cert_file:
            raise FieldError("client_ca_file", "needs cert_file and key_file (HTTPS)")


# -- MQTT topic names (MQTT 3.1.1 section 4.7) ------------------------------------------------

_TOPIC_WILDCARDS = (("+", "'+'"), ("#", "'#'"))


def _control_character(text: str) -> str | None:
    # The spec says topic names SHOULD NOT hold U+0001-U+001F or U+007F-U+009F; they also
    # break the one-line log messages that name a topic.
    for char in text:
        if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            return f"contains the control character U+{ord(char):04X}"
    return None


def topic_level_problem(text: str) -> str | None:
    """Why `text` cannot be one level of an MQTT topic name, or None if it can."""
    if not text:
        return "must not be empty"
    if "\x00" in text:
        return "contains a NUL character"
    for char, name in (("/", "'/'"), *_TOPIC_WILDCARDS):
        if char in text:
            return f"must be a single MQTT topic level, without {name}"
    if len(text.encode("utf-8")) > 1024:
        return "is longer than 1024 bytes"
    return _control_character(text)


def topic_name_problem(text: str) -> str | None:
    """Why `text` cannot begin an application's MQTT topic name (one or more levels)."""
    if not text:
        return "must not be empty"
    if "\x00" in text:
        return "contains a NUL character"
    for char, name in _TOPIC_WILDCARDS:
        if char in text:
            return f"must not contain the wildcard {name}"
    if "" in text.split("/"):
        return "must not have an empty level (a leading, trailing or doubled '/')"
    if text.startswith("$"):
        # Topics beginning with $ are the broker's own ($SYS); applications must not use them.
        return "must not begin with '$' (reserved for the broker)"
    if len(text.encode("utf-8")) > 1024:
        return "is longer than 1024 bytes"
    return _control_character(text)


class MqttSection(Section, frozen=True):
    """Delivery of every event to an MQTT broker (pi_daemon/mqtt/); needs `pi-daemon[mqtt]`.

    The key names are an interface (issue 12); examples/config.toml documents each one.
    """

    enabled: bool = False
    host: Annotated[str, Meta(min_length=1)] = "localhost"
    port: Annotated[int, _range(1, 65535)] = 1883
    # MQTT carries the keep-alive as a 16-bit number of seconds.
    keepalive_s: Annotated[int, _range(1, 65535)] = 30
    qos: Literal[0, 1] = 1
    username: str = ""
    password_file: PathStr = ""
    tls: bool = False
    ca_file: PathStr = ""
    cert_file: PathStr = ""
    key_file: PathStr = ""
    topic_prefix: str = "pi-daemon"
    device_id: str = ""
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    # At least a few hundred events; at most what any SD card holds.
    outbox_max_bytes: Annotated[int, _range(64 * 1024, 1 << 40)] = 16 * fileio.MIB
    # At most 10 fsyncs a second, whatever the event rate; at least one a minute.
    outbox_fsync_interval_s: Annotated[float, _range(0.1, 60)] = 1.0
    commands: bool = False

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        prefix_problem = topic_level_problem(self.topic_prefix)
        if prefix_problem is None and self.topic_prefix.startswith("$"):
            prefix_problem = "must not begin with '$' (reserved for the broker)"
        if prefix_problem:
            problems.append(("topic_prefix", prefix_problem))
        if self.device_id and (device_problem := topic_level_problem(self.device_id)):
            problems.append(("device_id", device_problem))
        if discovery_problem := topic_name_problem(self.discovery_prefix):
            problems.append(("discovery_prefix", discovery_problem))
        if self.password_file and not self.username:
            # MQTT 3.1.1 section 3.1.2.9: no password without a user name.
            problems.append(("password_file", "needs username (MQTT sends no password alone)"))
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) and not self.tls:
                problems.append((key, "is only used with tls = true"))
        if self.key_file and not self.cert_file:
            problems.append(("key_file", "needs cert_file (the client certificate)"))
        if problems:
            raise FieldErrors(problems)


class Config(Section, frozen=True):
    source: Literal["auto", "picamera2", "opencv", "files"] = "auto"
    model: ModelSection = msgspec.field(default_factory=ModelSection)
    picamera2: Picamera2Section = msgspec.field(default_factory=Picamera2Section)
    opencv: OpenCVSection = msgspec.field(default_factory=OpenCVSection)
    files: FilesSection = msgspec.field(default_factory=FilesSection)
    capture: CaptureSection = msgspec.field(default_factory=CaptureSection)
    preprocess: PreprocessSection = msgspec.field(default_factory=PreprocessSection)
    output: OutputSection = msgspec.field(default_factory=OutputSection)
    sensors: SensorsSection = msgspec.field(default_factory=SensorsSection)
    throttle: ThrottleSection = msgspec.field(default_factory=ThrottleSection)
    testing: TestingSection = msgspec.field(default_factory=TestingSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    mqtt: MqttSection = msgspec.field(default_factory=MqttSection)
    motion: MotionSection = msgspec.field(default_factory=MotionSection)
    rules: RulesSection = msgspec.field(default_factory=RulesSection)
    snapshots: SnapshotsSection = msgspec.field(default_factory=SnapshotsSection)


# -- validation -----------------------------------------------------------------------------


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)}"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Literal[...] | None
        literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is Literal]
        annotation = literals[0] if len(literals) == 1 else annotation
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _humanise(message: str, annotation: Any, value: Any) -> tuple[str, str]:
    """msgspec's message as (relative key path, text) for one line."""
    text, _, where = message.partition(" - at `")
    suffix = ""
    if where:
        # "$[0]`" or "$.key`" relative to the field: turn into ".0" / ".key".
        relative = where.rstrip("`").removeprefix("$")
        suffix = relative.replace("][", ".").replace("[", ".").replace("]", "")
    choices = _literal_choices(annotation)
    if choices is not None and text.startswith("Invalid enum value"):
        names = [repr(choice) for choice in choices]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return suffix, f"must be {listed}, got {_describe(value)}"
    text = text.replace("`", "")
    text = text[:1].lower() + text[1:]
    leaf = _value_at(value, suffix)
    if leaf is not _MISSING:
        text = text.split(", got ")[0] + f", got {_describe(leaf)}"
    return suffix, text


_MISSING = object()


def _value_at(value: Any, suffix: str) -> Any:
    """The item at a relative path such as ".1" or ".key" inside `value`, if it is there."""
    for part in suffix.split(".")[1:]:
        try:
            value = value[int(part)] if isinstance(value, list | tuple) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return _MISSING
    return value


def _walk_values(annotation: Any, value: Any) -> typing.Iterator[tuple[str, Any, bool]]:
    """(relative path, leaf value, is_path) for every scalar in a converted value."""
    is_path = False
    if typing.get_origin(annotation) is Annotated:
        base, *metas = typing.get_args(annotation)
        is_path = any(isinstance(m, Meta) and (m.extra or {}).get("path") for m in metas)
        annotation = base
    if isinstance(value, list | tuple):
        args = typing.get_args(annotation) or (Any,)
        for index, item in enumerate(value):
            item_type = args[index] if len(args) == len(value) and args[-1] is not ... else args[0]
            for sub, leaf, leaf_is_path in _walk_values(item_type, item):
                yield f".{index}{sub}", leaf, leaf_is_path
        return
    yield "", value, is_path


def _expand_home(text: str) -> str:
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        raise ValueError(
            f"cannot expand {text.split('/')[0]!r}: that user has no home directory "
            "(give an absolute path)"
        )
    return expanded


def _check_leaves(annotation: Any, value: Any) -> tuple[Any, list[tuple[str, str]]]:
    """Finite floats, no NUL, `~` expanded in paths: (fixed value, [(rel path, problem)])."""
    problems: list[tuple[str, str]] = []
    replacements: dict[str, str] = {}
    for where, leaf, is_path in _walk_values(annotation, value):
        if isinstance(leaf, float) and not math.isfinite(leaf):
            problems.append((where, f"must be a finite number, got {leaf}"))
        elif isinstance(leaf, str):
            if "\x00" in leaf:
                problems.append((where, "contains a NUL character"))
            elif is_path and leaf.startswith("~"):
                try:
                    replacements[where] = _expand_home(leaf)
                except ValueError as error:
                    problems.append((where, str(error)))
    if replacements and not problems:
        if isinstance(value, str):
            value = replacements[""]
        elif isinstance(value, list):
            value = [replacements.get(f".{i}", item) for i, item in enumerate(value)]
    return value, problems


def _convert_section(
    cls: type[Section], data: Any, path: str, errors: list[tuple[str, str]]
) -> Section | None:
    """Validate `data` as `cls`, appending every problem found to `errors`."""
    if not isinstance(data, dict):
        errors.append((path or "(top level)", f"expected a table, got {_describe(data)}"))
        return None
    fields = {field.name: field for field in msgspec.structs.fields(cls)}
    values: dict[str, Any] = {}
    failed = False
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            errors.append((where, "unknown key"))
            failed = True
            continue
        if _is_section(field.type):
            section = _convert_section(field.type, value, where, errors)
            failed |= section is None
            values[key] = section
            continue
        try:
            converted = msgspec.convert(value, field.type, strict=True)
        except msgspec.ValidationError as error:
            suffix, text = _humanise(str(error), field.type, value)
            errors.append((where + suffix, text))
            failed = True
            continue
        converted, problems = _check_leaves(field.type, converted)
        for suffix, text in problems:
            errors.append((where + suffix, text))
        failed |= bool(problems)
        values[key] = converted
    if failed:
        return None
    try:
        return cls(**values)
    except FieldErrors as error:
        errors.extend((f"{path}.{key}" if path else key, text) for key, text in error.problems)
        return None
    except (ValueError, TypeError) as error:
        errors.append((path or "(top level)", str(error)))
        return None


SectionT = typing.TypeVar("SectionT", bound=Section)


def validate_section(
    cls: type[SectionT],
    data: Any,
    origin: str,
    error: type[PiDaemonError] = ConfigError,
) -> SectionT:
    """Validate parsed data as `cls` (the Config, or any other document made of Sections,
    such as a model manifest); raise `error` listing every problem, one per line."""
    errors: list[tuple[str, str]] = []
    try:
        section = _convert_section(cls, data, "", errors)
    except RecursionError:
        raise error(f"{origin}: values are nested too deeply") from None
    if errors or section is None:
        raise error("\n".join(f"{origin}: {where}: {text}" for where, text in errors))
    assert isinstance(section, cls)
    return section


def parse_config(data: dict[str, Any], origin: str = "<config>") -> Config:
    """Validate a parsed mapping; raise ConfigError listing every problem, one per line."""
    return validate_section(Config, data, origin)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config file. `None` means all defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = fileio.read_text(path, MAX_CONFIG_BYTES)
    except fileio.FileProblem as error:
        if error.missing:
            raise ConfigError(f"{path}: config file not found") from None
        raise ConfigError(f"{path}: cannot read config file: {error.reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    return parse_config(data, str(path))


# -- using a validated config ---------------------------------------------------------------


def replace(section: Any, **changes: Any) -> Any:
    """A copy of a section (or the Config) with some values changed; not re-validated,
    so only for values that come from validated sources."""
    return msgspec.structs.replace(section, **changes)


def as_dict(section: Section) -> dict[str, Any]:
    """The section as plain nested dicts (sequences stay lists or tuples)."""
    data = msgspec.to_builtins(section)
    assert isinstance(data, dict)
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()  # a JSON string is a valid TOML string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: Config) -> str:
    """The config as a TOML document that `load_config` reads back as an equal Config."""
    top, sections = [], []
    for key, value in as_dict(config).items():
        if isinstance(value, dict):
            body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in value.items())
            sections.append(f"[{key}]\n{body}")
        else:
            top.append(f"{key} = {_toml_value(value)}\n")
    return "".join(top) + "\n" + "\n".join(sections)


def resolve_relative(path: str, base: Path | None) -> Path:
    """Paths in a config file are relative to the file's own directory (`~` is already
    expanded by validation)."""
    candidate = Path(path)
    if base is not None and not candidate.is_absolute():
        return base / candidate
    return candidate
