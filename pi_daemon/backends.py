"""Interpreter backends: ai-edge-litert (default) and tflite-runtime.

Both expose the same `Interpreter` API, so this module only decides which one to
import and turns their failures into one-line `ModelError`s. The imports are lazy
so the package imports on machines that have neither.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pi_daemon.errors import ModelError

log = logging.getLogger(__name__)

# backend name -> (module holding Interpreter, distribution name for its version)
_BACKENDS: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}
AUTO_ORDER = ("litert", "tflite-runtime")


@dataclass(frozen=True)
class LoadedInterpreter:
    interpreter: Any
    backend: str
    version: str


class BackendUnavailable(Exception):
    """A backend cannot be imported or cannot run here (e.g. numpy mismatch)."""


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _interpreter_class(backend: str) -> type:
    module_name, _ = _BACKENDS[backend]
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or numpy ABI errors raised at import
        raise BackendUnavailable(f"{backend}: cannot import {module_name}: {error}") from None
    return module.Interpreter


def available_backends() -> list[str]:
    """Backends whose module imports here (it may still fail to run a model)."""
    found = []
    for name in AUTO_ORDER:
        try:
            _interpreter_class(name)
        except BackendUnavailable:
            continue
        found.append(name)
    return found


def _is_numpy_abi_error(error: BaseException) -> bool:
    text = str(error)
    return "NumPy 1.x" in text or "_ARRAY_API" in text or "numpy.core.multiarray" in text


def load_interpreter(model_path: Path, backend: str, num_threads: int) -> LoadedInterpreter:
    """Create and allocate an interpreter for `model_path` with the chosen backend.

    `backend` is "auto", "litert" or "tflite-runtime". With "auto" the first backend
    that imports and runs wins; the log says which.
    """
    names = AUTO_ORDER if backend == "auto" else (backend,)
    reasons = []
    for name in names:
        try:
            cls = _interpreter_class(name)
        except BackendUnavailable as error:
            reasons.append(str(error))
            continue
        try:
            interpreter = cls(model_path=str(model_path), num_threads=num_threads)
            interpreter.allocate_tensors()
        except (ImportError, AttributeError) as error:
            reasons.append(f"{name}: cannot run here: {error}")
            continue
        except Exception as error:
            if _is_numpy_abi_error(error):
                reasons.append(f"{name}: needs numpy<2 ({error})")
                continue
            message = " ".join(str(error).split()) or type(error).__name__
            raise ModelError(f"{model_path}: the interpreter cannot load it: {message}") from None
        version = _distribution_version(_BACKENDS[name][1])
        return LoadedInterpreter(interpreter, name, version)
    raise ModelError("no usable TFLite backend: " + "; ".join(reasons))
