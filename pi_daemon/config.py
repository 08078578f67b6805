"""The TOML configuration: one pydantic model per section, unknown keys rejected.

Every key, its default and its meaning is documented in `examples/config.toml`;
keep that file and these models in step (a test checks they agree).
"""

from __future__ import annotations

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


class Config(Section):
    source: Literal["auto", "picamera2", "opencv", "files"] = "auto"
    model: ModelSection = ModelSection()
    picamera2: Picamera2Section = Picamera2Section()
    opencv: OpenCVSection = OpenCVSection()
    files: FilesSection = FilesSection()
    capture: CaptureSection = CaptureSection()
    preprocess: PreprocessSection = PreprocessSection()
    output: OutputSection = OutputSection()


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
