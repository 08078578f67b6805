"""Interpreter backends: ai-edge-litert (default) and tflite-runtime.

Both expose the same `Interpreter` API, so this module only decides which one to
import and turns their failures into one-line `ModelError`s. The imports are lazy
so the package imports on machines that have neither.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pi_daemon.errors import ModelError
from pi_daemon.native_stderr import CapturedStderr

log = logging.getLogger(__name__)

# backend name -> (module holding Interpreter, distribution name for its version)
BACKENDS: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}
AUTO_ORDER = ("litert", "tflite-runtime")
# tflite-runtime's last release (2.14.0, 2023) has wheels for CPython 3.8 to 3.11 only, so
# it cannot be installed on 3.13 (Debian 13 / Raspberry Pi OS Trixie), nor on 3.12.
TFLITE_RUNTIME_NEWEST_PYTHON = (3, 11)


@dataclass(frozen=True)
class LoadedInterpreter:
    interpreter: Any
    backend: str
    version: str


class BackendUnavailable(Exception):
    """A backend cannot be imported or cannot run here (e.g. numpy mismatch)."""


def _distribution_version(backend: str) -> str:
    """The backend's version: its package's own `__version__` (both have one), else the
    installed distribution's metadata (importlib.metadata costs ~2 MiB of RSS to import,
    so only as a fallback)."""
    module_name, distribution = BACKENDS[backend]
    package = importlib.import_module(module_name.partition(".")[0])
    found = getattr(package, "__version__", None)
    if isinstance(found, str) and found:
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def no_wheel_reason(backend: str, python: tuple[int, int] | None = None) -> str:
    """Why `backend` can never be installed on this Python ("" when it can)."""
    major, minor = python or sys.version_info[:2]
    if backend == "tflite-runtime" and (major, minor) > TFLITE_RUNTIME_NEWEST_PYTHON:
        return (
            f"tflite-runtime has no wheel for Python {major}.{minor} (its last release, "
            '2.14.0, stops at 3.11): use backend = "litert" or "auto"'
        )
    return ""


def auto_order(python: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The backends `auto` tries on this Python, in order."""
    return tuple(name for name in AUTO_ORDER if not no_wheel_reason(name, python))


def _interpreter_class(backend: str) -> type:
    module_name, _ = BACKENDS[backend]
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or numpy ABI errors raised at import
        raise BackendUnavailable(f"{backend}: cannot import {module_name}: {error}") from None
    return module.Interpreter


def import_backend(backend: str) -> None:
    """Import what `load_interpreter(..., backend)` would use first, if it imports here
    (so a forked trial process starts with it loaded)."""
    for name in AUTO_ORDER if backend == "auto" else (backend,):
        try:
            _interpreter_class(name)
        except BackendUnavailable:
            continue
        return


def available_backends() -> list[str]:
    """Backends whose module imports here (it may still fail to run a model)."""
    found = []
    for name in auto_order():
        try:
            _interpreter_class(name)
        except BackendUnavailable:
            continue
        found.append(name)
    return found


def is_numpy_abi_error(error: BaseException | str) -> bool:
    """True for the errors a backend built against NumPy 1.x raises under NumPy 2."""
    text = str(error)
    return "NumPy 1.x" in text or "_ARRAY_API" in text or "numpy.core.multiarray" in text


def load_interpreter(model_path: Path, backend: str, num_threads: int) -> LoadedInterpreter:
    """Create and allocate an interpreter for `model_path` with the chosen backend.

    `backend` is "auto", "litert" or "tflite-runtime". With "auto" the first backend
    that imports and runs wins; the log says which. A backend that has no wheel for this
    Python is never tried, and naming it is a config error.
    """
    if backend != "auto" and no_wheel_reason(backend):
        raise ModelError(f"model.backend = {backend!r}: {no_wheel_reason(backend)}")
    names = auto_order() if backend == "auto" else (backend,)
    reasons = []
    for name in names:
        try:
            cls = _interpreter_class(name)
        except BackendUnavailable as error:
            reasons.append(str(error))
            continue
        said: list[str] = []
        try:
            # The runtime announces its XNNPACK delegate on fd 2 from C++: to the debug log.
            with CapturedStderr(log, name) as said:
                interpreter = cls(model_path=str(model_path), num_threads=num_threads)
                interpreter.allocate_tensors()
        except (ImportError, AttributeError) as error:
            reasons.append(f"{name}: cannot run here: {error}")
            continue
        except Exception as error:
            if is_numpy_abi_error(error):
                reasons.append(f"{name}: needs numpy<2 ({error})")
                continue
            message = " ".join(str(error).split()) or " ".join(said[-1:]) or type(error).__name__
            raise ModelError(f"{model_path}: the interpreter cannot load it: {message}") from None
        version = _distribution_version(name)
        return LoadedInterpreter(interpreter, name, version)
    raise ModelError("no usable TFLite backend: " + "; ".join(reasons))
