"""Real models through the real interpreter: bad ones fail in one line, good ones classify."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pi_daemon.classifier import Classifier
from pi_daemon.errors import EX_CONFIG, EX_NOINPUT, ModelError
from pi_daemon.frame import Frame
from pi_daemon.model import load_model, sha256_of
from tests.bad_models import MUTATIONS, assert_runtime_does, write_mutation
from tests.conftest import BUNDLED_MODEL, TEST_MODELS, assert_one_line_error, rgb_frame

TINY = TEST_MODELS / "tiny_uint8.tflite"
LABELS = TEST_MODELS / "tiny_labels.txt"


def _copy(tmp: Path, name: str = "model.tflite", data: bytes | None = None) -> Path:
    path = tmp / name
    path.write_bytes(TINY.read_bytes() if data is None else data)
    return path


def _bad_models(tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (model path, labels path, expected message fragment)."""
    good = TINY.read_bytes()
    corrupt = bytearray(good)
    for i in range(200, len(corrupt) - 200, 7):
        corrupt[i] ^= 0x5A
    few_labels = tmp / "five.txt"
    few_labels.write_text("".join(f"l{i}\n" for i in range(5)))
    with_manifest = _copy(tmp, "manifested.tflite")
    with_manifest.with_suffix(".json").write_text(json.dumps({"sha256": "0" * 64}))
    bad_manifest = _copy(tmp, "badjson.tflite")
    bad_manifest.with_suffix(".json").write_text("{not json")
    empty_labels = tmp / "empty.txt"
    empty_labels.write_text("a\n\nb\n")
    jpeg = tmp / "photo.tflite"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(100))
    folder = tmp / "folder.tflite"
    folder.mkdir()
    fifo = tmp / "fifo.tflite"
    os.mkfifo(fifo)
    labels_fifo = tmp / "labels.fifo"
    os.mkfifo(labels_fifo)
    mutated = {name: write_mutation(tmp, name) for name in MUTATIONS}
    manifests = {
        name: _with_manifest(tmp, name, text)
        for name, text in (
            ("manifest-input-not-a-table", '{"input": "x"}'),
            ("manifest-range-of-one", '{"input": {"range": [1]}}'),
            ("manifest-range-reversed", '{"input": {"range": [1, -1]}}'),
            ("manifest-labels-file-int", '{"labels_file": 5}'),
            ("manifest-sha256-int", '{"sha256": 5}'),
            ("manifest-typo", '{"lables_file": "x.txt"}'),
            ("manifest-nan-scale", '{"output": {"scale": NaN}}'),
            ("manifest-deep", "[" * 100_000 + "]" * 100_000),
            ("manifest-array", "[]"),
        )
    }
    return {
        "missing": (tmp / "nope.tflite", LABELS, "model file not found"),
        "empty": (_copy(tmp, "empty.tflite", b""), LABELS, "not a TFLite model"),
        "not-tflite": (jpeg, LABELS, "not a TFLite model"),
        "truncated": (
            _copy(tmp, "trunc.tflite", good[: len(good) // 2]),
            LABELS,
            "the interpreter cannot load it",
        ),
        "corrupt": (_copy(tmp, "corrupt.tflite", bytes(corrupt)), LABELS, "cannot load it"),
        "nchw": (TEST_MODELS / "tiny_nchw.tflite", LABELS, "is not NHWC with 3 colour channels"),
        "gray": (TEST_MODELS / "tiny_gray.tflite", LABELS, "is not NHWC with 3 colour channels"),
        "label-count": (TINY, few_labels, "10 output classes but the labels file has 5"),
        "labels-missing": (TINY, tmp / "none.txt", "labels file not found"),
        "labels-empty-line": (TINY, empty_labels, "empty lines"),
        "sha-mismatch": (with_manifest, LABELS, "does not match the manifest"),
        "manifest-unreadable": (bad_manifest, LABELS, "unreadable model manifest"),
        # Not files: refused at once, never blocking in open() (a FIFO) or read (a dir).
        "directory": (folder, LABELS, "cannot read model: not a regular file (a directory)"),
        "fifo": (fifo, LABELS, "cannot read model: not a regular file (a FIFO)"),
        "labels-fifo": (TINY, labels_fifo, "cannot read labels: not a regular file (a FIFO)"),
        # Models that break the runtime itself (tests/bad_models.py).
        "crashes-runtime": (
            mutated["crashes-runtime"],
            LABELS,
            "the interpreter crashed (SIGSEGV) loading it in a trial process",
        ),
        "invoke-fails": (
            mutated["invoke-fails"],
            LABELS,
            "the interpreter cannot run it: Input tensor 1 lacks data",
        ),
        "invoke-fails-op": (mutated["invoke-fails-op"], LABELS, "the interpreter cannot run it"),
        "huge-tensor": (mutated["huge-tensor"], LABELS, "huge-tensor.tflite: the interpreter c"),
        # Manifests are validated like the config: key path, what was expected, what was there.
        "manifest-input-not-a-table": (
            manifests["manifest-input-not-a-table"],
            LABELS,
            "input: expected a table, got str 'x'",
        ),
        "manifest-range-of-one": (
            manifests["manifest-range-of-one"],
            LABELS,
            "input.range: expected array of length 2",
        ),
        "manifest-range-reversed": (
            manifests["manifest-range-reversed"],
            LABELS,
            "input: range must be [low, high] with low < high",
        ),
        "manifest-labels-file-int": (
            manifests["manifest-labels-file-int"],
            LABELS,
            "labels_file: expected str, got int 5",
        ),
        "manifest-sha256-int": (
            manifests["manifest-sha256-int"],
            LABELS,
            "sha256: expected str, got int 5",
        ),
        "manifest-typo": (manifests["manifest-typo"], LABELS, "lables_file: unknown key"),
        "manifest-nan-scale": (
            manifests["manifest-nan-scale"],
            LABELS,
            "output.scale: expected float >= 0.0, got float nan",
        ),
        "manifest-deep": (manifests["manifest-deep"], LABELS, "nested too deeply"),
        "manifest-array": (manifests["manifest-array"], LABELS, "is not a JSON object"),
    }


def _with_manifest(tmp: Path, name: str, text: str) -> Path:
    model = _copy(tmp, f"{name}.tflite")
    model.with_suffix(".json").write_text(text)
    return model


BAD_MODEL_NAMES = [
    "missing",
    "empty",
    "not-tflite",
    "truncated",
    "corrupt",
    "nchw",
    "gray",
    "label-count",
    "labels-missing",
    "labels-empty-line",
    "sha-mismatch",
    "manifest-unreadable",
    "directory",
    "fifo",
    "labels-fifo",
    "crashes-runtime",
    "invoke-fails",
    "invoke-fails-op",
    "huge-tensor",
    "manifest-input-not-a-table",
    "manifest-range-of-one",
    "manifest-range-reversed",
    "manifest-labels-file-int",
    "manifest-sha256-int",
    "manifest-typo",
    "manifest-nan-scale",
    "manifest-deep",
    "manifest-array",
]


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_bad_model_is_one_line_exit_78(tmp_path, cli, name):
    model, labels, fragment = _bad_models(tmp_path)[name]
    if name in MUTATIONS:
        # The model really breaks the bare runtime as this case says (crash, invoke error).
        assert_runtime_does(model, MUTATIONS[name][2])
    # In this very process: a runtime crash must be caught by the trial, not kill pytest.
    with pytest.raises(ModelError, match=re.escape(fragment)):
        load_model(model, labels=str(labels))
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), rgb_frame(64, 64))
    result = cli("classify", str(image), "--model", str(model), "--labels", str(labels), timeout=60)
    assert_one_line_error(result, EX_CONFIG, fragment)
    assert result.stdout == ""


