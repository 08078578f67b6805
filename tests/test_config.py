"""Config validation: every bad value gets its key path; the example documents every key."""

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import msgspec
import pytest

from pi_daemon.config import Config, Section, load_config, parse_config, resolve_relative
from pi_daemon.errors import EX_CONFIG, ConfigError
from tests.conftest import REPO, assert_one_line_error

EXAMPLE = REPO / "examples" / "config.toml"


def test_defaults_are_valid():
    config = load_config(None)
    assert config.source == "auto"
    assert config.model.backend == "auto"


def test_example_config_is_valid_and_equals_the_defaults():
    assert load_config(EXAMPLE) == Config()


def _keys(section: type[Section], prefix: str = "") -> list[str]:
    keys = []
    for field in msgspec.structs.fields(section):
        if isinstance(field.type, type) and issubclass(field.type, Section):
            keys += _keys(field.type, f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
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
        ("[model]\nnum_threads = 0", ["model.num_threads:", "expected int >= 1, got int 0"]),
        ('[model]\nnum_threads = "two"', ["model.num_threads:", "expected int, got str 'two'"]),
        ("[model]\ntop_k = 1000", ["model.top_k:", "expected int <= 100, got int 1000"]),
        ('[model]\nsha256 = "abc"', ["model.sha256:", "expected str matching regex"]),
        ('[model]\nbackend = "tflite"', ["model.backend:"]),
        ("[model]\ncolour = 1", ["model.colour: unknown key"]),
        ("volume = 11", ["volume: unknown key"]),
        ('[preprocess]\ncrop = "zoom"', ["preprocess.crop:"]),
        ("[picamera2]\nmain_size = [640]", ["picamera2.main_size"]),
        (
            "[picamera2]\nmain_size = [32, 480]",
            ["picamera2.main_size.0:", "expected int >= 64"],
        ),
        ("[files]\nfps = -1", ["files.fps:"]),
        ("[capture]\nbackoff_initial_s = 10\nbackoff_max_s = 1", ["capture:", "backoff_max_s"]),
        ("[output]\nevents_max_bytes = 10", ["output.events_max_bytes:"]),
        ("model = 3", ["model:", "expected a table, got int 3"]),
        ("[model\npath = 1", ["not valid TOML"]),
        # Cross-field checks name the key, not just the section.
        ("[preprocess]\nroi = [0.5, 0.0, 0.6, 1.0]", ["preprocess.roi:", "outside the frame"]),
        ("[preprocess]\nroi = [0.2, 0.2, 0.0, 0.5]", ["preprocess.roi:", "empty region"]),
        ('[rules]\ninclude = ["tabby"]\nexclude = ["x"]', ["rules.exclude:", "not both"]),
        ("[motion]\nmask = [[[0, 0], [0.5, 0.5], [1, 1]]]", ["motion.mask.0:", "no area"]),
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


# -- strictness: nothing is coerced, and every string and number is checked at load ----------


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        # Wrong types are errors, never coerced (a string "false" is not false).
        ('[throttle]\nenabled = "false"', ["throttle.enabled:", "expected bool, got str 'false'"]),
        ('[model]\nnum_threads = "4"', ["model.num_threads:", "expected int, got str '4'"]),
        ("[model]\nnum_threads = 2.9", ["model.num_threads:", "expected int, got float 2.9"]),
        ("[model]\nnum_threads = true", ["model.num_threads:", "expected int, got bool True"]),
        ('[files]\nloop = "maybe"', ["files.loop:", "expected bool"]),
        ('[files]\nfps = "fast"', ["files.fps:", "expected float"]),
        ('[files]\npaths = "a.jpg"', ["files.paths:", "expected array"]),
        ("[files]\npaths = [1]", ["files.paths.0:", "expected str, got int 1"]),
        ('[metrics]\nport = "9110x"', ["metrics.port:", "expected int"]),
        # Floats must be finite (TOML has nan and inf).
        ("[files]\nfps = nan", ["files.fps:", "got float nan"]),
        ("[throttle]\nmax_interval_s = inf", ["throttle.max_interval_s:", "<= 600"]),
        ("[capture]\nstall_timeout_s = -inf", ["capture.stall_timeout_s:"]),
        # No string may hold a NUL; basic TOML strings can spell one.
        ('[model]\npath = "model\\u0000.tflite"', ["model.path:", "NUL"]),
        ('[files]\npaths = ["ok.jpg", "b\\u0000ad.jpg"]', ["files.paths.1:", "NUL"]),
        ('[sensors]\nthermal_path = "/sys/\\u0000"', ["sensors.thermal_path:", "NUL"]),
        ('[opencv]\ndevice = "\\u0000"', ["opencv.device:", "NUL"]),
        # A literal-typed key names its choices.
        ('[output]\nlog_level = "loud"', ["output.log_level:", "'debug', 'info', 'warning'"]),
        # The region of interest, the motion gate, the rules and snapshots (issue 13).
        ("[preprocess]\nroi = [0.0, 0.0, 1.0]", ["preprocess.roi:", "length 4"]),
        ("[preprocess]\nroi = [-0.1, 0.0, 0.5, 1.0]", ["preprocess.roi.0:", ">= 0.0"]),
        ("[preprocess]\nroi = [0.0, 0.7, 1.0, 0.5]", ["preprocess.roi:", "y + h = 1.2 > 1"]),
        ('[motion]\nenabled = "yes"', ["motion.enabled:", "expected bool"]),
        ("[motion]\nmax_skip_s = 0", ["motion.max_skip_s:", "expected float > 0.0"]),
        ("[motion]\nmin_changed_fraction = 0.0", ["motion.min_changed_fraction:", "> 0.0"]),
        ("[motion]\npixel_threshold = 300", ["motion.pixel_threshold:", "<= 255"]),
        ("[motion]\nmask = [[[0, 0], [1, 0]]]", ["motion.mask.0:", "length >= 3"]),
        (
            "[motion]\nmask = [[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 0], [1.5, 1]]]",
            ["motion.mask.1.2.0:", "<= 1.0"],
        ),
        ("[motion]\nmask = [[[0, 0], [1, 0], [1, nan]]]", ["motion.mask.0.2.1:", "nan"]),
        ("[rules]\nstart_frames = 6", ["rules.start_frames:", "window_frames = 5"]),
        ("[rules]\nwindow_frames = 0", ["rules.window_frames:", ">= 1"]),
        (
            '[rules]\nmin_scores = { "tiger cat" = 1.5 }',
            ['rules.min_scores."tiger cat":', "0 and 1"],
        ),
        ('[rules]\nmin_scores = { tabby = "high" }', ["rules.min_scores.tabby:", "a number"]),
        ("[rules]\nmin_scores = { tabby = nan }", ["rules.min_scores.tabby:", "got nan"]),
        ('[rules]\ninclude = [""]', ["rules.include.0:", "length >= 1"]),
        ("[rules]\ncooldown_s = -1", ["rules.cooldown_s:", ">= 0"]),
        ('[rules]\njournal_results = "all"', ["rules.journal_results:", "'events' or 'changes'"]),
        ("[snapshots]\nsnapshots_max_bytes = 10", ["snapshots.snapshots_max_bytes:", ">= 65536"]),
        ("[snapshots]\nquality = 100", ["snapshots.quality:", "<= 95"]),
        ('[snapshots]\ndirectory = "/var/\\u0000"', ["snapshots.directory:", "NUL"]),
    ],
)
def test_strict_types_and_values(write_config, cli, toml, fragments):
    path = write_config(toml)
    result = cli("check-config", str(path))
    assert_one_line_error(result, EX_CONFIG, str(path), *fragments)


