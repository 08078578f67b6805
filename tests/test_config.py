"""Config validation: every bad value gets its key path; the example documents every key."""

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from pi_daemon.config import Config, load_config, parse_config
from pi_daemon.errors import EX_CONFIG, ConfigError
from tests.conftest import REPO, assert_one_line_error

EXAMPLE = REPO / "examples" / "config.toml"


def test_defaults_are_valid():
    config = load_config(None)
    assert config.source == "auto"
    assert config.model.backend == "auto"


def test_example_config_is_valid_and_equals_the_defaults():
    assert load_config(EXAMPLE) == Config()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_example_config_documents_every_key():
    text = EXAMPLE.read_text()
    section = ""
    documented = set()
    comment_before = False
    for line in text.splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match.group(1) + "."
        elif match := re.match(r"^(\w+)\s*=", line):
            assert comment_before, f"{section}{match.group(1)} has no comment above it"
            documented.add(section + match.group(1))
        comment_before = line.startswith("#") or (
            comment_before and bool(re.match(r"^\w+\s*=", line))
        )
    assert documented == set(_keys(Config))


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('source = "webcam"', ["source:", "'auto', 'picamera2', 'opencv' or 'files'"]),
        ("[model]\nnum_threads = 0", ["model.num_threads:", "greater than or equal to 1"]),
        ('[model]\nnum_threads = "two"', ["model.num_threads:", "valid integer"]),
        ("[model]\ntop_k = 1000", ["model.top_k:", "less than or equal to 100"]),
        ('[model]\nsha256 = "abc"', ["model.sha256:", "String should match pattern"]),
        ('[model]\nbackend = "tflite"', ["model.backend:"]),
        ("[model]\ncolour = 1", ["model.colour: unknown key"]),
        ("volume = 11", ["volume: unknown key"]),
        ('[preprocess]\ncrop = "zoom"', ["preprocess.crop:"]),
        ("[picamera2]\nmain_size = [640]", ["picamera2.main_size"]),
        (
            "[picamera2]\nmain_size = [32, 480]",
            ["picamera2.main_size.0:", "greater than or equal to 64"],
        ),
        ("[files]\nfps = -1", ["files.fps:"]),
        ("[capture]\nbackoff_initial_s = 10\nbackoff_max_s = 1", ["capture:", "backoff_max_s"]),
        ("[output]\nevents_max_bytes = 10", ["output.events_max_bytes:"]),
        ("model = 3", ["model:", "valid dictionary"]),
        ("[model\npath = 1", ["not valid TOML"]),
    ],
)
def test_bad_config_reports_key_path(write_config, cli, toml, fragments):
    path = write_config(toml)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
    result = cli("check-config", str(path))
    assert_one_line_error(result, EX_CONFIG, str(path), *fragments)
    # The daemon refuses to start on it with the same code (systemd won't restart it).
    result = cli("run", "--config", str(path))
    assert_one_line_error(result, EX_CONFIG, *fragments)


def test_every_error_is_listed_one_per_line(write_config, cli):
    path = write_config('source = "x"\n[model]\nnum_threads = 0\ntop_k = 0\nbogus = 1')
    result = cli("check-config", str(path))
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"pi-daemon: {path}: ") for line in lines)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda tmp: tmp / "missing.toml", "config file not found"),
        (lambda tmp: tmp, "cannot read config file"),
        (
            lambda tmp: (tmp / "bin.toml").write_bytes(b"\xff\xfe\x00") and tmp / "bin.toml",
            "cannot read config file",
        ),
    ],
)
def test_unreadable_config(tmp_path: Path, cli, setup, fragment):
    path = setup(tmp_path)
    result = cli("check-config", str(path))
    assert_one_line_error(result, EX_CONFIG, str(path), fragment)


def test_check_config_ok(write_config, cli):
    path = write_config('source = "files"\n[model]\nnum_threads = 1')
    result = cli("check-config", str(path))
    assert result.returncode == 0 and "OK" in result.stdout


def test_parse_config_origin_in_errors():
    with pytest.raises(ConfigError, match=r"^here: model.top_k"):
        parse_config({"model": {"top_k": 0}}, "here")
