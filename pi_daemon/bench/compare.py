"""Comparisons: the int8 model against its float32 twin, litert against tflite-runtime."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon import backends
from pi_daemon.bench.pipeline import ThreadRun, preload_real_input
from pi_daemon.bench.timing import bare_invoke
from pi_daemon.config import Config
from pi_daemon.errors import ModelError, PiDaemonError

FLOAT_TWIN = Path("deploy/models/efficientnet-lite0-fp32.tflite")  # relative to a checkout
WORKER = Path(__file__).with_name("worker.py")


def float_twin_path(model: Any, explicit: str) -> tuple[Path | None, str]:
    """The float32 twin of the bundled model: given, or in a checkout (this package's, or
    the current directory's when pi-daemon is installed from a wheel and run in one)."""
    if explicit:
        return Path(explicit), ""
    from pi_daemon.model import bundled_model_path

    if model.path.resolve() != bundled_model_path().resolve():
        return None, "no float32 twin known for a custom model (give --float-model PATH)"
    for checkout in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (checkout / FLOAT_TWIN).is_file():
            return checkout / FLOAT_TWIN, ""
    return None, f"{FLOAT_TWIN} is not here (only a checkout has it; give --float-model PATH)"


def compare_float(
    config: Config, base_dir: Path | None, int8: ThreadRun, explicit: str, frames: int
) -> dict[str, Any]:
    """The default int8 model against its float32 twin: same backend, threads, input."""
    from pi_daemon.classifier import Classifier
    from pi_daemon.images import still_frame
    from pi_daemon.model import load_model
    from pi_daemon.sources.files import bundled_demo_paths

    classifier, threads = int8.classifier, int8.report["threads"]
    path, reason = float_twin_path(classifier.model, explicit)
    if path is None:
        return {"status": "skipped", "reason": reason}
    try:
        model = load_model(path, backend=config.model.backend, num_threads=threads)
    except PiDaemonError as error:
        return {"status": "skipped", "reason": str(error)}
    twin = Classifier(model, top_k=1, crop=config.preprocess.crop)
    agree = 0
    photos = bundled_demo_paths()
    for number, photo in enumerate(photos):
        frame = still_frame(photo, number)
        agree += twin.classify(frame).top[0].index == classifier.classify(frame).top[0].index
    preload_real_input(twin)
    float_run = bare_invoke(twin.interpreter, frames, None)
    preload_real_input(classifier)
    int8_run = bare_invoke(classifier.interpreter, frames, None)
    return {
        "status": "ok",
        "threads": threads,
        "float32_model": str(path),
        "int8_ms": round(1e3 / int8_run.fps, 3),
        "float32_ms": round(1e3 / float_run.fps, 3),
        "float32_over_int8_time": round(int8_run.fps / float_run.fps, 3),
        "file_size_ratio": round(path.stat().st_size / classifier.model.path.stat().st_size, 2),
        "top1_agreement_demo_photos": f"{agree}/{len(photos)}",
    }


def _explain(error: str, numpy_version: str | None) -> str:
    if backends.is_numpy_abi_error(error):
        return f"unusable with numpy {numpy_version}: needs numpy<2"
    if "cannot import" in error or "ModuleNotFoundError" in error:
        return "not installed"
    return error


def _backend_in_process(
    name: str, model_path: Path, threads: int, tensor: np.ndarray, frames: int
) -> dict[str, Any]:
    try:
        loaded = backends.load_interpreter(model_path, name, threads)
    except ModelError as error:
        return {"error": _explain(str(error), np.__version__)}
    interpreter = loaded.interpreter
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    run = bare_invoke(interpreter, frames, None)
    return {"ms": 1e3 / run.fps, "version": loaded.version, "where": "in process"}


def _backend_in_worker(
    python: str, name: str, model_path: Path, threads: int, input_file: Path, frames: int
) -> dict[str, Any]:
    module, dist = backends.BACKENDS[name]
    args = {"module": module, "dist": dist, "model": str(model_path), "threads": threads}
    args.update({"input": str(input_file), "frames": frames})
    try:
        done = subprocess.run(
            [python, str(WORKER), json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        return {"error": f"{python}: worker failed: {error}"}
    if "error" in result:
        result["error"] = _explain(result["error"], result.get("numpy"))
        return result
    result["where"] = f"{python} (numpy {result.get('numpy')})"
    return result


def compare_backends(
    int8: ThreadRun, compare_python: str, frames: int, workdir: Path
) -> dict[str, Any]:
    """litert against tflite-runtime, same model, threads and input; each where it runs."""
    classifier, threads = int8.classifier, int8.report["threads"]
    model_path = classifier.model.path
    preload_real_input(classifier)
    tensor = classifier.input_copy()
    input_file = workdir / "input.npy"
    np.save(input_file, tensor)
    sides: dict[str, dict[str, Any]] = {}
    for name in backends.BACKENDS:
        side = _backend_in_process(name, model_path, threads, tensor, frames)
        if "error" in side and compare_python:
            worker = _backend_in_worker(
                compare_python, name, model_path, threads, input_file, frames
            )
            if "error" not in worker:
                side = worker
            else:
                side["error"] += f"; in {compare_python}: {worker['error']}"
        sides[name] = side
    out: dict[str, Any] = {"threads": threads, "litert": sides["litert"]}
    out["tflite_runtime"] = sides["tflite-runtime"]
    if any("error" in side for side in sides.values()):
        out["status"] = "skipped"
        out["reason"] = "; ".join(
            f"{name}: {side['error']}" for name, side in sides.items() if "error" in side
        )
    else:
        out["status"] = "ok"
        out["tflite_runtime_over_litert_time"] = round(
            sides["tflite-runtime"]["ms"] / sides["litert"]["ms"], 2
        )
    return out