def test_coerced_values_would_change_behaviour_so_they_are_refused():
    # The classic trap: "false" is truthy, so a coercing validator turned throttling on
    # for `enabled = "false"` in some libraries and off in others. Neither is acceptable.
    with pytest.raises(ConfigError, match=r"throttle\.enabled"):
        parse_config({"throttle": {"enabled": "false"}})
    assert parse_config({"files": {"fps": 2}}).files.fps == 2.0  # an int is a valid float


@pytest.mark.parametrize("depth", [50, 1000, 100_000])
@pytest.mark.parametrize("kind", ["array", "table"])
def test_deeply_nested_toml_is_one_line(write_config, cli, depth, kind):
    value = "[" * depth + "]" * depth if kind == "array" else "{a=" * depth + "1" + "}" * depth
    path = write_config(f"[files]\npaths = {value}\n")
    result = cli("check-config", str(path))
    assert_one_line_error(result, EX_CONFIG, str(path))
    assert len(result.stderr) < 500


def test_home_directory_that_does_not_exist_is_a_load_time_error():
    # Readable by a uid with no passwd entry (pytest's tmp_path is private to root).
    folder = Path(tempfile.mkdtemp(prefix="pi-daemon-nohome-"))
    folder.chmod(0o755)
    path = folder / "config.toml"
    path.write_text('[output]\nevents_file = "~/events.jsonl"')
    path.chmod(0o644)
    # As under DynamicUser=: no HOME and a uid with no passwd entry.
    env = {"HOME": ""}
    result = subprocess.run(
        [sys.executable, "-c", CHECK_AS_NOBODY, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == EX_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    assert "output.events_file: cannot expand '~'" in result.stderr
    # With a home, ~ is expanded when the config is loaded.
    loaded = load_config(path)
    assert loaded.output.events_file == str(Path.home() / "events.jsonl")


# Runs check-config with HOME unset and, where we may, as a uid with no passwd entry.
CHECK_AS_NOBODY = """
import os, sys
from pi_daemon.cli import main
# A first run imports everything lazily imported on this path while the interpreter's
# own files (under /root here) are still readable.
main(["check-config", sys.argv[1]])
os.environ.pop("HOME", None)
if os.geteuid() == 0:
    os.setgid(54321)
    os.setuid(54321)
sys.exit(main(["check-config", sys.argv[1]]))
"""


@pytest.mark.parametrize("encoding", ["utf-8-sig"])
def test_config_with_byte_order_mark_is_read(write_config, tmp_path, encoding):
    path = tmp_path / "bom.toml"
    path.write_text('source = "files"\n[model]\nnum_threads = 1\n', encoding=encoding)
    assert load_config(path).model.num_threads == 1


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: os.mkfifo(tmp / "fifo.toml") or tmp / "fifo.toml", "not a regular file"),
        (lambda tmp: Path("/dev/zero"), "not a regular file"),
        (
            lambda tmp: (tmp / "huge.toml").write_bytes(b"#" * (2 << 20)) and tmp / "huge.toml",
            "larger than 1 MiB",
        ),
    ],
)
def test_special_or_huge_config_files_are_refused_without_blocking(cli, tmp_path, make, fragment):
    path = make(tmp_path)
    result = cli("check-config", str(path), timeout=30)
    assert_one_line_error(result, EX_CONFIG, str(path), fragment)