def test_a_manifest_lists_every_problem_one_per_line(tmp_path, cli):
    model = _with_manifest(
        tmp_path, "many", '{"name": 1, "input": {"dtype": "int4", "shape": [1, 0]}, "extra": 2}'
    )
    # The model is checked before any image is looked at.
    result = cli("classify", str(tmp_path / "any.jpg"), "--model", str(model))
    manifest = model.with_suffix(".json")
    assert result.returncode == EX_CONFIG and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"pi-daemon: {manifest}: name: expected str, got int 1",
        f"pi-daemon: {manifest}: input.dtype: must be 'uint8', 'int8' or 'float32', got str 'int4'",
        f"pi-daemon: {manifest}: input.shape.1: expected int >= 1, got int 0",
        f"pi-daemon: {manifest}: extra: unknown key",
    ]


def test_manifest_and_labels_with_a_byte_order_mark(tmp_path):
    model = _copy(tmp_path, "bom.tflite")
    (tmp_path / "names.txt").write_text("".join(f"c{i}\n" for i in range(10)), "utf-8-sig")
    model.with_suffix(".json").write_text(
        json.dumps({"labels_file": "names.txt", "output": {"activation": "softmax"}}),
        encoding="utf-8-sig",
    )
    loaded = load_model(model)
    assert loaded.labels[0] == "c0"  # no BOM in the first label: LABEL=c0 matches
    assert loaded.manifest.output.activation == "softmax"


