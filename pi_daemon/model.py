"""Loading and checking a model: file, manifest, labels, interpreter, tensor shapes.

Every way a model can be unusable ends here as a one-line `ModelError` naming the
file and the problem, before the daemon touches the camera.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon.backends import LoadedInterpreter, load_interpreter
from pi_daemon.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "efficientnet-lite0-int8.tflite"
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier at bytes 4..8


def bundled_model_path() -> Path:
    """The default model shipped inside the package (works from a wheel too)."""
    return Path(str(resources.files("pi_daemon.models").joinpath(BUNDLED_MODEL_NAME)))


@dataclass(frozen=True)
class TensorInfo:
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int


@dataclass
class Model:
    """A loaded, checked model, ready to be wrapped by a Classifier."""

    path: Path
    sha256: str
    name: str
    labels: list[str]
    loaded: LoadedInterpreter
    input: TensorInfo
    output: TensorInfo
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def interpreter(self) -> Any:
        return self.loaded.interpreter

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.input.shape[2], self.input.shape[1]

    @property
    def input_range(self) -> tuple[float, float]:
        low, high = self.manifest.get("input", {}).get("range", (0.0, 255.0))
        return float(low), float(high)

    @property
    def declared_activation(self) -> str | None:
        return self.manifest.get("output", {}).get("activation")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(model_path: Path) -> dict[str, Any]:
    """The `<stem>.json` manifest beside a model, or {} when there is none."""
    manifest_path = model_path.with_suffix(".json")
    if not manifest_path.is_file():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{manifest_path}: unreadable model manifest: {error}") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{manifest_path}: model manifest is not a JSON object")
    return manifest


def read_labels(labels_path: Path) -> list[str]:
    try:
        text = labels_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{labels_path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{labels_path}: cannot read labels: {error}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels or any(not label for label in labels):
        raise ModelError(f"{labels_path}: labels file has empty lines or no labels")
    return labels


def _labels_path_for(model_path: Path, manifest: dict[str, Any], configured: str) -> Path:
    if configured:
        return Path(configured)
    if manifest.get("labels_file"):
        return model_path.parent / manifest["labels_file"]
    sibling = model_path.with_suffix(".labels.txt")
    if sibling.exists():
        return sibling
    return model_path.parent / "labels.txt"


def _tensor_info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32))


def _check_tensors(path: Path, inp: TensorInfo, out: TensorInfo, num_labels: int) -> None:
    if len(inp.shape) != 4 or inp.shape[0] != 1 or inp.shape[3] != 3:
        raise ModelError(
            f"{path}: input shape {list(inp.shape)} is not NHWC with 3 colour channels "
            "(expected [1, height, width, 3])"
        )
    if inp.shape[1] < 8 or inp.shape[2] < 8:
        raise ModelError(f"{path}: input {list(inp.shape)} is too small to be an image model")
    for role, info in (("input", inp), ("output", out)):
        if info.dtype not in SUPPORTED_DTYPES:
            raise ModelError(
                f"{path}: {role} dtype {info.dtype} unsupported (uint8, int8, float32)"
            )
        if info.dtype.kind in "iu" and info.scale <= 0:
            raise ModelError(f"{path}: {role} is {info.dtype} but has no quantization parameters")
    classes = int(np.prod(out.shape))
    if len(out.shape) not in (1, 2) or (len(out.shape) == 2 and out.shape[0] != 1):
        raise ModelError(f"{path}: output shape {list(out.shape)} is not a class vector [1, N]")
    if classes != num_labels:
        raise ModelError(
            f"{path}: model has {classes} output classes but the labels file has {num_labels}"
        )


def load_model(
    path: str | Path = "",
    *,
    labels: str = "",
    expected_sha256: str = "",
    backend: str = "auto",
    num_threads: int = 2,
) -> Model:
    """Load and check a model. Empty `path` means the bundled default model."""
    model_path = Path(path) if path else bundled_model_path()
    try:
        data = model_path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{model_path}: model file not found") from None
    except OSError as error:
        raise ModelError(f"{model_path}: cannot read model: {error.strerror}") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{model_path}: not a TFLite model (no TFL3 flatbuffer identifier)")

    digest = sha256_of(data)
    manifest = read_manifest(model_path)
    for origin, wanted in (
        ("config model.sha256", expected_sha256),
        ("manifest", manifest.get("sha256", "")),
    ):
        if wanted and wanted != digest:
            raise ModelError(
                f"{model_path}: sha256 {digest[:12]}… does not match the {origin} "
                f"({wanted[:12]}…): the file is corrupt or not the expected model"
            )
    label_list = read_labels(_labels_path_for(model_path, manifest, labels))

    loaded = load_interpreter(model_path, backend, num_threads)
    interpreter = loaded.interpreter
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"{model_path}: expected one input and one output tensor, "
            f"found {len(inputs)} and {len(outputs)}"
        )
    inp, out = _tensor_info(inputs[0]), _tensor_info(outputs[0])
    _check_tensors(model_path, inp, out, len(label_list))
    if manifest.get("input", {}).get("shape") not in (None, list(inp.shape)):
        raise ModelError(
            f"{model_path}: input shape {list(inp.shape)} differs from the manifest's "
            f"{manifest['input']['shape']}"
        )
    return Model(
        path=model_path,
        sha256=digest,
        name=str(manifest.get("name") or model_path.stem),
        labels=label_list,
        loaded=loaded,
        input=inp,
        output=out,
        manifest=manifest,
    )