def test_to_toml_round_trips_every_section():
    from pi_daemon.config import replace, to_toml

    config = replace(
        Config(),
        source="files",
        files=replace(Config().files, paths=["a b.jpg", 'q"uote.png'], fps=2.5),
        picamera2=replace(Config().picamera2, main_size=(800, 600)),
    )
    assert parse_config(tomllib.loads(to_toml(config))) == config


def test_to_toml_round_trips_roi_mask_and_per_label_scores():
    from pi_daemon.config import replace, to_toml

    defaults = Config()
    config = replace(
        defaults,
        preprocess=replace(defaults.preprocess, roi=(0.1, 0.2, 0.5, 0.5)),
        motion=replace(defaults.motion, mask=[[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5)]]),
        rules=replace(defaults.rules, min_scores={"tiger cat": 0.3, 'a "quoted" one': 0.2}),
    )
    assert parse_config(tomllib.loads(to_toml(config))) == config


def test_an_error_about_the_whole_file_says_top_level():
    with pytest.raises(ConfigError) as error:
        parse_config([], "here")  # type: ignore[arg-type]
    assert str(error.value).startswith("here: (top level): ")


@pytest.mark.parametrize(
    ("path", "base", "expected"),
    [
        ("model.tflite", Path("/etc/pi-daemon"), Path("/etc/pi-daemon/model.tflite")),
        ("/opt/m.tflite", Path("/etc/pi-daemon"), Path("/opt/m.tflite")),
        ("model.tflite", None, Path("model.tflite")),  # no config file: as given
        # `~` is expanded when the config is loaded (see the strictness tests), not here.
        ("/home/pi/m.tflite", Path("/etc/pi-daemon"), Path("/home/pi/m.tflite")),
    ],
)
def test_paths_are_relative_to_the_config_file(path, base, expected):
    assert resolve_relative(path, base) == expected


def test_load_config_errors_name_the_file_and_the_reason(tmp_path: Path):
    """In process as well as through the CLI above: the exact one-line messages."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as error:
        load_config(missing)
    assert str(error.value) == f"{missing}: config file not found"
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)  # a directory: OSError with a strerror
    assert str(error.value) == (
        f"{tmp_path}: cannot read config file: not a regular file (a directory)"
    )
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")  # not UTF-8: UnicodeDecodeError, no strerror
    with pytest.raises(ConfigError) as error:
        load_config(binary)
    assert str(error.value) == f"{binary}: cannot read config file: not UTF-8 text (byte 0)"


def test_parse_config_lists_every_problem_one_per_line_with_the_default_origin():
    with pytest.raises(ConfigError) as error:
        parse_config({"model": {"top_k": 0, "colour": 1}})
    assert str(error.value).splitlines() == [
        "<config>: model.top_k: expected int >= 1, got int 0",
        "<config>: model.colour: unknown key",
    ]
