"""The model checks in model.py and backends.py, each failure mode with its one-line message,
and the CLI's --version and default config path."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import pi_daemon
from pi_daemon import backends, cli
from pi_daemon.errors import ModelError
from pi_daemon.manifest import Manifest
from pi_daemon.model import (
    TensorInfo,
    _check_tensors,
    _labels_path_for,
    load_model,
    read_labels,
    read_manifest,
)
from tests.conftest import TEST_MODELS, write_sensor_files

TINY = TEST_MODELS / "tiny_uint8.tflite"
LABELS = TEST_MODELS / "tiny_labels.txt"
U8, I8, F32 = np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32)


def tensor(shape: tuple[int, ...], dtype: np.dtype = U8, scale: float = 1.0) -> TensorInfo:
    return TensorInfo(index=0, shape=shape, dtype=dtype, scale=scale, zero_point=0)


GOOD_IN, GOOD_OUT = tensor((1, 224, 224, 3)), tensor((1, 10), scale=1 / 256)


# -- tensor shapes and types -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("inp", "out", "labels", "fragment"),
    [
        (tensor((1, 3, 224, 224)), GOOD_OUT, 10, "input shape [1, 3, 224, 224] is not NHWC"),
        (tensor((224, 224, 3)), GOOD_OUT, 10, "is not NHWC with 3 colour channels"),
        (tensor((2, 224, 224, 3)), GOOD_OUT, 10, "is not NHWC"),  # a batch of two
        (tensor((1, 224, 224, 4)), GOOD_OUT, 10, "is not NHWC"),  # RGBA
        (tensor((1, 7, 224, 3)), GOOD_OUT, 10, "input [1, 7, 224, 3] is too small"),
        (tensor((1, 224, 7, 3)), GOOD_OUT, 10, "is too small to be an image model"),
        (tensor((1, 8, 8, 3), np.dtype(np.int16)), GOOD_OUT, 10, "input dtype int16 unsupported"),
        (GOOD_IN, tensor((1, 10), np.dtype(np.float16)), 10, "output dtype float16 unsupported"),
        (tensor((1, 8, 8, 3), I8, 0.0), GOOD_OUT, 10, "input is int8 but has no quantization"),
        (GOOD_IN, tensor((1, 10), U8, 0.0), 10, "output is uint8 but has no quantization"),
        (GOOD_IN, tensor((1, 10, 1)), 10, "output shape [1, 10, 1] is not a class vector"),
        (GOOD_IN, tensor((2, 5)), 10, "output shape [2, 5] is not a class vector [1, N]"),
        (GOOD_IN, GOOD_OUT, 11, "model has 10 output classes but the labels file has 11"),
    ],
)
def test_tensor_checks_name_the_problem(
    inp: TensorInfo, out: TensorInfo, labels: int, fragment: str
) -> None:
    with pytest.raises(ModelError) as caught:
        _check_tensors(Path("/m/x.tflite"), inp, out, labels)
    text = str(caught.value)
    assert text.startswith("/m/x.tflite: ") and fragment in text and "\n" not in text, text


@pytest.mark.parametrize(
    ("inp", "out"),
    [
        (GOOD_IN, GOOD_OUT),
        (tensor((1, 8, 8, 3)), tensor((10,), scale=0.1)),  # the smallest image, a flat vector
        (tensor((1, 32, 32, 3), F32, 0.0), tensor((1, 10), F32, 0.0)),  # float: no scale
        (tensor((1, 32, 32, 3), I8, 1.0), tensor((1, 10), I8, 0.05)),
    ],
)
def test_tensor_checks_accept_every_supported_layout(inp: TensorInfo, out: TensorInfo) -> None:
    _check_tensors(Path("m.tflite"), inp, out, 10)


# -- manifest and labels ---------------------------------------------------------------------


def copy_model(tmp_path: Path, manifest: object | None = None, name: str = "m") -> Path:
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(TINY.read_bytes())
    if manifest is not None:
        path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = copy_model(tmp_path, manifest=[1, 2, 3])
    with pytest.raises(ModelError, match=r"m\.json: model manifest is not a JSON object"):
        read_manifest(path)
    assert read_manifest(tmp_path / "no-manifest.tflite") is None


def test_a_manifest_input_shape_must_match_the_model(tmp_path: Path) -> None:
    path = copy_model(tmp_path, manifest={"input": {"shape": [1, 224, 224, 3]}})
    with pytest.raises(ModelError) as caught:
        load_model(path, labels=str(LABELS))
    assert "input shape [1, 32, 32, 3] differs from the manifest's [1, 224, 224, 3]" in str(
        caught.value
    )
    path.with_suffix(".json").write_text(json.dumps({"input": {"shape": [1, 32, 32, 3]}}))
    assert load_model(path, labels=str(LABELS)).input.shape == (1, 32, 32, 3)


def test_the_manifest_names_the_model_and_its_input_range(tmp_path: Path) -> None:
    manifest = {"name": "tiny-demo", "input": {"range": [-1, 1]}, "output": {"activation": "none"}}
    model = load_model(copy_model(tmp_path, manifest=manifest), labels=str(LABELS))
    assert model.name == "tiny-demo" and model.input_range == (-1.0, 1.0)
    assert model.declared_activation == "none"
    plain = load_model(copy_model(tmp_path, name="plain"), labels=str(LABELS))
    assert plain.name == "plain" and plain.input_range == (0.0, 255.0)
    assert plain.declared_activation is None


def test_labels_are_found_by_config_then_manifest_then_beside_the_model(tmp_path: Path) -> None:
    model = tmp_path / "net.tflite"
    none, named = Manifest(), Manifest(labels_file="names.txt")
    assert _labels_path_for(model, none, "/etc/x.txt") == Path("/etc/x.txt")
    assert _labels_path_for(model, named, "") == tmp_path / "names.txt"
    assert _labels_path_for(model, none, "") == tmp_path / "labels.txt"
    (tmp_path / "net.labels.txt").write_text("a\n")
    assert _labels_path_for(model, none, "") == tmp_path / "net.labels.txt"
    assert _labels_path_for(model, named, "") == tmp_path / "names.txt"


def test_labels_may_end_in_blank_lines_but_not_contain_them(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("  cat \ndog\n\n\n")
    assert read_labels(path) == ["cat", "dog"]
    for text in ("\n\n", "", "a\n \nb\n"):
        path.write_text(text)
        with pytest.raises(ModelError, match="labels file has empty lines or no labels"):
            read_labels(path)
    path.write_bytes(b"\xff\xfe cat\n")
    with pytest.raises(ModelError, match="cannot read labels"):
        read_labels(path)


def test_a_directory_is_not_a_readable_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot read model: not a regular file \(a directory\)"):
        load_model(tmp_path, labels=str(LABELS))


# -- backends --------------------------------------------------------------------------------


def fake_backend(monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    """Register a `tflite-runtime` whose Interpreter fails the way the real one does
    (e.g. tflite-runtime 2.14 under numpy 2 fails when the Interpreter is created)."""

    class Interpreter:
        def __init__(self, model_path: str, num_threads: int) -> None:
            raise failure

    module = types.ModuleType("fake_tflite_runtime_interpreter")
    module.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(backends.BACKENDS, "tflite-runtime", (module.__name__, "tflite-runtime"))


def test_auto_takes_litert_first() -> None:
    loaded = backends.load_interpreter(TINY, "auto", 1)
    assert loaded.backend == "litert"
    assert loaded.version == importlib.metadata.version("ai-edge-litert")
    assert loaded.interpreter.get_input_details()[0]["shape"].tolist() == [1, 32, 32, 3]
    assert "litert" in backends.available_backends()


def test_an_uninstalled_backend_is_a_one_line_model_error() -> None:
    if "tflite-runtime" in backends.available_backends():
        pytest.fail("this test expects tflite-runtime absent from the test venv (numpy 2)")
    with pytest.raises(ModelError) as caught:
        backends.load_interpreter(TINY, "tflite-runtime", 1)
    text = str(caught.value)
    assert text.startswith("no usable TFLite backend: tflite-runtime: cannot import ")
    assert "tflite_runtime.interpreter" in text and "\n" not in text


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            RuntimeError("A module that was compiled using NumPy 1.x cannot be run in NumPy 2"),
            "tflite-runtime: needs numpy<2",
        ),
        (AttributeError("_ARRAY_API not found"), "tflite-runtime: cannot run here"),
        (ImportError("libedgetpu.so.1: cannot open shared object"), "cannot run here"),
    ],
)
def test_a_backend_that_cannot_run_here_is_skipped_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException, reason: str
) -> None:
    fake_backend(monkeypatch, failure)
    with pytest.raises(ModelError, match="no usable TFLite backend") as caught:
        backends.load_interpreter(TINY, "tflite-runtime", 1)
    assert reason in str(caught.value) and str(failure) in str(caught.value)
    assert backends.load_interpreter(TINY, "auto", 1).backend == "litert"  # auto is unharmed


def test_auto_falls_back_to_the_next_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_backend(monkeypatch, RuntimeError("compiled using NumPy 1.x"))
    monkeypatch.setattr(backends, "AUTO_ORDER", ("tflite-runtime", "litert"))
    assert backends.load_interpreter(TINY, "auto", 1).backend == "litert"


def test_a_model_the_interpreter_rejects_is_a_model_error_not_a_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_backend(monkeypatch, ValueError("Model provided has model identifier 'TFL2'\n,  bad"))
    with pytest.raises(ModelError) as caught:
        backends.load_interpreter(TINY, "tflite-runtime", 1)
    assert str(caught.value) == (
        f"{TINY}: the interpreter cannot load it: Model provided has model identifier 'TFL2' , bad"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0", True),
        ("AttributeError: _ARRAY_API not found", True),
        ("numpy.core.multiarray failed to import", True),
        ("Didn't find op for builtin opcode 'CONV_2D'", False),
    ],
)
def test_numpy_abi_errors_are_recognised(text: str, expected: bool) -> None:
    assert backends.is_numpy_abi_error(RuntimeError(text)) is expected


# -- the command line ------------------------------------------------------------------------


def test_version_is_the_installed_distributions(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pi-daemon {importlib.metadata.version('pi-daemon')}\n"
    assert pi_daemon.__version__ == importlib.metadata.version("pi-daemon")


def test_config_path_falls_back_to_the_default_file_only_when_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG_PATH", default)
    assert cli._config_path(None) is None  # no file: built-in defaults
    default.parent.mkdir()
    default.write_text("")
    assert cli._config_path(None) == default
    given = tmp_path / "mine.toml"
    assert cli._config_path(given) == given  # --config always wins


# The real CLI, with /etc/pi-daemon/config.toml moved to a path the test owns (the child
# patches the one constant, as a fresh machine's /etc would or would not have the file).
DEFAULT_PATH_CHILD = """
import sys
from pathlib import Path
import pi_daemon.cli, pi_daemon.config
pi_daemon.cli.DEFAULT_CONFIG_PATH = pi_daemon.config.DEFAULT_CONFIG_PATH = Path(sys.argv.pop(1))
sys.modules["picamera2"] = None  # no Pi camera here, whatever this host has
import pi_daemon.sources
pi_daemon.sources.DEFAULT_V4L2_DEVICE = sys.argv.pop(1)
sys.exit(pi_daemon.cli.main(sys.argv[1:]))
"""


def run_with_default(default: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DEFAULT_PATH_CHILD, str(default), str(default.parent / "v0"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PI_DAEMON_LOG_TARGET": "stderr"},
    )


def test_run_without_config_reads_the_default_file(tmp_path: Path) -> None:
    default = tmp_path / "config.toml"
    events = tmp_path / "events.jsonl"
    default.write_text(
        f'source = "files"\n[model]\npath = "{TINY}"\nlabels = "{LABELS}"\n'
        f'[output]\nevents_file = "{events}"\n{write_sensor_files(tmp_path)}'
    )
    result = run_with_default(default, "run", "--max-frames", "3")
    assert result.returncode == 0, result.stderr
    assert sum(json.loads(line)["type"] == "result" for line in events.open()) == 3
    checked = run_with_default(default, "check-config")
    assert (checked.returncode, checked.stdout) == (0, f"{default}: OK\n")


def test_run_without_config_or_default_file_uses_the_built_in_defaults(tmp_path: Path) -> None:
    result = run_with_default(tmp_path / "absent.toml", "run", "--max-frames", "1")
    # The built-in default is source = "auto": with no camera at all, exit 69 in one line.
    assert result.returncode == 69, result.stderr
    assert "config file not found" not in result.stderr
    assert "source = auto: no camera found" in result.stderr