def test_bad_model_in_config_stops_the_daemon_with_78(tmp_path, cli, write_config):
    model, labels, _ = _bad_models(tmp_path)["nchw"]
    config = write_config(f'source = "files"\n[model]\npath = "{model}"\nlabels = "{labels}"\n')
    result = cli("run", "--config", str(config))
    assert_one_line_error(result, EX_CONFIG, "not NHWC")


def test_configured_sha256_is_checked(tmp_path):
    with pytest.raises(ModelError, match=r"config model\.sha256"):
        load_model(TINY, labels=str(LABELS), expected_sha256="f" * 64)
    model = load_model(TINY, labels=str(LABELS), expected_sha256=sha256_of(TINY.read_bytes()))
    assert model.sha256 == sha256_of(TINY.read_bytes())


@pytest.mark.parametrize(
    ("name", "dtype", "kind"),
    [
        ("tiny_uint8", np.uint8, "probabilities"),
        ("tiny_int8", np.int8, "logits"),
        ("tiny_float32", np.float32, "probabilities"),
        ("tiny_float32_logits", np.float32, "logits"),
    ],
)
def test_dtypes_and_output_kinds(name, dtype, kind):
    model = load_model(TEST_MODELS / f"{name}.tflite", labels=str(LABELS), num_threads=1)
    assert model.input.dtype == np.dtype(dtype)
    classifier = Classifier(model, top_k=3)
    assert classifier.output_kind == kind
    frame = Frame(rgb_frame(120, 160), "RGB", 1, 0.0, 0.0)
    first = classifier.classify(frame)
    again = classifier.classify(frame)
    assert [p.index for p in first.top] == [p.index for p in again.top]
    scores = [p.score for p in first.top]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert first.invoke_s > 0
    # The known answers (tests/data/models/README.md): solid red, green and blue give
    # class_0, class_1 and class_2 with p >= 0.99 (softmax) or a logit of about 8 against
    # under 0.4 (so a softmax over ten classes of at least 0.99 too). This goes through
    # each model's own input mapping: identity (uint8), zero point -128 (int8), float.
    for index, rgb in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        solid = Frame(np.full((48, 64, 3), rgb, np.uint8), "RGB", 2 + index, 0.0, 0.0)
        top = classifier.classify(solid).top
        assert (top[0].index, top[0].label) == (index, f"class_{index}"), (rgb, top)
        assert top[0].score >= 0.99, (rgb, top)
        assert top[1].score <= 0.01, (rgb, top)
    # A BGR frame of the same red must be read as red, not blue.
    bgr_red = Frame(np.full((48, 64, 3), (0, 0, 255), np.uint8), "BGR", 9, 0.0, 0.0)
    assert classifier.classify(bgr_red).top[0].label == "class_0"


def test_bundled_model_and_manifest_agree():
    manifest = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    model = load_model()
    assert model.path.name == BUNDLED_MODEL.name
    assert model.sha256 == manifest["sha256"] == sha256_of(BUNDLED_MODEL.read_bytes())
    assert list(model.input.shape) == manifest["input"]["shape"] == [1, 224, 224, 3]
    assert model.input.dtype == np.uint8 and model.output.dtype == np.uint8
    assert len(model.labels) == 1000


@pytest.mark.parametrize(
    ("photo", "accepted", "within"),
    [
        ("coffee", {"espresso"}, 1),
        ("chelsea", {"Egyptian cat", "tabby", "tiger cat"}, 2),
        ("rocket", {"missile", "projectile"}, 2),
    ],
)
def test_bundled_model_classifies_real_photos(cli, photos, photo, accepted, within):
    result = cli("classify", str(photos[photo]), "--top", "5")
    assert result.returncode == 0, result.stderr
    path, ranked = result.stdout.strip().split(": ", 1)
    assert path == str(photos[photo])
    labels = [item.rsplit(" ", 1)[0] for item in ranked.split(", ")]
    assert len(labels) == 5
    assert accepted & set(labels[:within]), labels


