"""Loading and checking a model: file, manifest, labels, interpreter, tensor shapes.

Every way a model can be unusable ends here as a one-line `ModelError` naming the
file and the problem, before the daemon touches the camera. That includes models that
crash the runtime itself: unless its manifest vouches for the exact bytes (their sha256),
a model is first proven loadable in a throwaway child process (pi_daemon/trial.py), and
every model is run once on a zero input before it is handed out.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

import pi_daemon.models as models_package
from pi_daemon import fileio
from pi_daemon.backends import LoadedInterpreter, load_interpreter
from pi_daemon.errors import ModelError
from pi_daemon.manifest import Manifest, manifest_path_for, read_manifest
from pi_daemon.trial import prove_loadable, run_once

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "efficientnet-lite0-int8.tflite"
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier at bytes 4..8
# The unit's MemoryMax: no model larger than this can run under it.
MAX_MODEL_BYTES = 256 * fileio.MIB
# 21k ImageNet-21k class names are ~300 KiB.
MAX_LABELS_BYTES = 4 * fileio.MIB

# When a model is proven in a child process before it is used: "always" (a reload, which
# must never take the running service down), or "unvouched" (unless its manifest's sha256
# matches the file: start-up and classify).
ProveMode = Literal["always", "unvouched"]


def bundled_model_path() -> Path:
    """The default model shipped inside the package (works from a wheel too)."""
    # Package data sits beside the package's modules (wheels install unzipped); this also
    # spares importlib.resources' zipfile machinery at every start.
    return Path(models_package.__file__).parent / BUNDLED_MODEL_NAME


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
    manifest: Manifest = field(default_factory=Manifest)

    @property
    def interpreter(self) -> Any:
        return self.loaded.interpreter

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.input.shape[2], self.input.shape[1]

    @property
    def input_range(self) -> tuple[float, float]:
        low, high = self.manifest.input.range
        return float(low), float(high)

    @property
    def declared_activation(self) -> str | None:
        return self.manifest.output.activation


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_labels(labels_path: Path) -> list[str]:
    try:
        text = fileio.read_text(labels_path, MAX_LABELS_BYTES)
    except fileio.FileProblem as error:
        if error.missing:
            raise ModelError(f"{labels_path}: labels file not found") from None
        raise ModelError(f"{labels_path}: cannot read labels: {error.reason}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels or any(not label for label in labels):
        raise ModelError(f"{labels_path}: labels file has empty lines or no labels")
    return labels


def _labels_path_for(model_path: Path, manifest: Manifest, configured: str) -> Path:
    if configured:
        return Path(configured)
    if manifest.labels_file:
        return manifest_path_for(model_path).parent / manifest.labels_file
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
    prove: ProveMode = "unvouched",
) -> Model:
    """Load and check a model. Empty `path` means the bundled default model.

    `prove` says when the model is first loaded and run in a child process (ProveMode), so
    that a model which crashes the runtime is a ModelError instead of a dead process.
    """
    model_path = Path(path) if path else bundled_model_path()
    try:
        data = fileio.read_bytes(model_path, MAX_MODEL_BYTES)
    except fileio.FileProblem as error:
        if error.missing:
            raise ModelError(f"{model_path}: model file not found") from None
        raise ModelError(f"{model_path}: cannot read model: {error.reason}") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{model_path}: not a TFLite model (no TFL3 flatbuffer identifier)")

    digest = sha256_of(data)
    del data
    manifest = read_manifest(model_path)
    for origin, wanted in (
        ("config model.sha256", expected_sha256),
        ("manifest", manifest.sha256 if manifest else ""),
    ):
        if wanted and wanted != digest:
            raise ModelError(
                f"{model_path}: sha256 {digest[:12]}… does not match the {origin} "
                f"({wanted[:12]}…): the file is corrupt or not the expected model"
            )
    manifest = manifest or Manifest()
    label_list = read_labels(_labels_path_for(model_path, manifest, labels))

    # The manifest's sha256 was checked above: when it is there, it vouches for these bytes.
    if prove == "always" or not manifest.sha256:
        prove_loadable(model_path, backend, num_threads)
    loaded = load_interpreter(model_path, backend, num_threads)
    interpreter = loaded.interpreter
    try:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) == 1 and len(outputs) == 1:
            inp, out = _tensor_info(inputs[0]), _tensor_info(outputs[0])
    except Exception as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ModelError(f"{model_path}: cannot read its tensors: {message}") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"{model_path}: expected one input and one output tensor, "
            f"found {len(inputs)} and {len(outputs)}"
        )
    _check_tensors(model_path, inp, out, len(label_list))
    if manifest.input.shape not in (None, list(inp.shape)):
        raise ModelError(
            f"{model_path}: input shape {list(inp.shape)} differs from the manifest's "
            f"{manifest.input.shape}"
        )
    run_once(interpreter, model_path)
    return Model(
        path=model_path,
        sha256=digest,
        name=manifest.name or model_path.stem,
        labels=label_list,
        loaded=loaded,
        input=inp,
        output=out,
        manifest=manifest,
    )
