"""Real models through the real interpreter: bad ones fail in one line, good ones classify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pi_daemon.classifier import Classifier
from pi_daemon.errors import EX_CONFIG, EX_NOINPUT, ModelError
from pi_daemon.model import load_model, sha256_of
from pi_daemon.preprocess import Frame
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
    }


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
]


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_bad_model_is_one_line_exit_78(tmp_path, cli, name):
    model, labels, fragment = _bad_models(tmp_path)[name]
    with pytest.raises(ModelError, match=fragment):
        load_model(model, labels=str(labels))
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), rgb_frame(64, 64))
    result = cli("classify", str(image), "--model", str(model), "--labels", str(labels))
    assert_one_line_error(result, EX_CONFIG, fragment)


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