def test_classify_prints_one_line_per_image_and_reports_unreadable(cli, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos["coffee"].read_bytes()[:300])
    result = cli(
        "classify",
        str(photos["coffee"]),
        str(broken),
        str(tmp_path / "missing.png"),
        str(photos["rocket"]),
        "--top",
        "2",
    )
    assert result.returncode == EX_NOINPUT
    lines = result.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(photos["coffee"]), str(photos["rocket"])]
    errors = [line for line in result.stderr.splitlines() if line.startswith("pi-daemon:")]
    assert len(errors) == 2 and "Traceback" not in result.stderr
    assert "cannot decode image" in errors[0] and "image file not found" in errors[1]


def test_model_is_found_in_an_installed_copy(tmp_path):
    """Package data: the model is read through importlib.resources, not a repo path."""
    copy = tmp_path / "m"
    shutil.copytree(BUNDLED_MODEL.parent, copy)
    model = load_model(copy / BUNDLED_MODEL.name)
    assert len(model.labels) == 1000


def _trials(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pi_daemon.trial"]


def test_a_model_is_proven_in_a_child_unless_its_manifest_vouches_for_it(caplog):
    with caplog.at_level(logging.DEBUG, logger="pi_daemon.trial"):
        load_model(TINY, labels=str(LABELS), num_threads=1)  # no manifest: proven
        assert len(_trials(caplog)) == 1
        load_model()  # the bundled model: its manifest's sha256 matches, no trial
        assert len(_trials(caplog)) == 1
        load_model(prove="always")  # what a reload does
        assert len(_trials(caplog)) == 2


def test_a_crashed_trial_leaves_no_process_behind(tmp_path):
    psutil = pytest.importorskip("psutil")
    with pytest.raises(ModelError, match="crashed"):
        load_model(write_mutation(tmp_path, "crashes-runtime"), labels=str(LABELS))
    assert psutil.Process().children() == []


def test_a_trial_that_does_not_finish_is_killed(tmp_path):
    from pi_daemon.trial import prove_loadable

    psutil = pytest.importorskip("psutil")
    with pytest.raises(ModelError, match=r"took longer than 0 s in a trial process \(killed\)"):
        prove_loadable(BUNDLED_MODEL, timeout_s=0.001)
    assert psutil.Process().children() == []


def test_an_invoke_error_while_running_is_a_model_error(tmp_path):
    """A model that fails in invoke() after it was accepted: a ModelError (exit 78), never
    a RuntimeError that ends the daemon with 1 and a restart loop."""
    from pi_daemon.backends import load_interpreter
    from pi_daemon.model import Model, _tensor_info

    path = write_mutation(tmp_path, "invoke-fails")
    loaded = load_interpreter(path, "auto", 1)  # no checks: as if it had passed them
    details = loaded.interpreter
    model = Model(
        path=path,
        sha256="",
        name="broken",
        labels=[f"c{i}" for i in range(10)],
        loaded=loaded,
        input=_tensor_info(details.get_input_details()[0]),
        output=_tensor_info(details.get_output_details()[0]),
    )
    with pytest.raises(ModelError, match="invoke failed: Input tensor 1 lacks data"):
        Classifier(model).classify(Frame(rgb_frame(32, 32), "RGB", 1, 0.0, 0.0))


def test_classify_prints_nothing_of_the_runtime_on_stderr(cli, photos):
    """The runtime's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." is printed
    from C++ at the first allocation; it goes to the debug log, not onto stderr."""
    result = cli("classify", str(photos["coffee"]))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"{photos['coffee']}: espresso")


def test_the_runtime_line_goes_to_the_debug_log():
    # The runtime prints it once per process: look in a fresh one.
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(message)s')\n"
        "from pi_daemon.backends import load_interpreter\n"
        f"load_interpreter(__import__('pathlib').Path({str(TINY)!r}), 'auto', 1)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "XNNPACK" not in done.stderr, done.stderr
    assert "said: INFO: Created TensorFlow Lite XNNPACK delegate" in done.stdout, done.stdout
