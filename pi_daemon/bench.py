"""`pi-daemon bench`: how fast the pipeline runs on this machine and where the time goes.

Everything is measured in one run, on one machine, with one model and one thread count at
a time, so the figures can be compared with each other even when the machine is noisy:

* **bare** - a tight `invoke()` loop on a preloaded, real input: the ceiling.
* **pipeline** - the real `Daemon` loop: the files source replaying real frames (the
  bundled demo photos, from memory or as an MJPG video), the capture thread, preprocessing,
  invoke, top-k and every configured sink (always including a JSONL events file), on the
  same interpreter.
* **ratio** = pipeline fps / bare fps. Bare and pipeline rounds alternate and the ratio is
  the median over the rounds, each pipeline round against the mean of the bare rounds on
  either side, so a load change on a shared machine shows up as a spread between rounds,
  not as a wrong ratio.

Then a real `pi-daemon run` subprocess gives the time from process start to the first
result and the daemon's peak and steady RSS, and the comparisons (int8 against its float32
twin, litert against tflite-runtime) are printed as ratios.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon import __version__
from pi_daemon.config import Config, replace, to_toml
from pi_daemon.errors import PiDaemonError
from pi_daemon.results import Result, Summary
from pi_daemon.sinks.base import Sink

log = logging.getLogger(__name__)

TARGET_RATIO = 0.95
ROUNDS = 5  # bare/pipeline alternations per thread count (median of their ratios)
STAGES = ("capture_wait", "preprocess", "invoke", "postprocess", "sinks")
DEFAULT_FRAMES = 500
# Each demo photo is held this many frames in the replay, as a camera watching a scene
# would: the log sink then logs label changes at a realistic rate, not every frame.
HOLD_FRAMES = 30
FLOAT_TWIN = Path("deploy/models/efficientnet-lite0-fp32.tflite")  # relative to a checkout
CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
MIB = 1024 * 1024


# -- small helpers -------------------------------------------------------------------------------


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    """p50, p95 and max of an array of seconds, in milliseconds."""
    if seconds.size == 0:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    p50, p95 = np.percentile(seconds, (50, 95))
    return {
        "p50": round(float(p50) * 1e3, 3),
        "p95": round(float(p95) * 1e3, 3),
        "max": round(float(seconds.max()) * 1e3, 3),
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


# -- environment ---------------------------------------------------------------------------------


def blas_info() -> dict[str, Any]:
    """The BLAS numpy really loaded (threadpoolctl), else what numpy was built against."""
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return {
                    "source": "threadpoolctl",
                    "name": pool.get("internal_api"),
                    "version": pool.get("version"),
                    "threads": pool.get("num_threads"),
                    "threading_layer": pool.get("threading_layer"),
                    "architecture": pool.get("architecture"),
                    "library": pool.get("filepath"),
                }
    except ImportError:
        pass
    try:  # numpy >= 1.26 describes its build as a dict
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[func-returns-value]
        return {
            "source": "numpy.show_config",
            "name": blas.get("name"),
            "version": blas.get("version"),
            "threads": None,
            "library": blas.get("lib directory"),
        }
    except Exception:
        pass
    try:  # older numpy (e.g. Debian's python3-numpy 1.24)
        info = np.__config__.get_info("blas_opt")  # type: ignore[attr-defined]
        return {"source": "numpy.__config__", "name": ",".join(info.get("libraries", []))}
    except Exception:
        return {"source": "unknown", "name": "n/a"}


def cpu_model() -> str:
    board = _read(Path("/proc/device-tree/model"))  # "Raspberry Pi 4 Model B Rev 1.5"
    text = _read(Path("/proc/cpuinfo")) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name") or {"0xd08": "Cortex-A72", "0xd03": "Cortex-A53"}.get(
        fields.get("CPU part", ""), fields.get("CPU part", "")
    )
    return " / ".join(part for part in (board, cpu) if part) or platform.processor() or "n/a"


def cpu_temp_c() -> float | None:
    text = _read(THERMAL)
    try:
        return int(text) / 1000.0 if text else None
    except ValueError:
        return None


def environment(model: Any) -> dict[str, Any]:
    import cv2

    governor = _read(CPUFREQ / "scaling_governor") or "n/a"
    freqs = {}
    for name in ("scaling_cur_freq", "scaling_max_freq"):
        text = _read(CPUFREQ / name)
        freqs[name] = f"{int(text) / 1000:.0f} MHz" if text and text.isdigit() else "n/a"
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "governor": governor,
        "cur_freq": freqs["scaling_cur_freq"],
        "max_freq": freqs["scaling_max_freq"],
        "cpu_temp_c": cpu_temp_c(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "backend": model.loaded.backend,
        "backend_version": model.loaded.version,
    }


# -- the replay ----------------------------------------------------------------------------------


def write_replay(directory: Path, size: tuple[int, int], kind: str) -> list[Path]:
    """Real frames from the bundled demo photos, centre-cropped to `size`'s aspect.

    `images`: PNG files that the files source decodes once and replays from memory, as a
    camera hands over buffers already in RAM. The default size is the model's input, which
    is what the Pi camera's lores stream delivers (the ISP scales for free).
    `video`: an MJPG video, so every frame is also decoded on the capture thread, as with
    a USB camera or a stream; `--replay-size 640x480` makes that realistic.
    Each photo is held for several frames, like a camera watching a scene, so the log sink
    logs label changes at a realistic rate rather than on every frame.
    """
    import cv2

    from pi_daemon.preprocess import center_crop_box
    from pi_daemon.sources.files import bundled_demo_paths, read_image

    width, height = size
    # Images are replayed from memory: keep the decoded set around 16 MiB at most.
    hold = max(1, min(HOLD_FRAMES, (16 * MIB) // (width * height * 3 * 3)))
    pictures = []
    for photo in bundled_demo_paths():
        image = read_image(photo)
        x, y, w, h = center_crop_box(image.shape[1], image.shape[0], width, height)
        pictures.append(
            cv2.resize(image[y : y + h, x : x + w], (width, height), interpolation=cv2.INTER_AREA)
        )
    if kind == "images":
        paths = []
        for number, picture in enumerate(pictures):
            path = directory / f"replay-{number}-{width}x{height}.png"
            cv2.imwrite(str(path), picture)
            paths += [path] * hold
        return paths
    path = directory / f"replay-{width}x{height}.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
    if not writer.isOpened():
        raise PiDaemonError(f"{path}: OpenCV cannot write an MJPG video here")
    try:
        for picture in pictures:
            for _ in range(HOLD_FRAMES):
                writer.write(picture)
    finally:
        writer.release()
    return [path]


# -- bare interpreter ----------------------------------------------------------------------------


def bare_invoke(interpreter: Any, frames: int, seconds: float | None) -> dict[str, Any]:
    """Tight `invoke()` loop on whatever the input tensor holds. Warm-up excluded."""
    for _ in range(10):
        interpreter.invoke()
    limit = frames if seconds is None else 1 << 22
    times = np.empty(min(limit, 1 << 22), np.float64)
    invoke, clock = interpreter.invoke, time.perf_counter
    started = clock()
    deadline = started + seconds if seconds is not None else float("inf")
    count = 0
    while count < limit:
        t0 = clock()
        invoke()
        t1 = clock()
        times[count] = t1 - t0
        count += 1
        if t1 >= deadline:
            break
    elapsed = clock() - started
    return {
        "frames": count,
        "fps": count / elapsed,
        "elapsed": elapsed,
        "times": times[:count],
        "invoke_ms": percentiles_ms(times[:count]),
    }


# -- the real pipeline ---------------------------------------------------------------------------


class StageRecorder(Sink):
    """Wraps the configured sinks on the dispatcher thread: times them, records every stage.

    Recording goes into preallocated arrays, so the bench adds no allocation per frame of
    its own to what it measures.
    """

    name = "bench-recorder"

    def __init__(self, sinks: list[Sink], capacity: int) -> None:
        self.sinks = sinks
        self.capacity = capacity
        self.stages = np.zeros((capacity, len(STAGES)), np.float64)
        self.done_at = np.zeros(capacity, np.float64)
        self.count = 0

    def on_result(self, result: Result) -> None:
        started = time.perf_counter()
        for sink in self.sinks:
            sink.on_result(result)
        spent = time.perf_counter() - started
        if self.count < self.capacity:
            t = result.times
            row = self.stages[self.count]
            row[0], row[1], row[2], row[3], row[4] = (
                t.capture_wait,
                t.preprocess,
                t.invoke,
                t.postprocess,
                spent,
            )
            self.done_at[self.count] = result.monotonic
        self.count += 1

    def on_summary(self, summary: Summary) -> None:
        for sink in self.sinks:
            sink.on_summary(summary)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def bench_config(config: Config, replay: list[Path], events: Path) -> Config:
    """The user's config with the replay as source and the events file in the work dir."""
    paths = [str(path) for path in replay]
    files = replace(config.files, paths=paths, loop=True, fps=0.0)
    output = replace(config.output, events_file=str(events))
    return replace(config, source="files", files=files, output=output)


@dataclass
class PipelineRun:
    """Raw figures of one pipeline round, after its warm-up."""

    fps: float
    stages: np.ndarray  # (frames, len(STAGES)) seconds
    periods: np.ndarray  # seconds between consecutive results
    dropped_frames: int
    dropped_events: int


def measure_pipeline(
    config: Config, base_dir: Path | None, classifier: Any, frames: int, seconds: float | None
) -> PipelineRun:
    """Run the real Daemon loop over the replay; stage times come from its results."""
    from pi_daemon.app import build_sinks, loop_settings
    from pi_daemon.daemon import Daemon
    from pi_daemon.sinks.base import SinkDispatcher
    from pi_daemon.sources import create_source

    warmup = max(3, min(30, frames // 10))
    capacity = warmup + frames if seconds is None else 1 << 18
    recorder = StageRecorder(build_sinks(config, base_dir) + _metrics_sink(config), capacity)
    dispatcher = SinkDispatcher([recorder])
    source = create_source(config, classifier.model.input_size, base_dir)
    source.open()
    daemon = Daemon(classifier, source, dispatcher, loop_settings(config))
    timer = None
    if seconds is not None:
        # Roughly half a second of warm-up on top of the timed window.
        timer = threading.Timer(seconds + 0.5, daemon.stop.set)
        timer.start()
    try:
        daemon.run(max_frames=None if seconds is not None else warmup + frames)
    finally:
        if timer is not None:
            timer.cancel()
    n = min(recorder.count, capacity)
    if seconds is not None:
        done = recorder.done_at[:n]
        warmup = int(np.searchsorted(done, done[0] + 0.5)) if n else 0
    if n <= warmup + 2:
        raise PiDaemonError(f"bench: the pipeline produced only {n} results")
    done = recorder.done_at[warmup:n]
    return PipelineRun(
        fps=(len(done) - 1) / float(done[-1] - done[0]),
        stages=recorder.stages[warmup:n].copy(),
        periods=np.diff(done),
        dropped_frames=daemon.slot.dropped,
        dropped_events=dispatcher.dropped_events,
    )


def summarise_pipeline(runs: list[PipelineRun]) -> dict[str, Any]:
    stages = np.concatenate([r.stages for r in runs])
    periods = np.concatenate([r.periods for r in runs])
    # Per result: the period minus the timed loop stages of the frame that ended it.
    loop_stages = np.concatenate([r.stages[1:, :4].sum(axis=1) for r in runs])
    return {
        "frames": int(stages.shape[0]),
        "fps": float(len(periods) / periods.sum()),
        "dropped_frames": sum(r.dropped_frames for r in runs),
        "dropped_events": sum(r.dropped_events for r in runs),
        "stages_ms": {name: percentiles_ms(stages[:, i]) for i, name in enumerate(STAGES)},
        "stage_mean_ms": {name: float(stages[:, i].mean()) * 1e3 for i, name in enumerate(STAGES)},
        # What the loop spends outside the timed stages: slot handoff, Result, submit.
        "loop_other_mean_ms": max(0.0, float((periods - loop_stages).mean()) * 1e3),
    }


def _metrics_sink(config: Config) -> list[Sink]:
    """The metrics sink when configured, on a private registry and never served here."""
    section = getattr(config, "metrics", None)
    if section is None or not section.enabled:
        return []
    try:
        from pi_daemon.metrics import Metrics
    except ImportError:
        return []
    return [Metrics.without_server().sink]


def explain_overhead(bare: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    """Split (pipeline period - bare period) into the stages that could account for it."""
    per_frame = 1e3 / pipe["fps"] - 1e3 / bare["fps"]
    means = pipe["stage_mean_ms"]
    parts = {
        "capture_wait": means["capture_wait"],
        "preprocess": means["preprocess"],
        "postprocess": means["postprocess"],
        # invoke slower than bare: other threads (capture, sinks) competing for the cores.
        "invoke_contention": max(0.0, means["invoke"] - bare["invoke_mean_ms"]),
        "loop_other": pipe["loop_other_mean_ms"],
    }
    largest = max(parts, key=lambda k: parts[k])
    return {
        "per_frame_ms": round(per_frame, 4),
        "by_stage_ms": {k: round(v, 4) for k, v in parts.items()},
        "largest": largest,
    }


def measure_threads(
    config: Config, base_dir: Path | None, threads: int, frames: int, seconds: float | None
) -> dict[str, Any]:
    """Bare and pipeline rounds, alternated: one model, one interpreter, one thread count.

    Alternating (bare, pipeline, bare, ..., bare) and taking the median of the per-round
    ratios, each against the mean of the bare rounds either side, keeps a load change on a
    shared machine from masquerading as pipeline overhead.
    """
    from pi_daemon.app import build_classifier

    config = replace(config, model=replace(config.model, num_threads=threads))
    classifier = build_classifier(config, base_dir)
    per_frames = max(10, frames // ROUNDS)
    per_seconds = seconds / ROUNDS if seconds is not None else None
    bares, pipes = [], []
    for _ in range(ROUNDS):
        _preload_real_input(classifier)
        bares.append(bare_invoke(classifier.interpreter, per_frames, per_seconds))
        pipes.append(measure_pipeline(config, base_dir, classifier, per_frames, per_seconds))
    _preload_real_input(classifier)
    bares.append(bare_invoke(classifier.interpreter, per_frames, per_seconds))
    ratios = [
        pipe.fps / ((bares[i]["fps"] + bares[i + 1]["fps"]) / 2) for i, pipe in enumerate(pipes)
    ]
    invoke_times = np.concatenate([b["times"] for b in bares])
    bare_frames = sum(b["frames"] for b in bares)
    bare = {
        "fps": bare_frames / sum(b["elapsed"] for b in bares),
        "fps_rounds": [round(b["fps"], 1) for b in bares],
        "frames": bare_frames,
        "invoke_ms": percentiles_ms(invoke_times),
        "invoke_mean_ms": float(invoke_times.mean()) * 1e3,
    }
    pipe = summarise_pipeline(pipes)
    pipe["fps_rounds"] = [round(p.fps, 1) for p in pipes]
    ratio = float(statistics.median(ratios))
    return {
        "threads": threads,
        "bare": bare,
        "pipeline": pipe,
        "ratio": round(ratio, 4),
        "ratio_rounds": [round(r, 3) for r in ratios],
        "meets_target": ratio >= TARGET_RATIO,
        "overhead": explain_overhead(bare, pipe),
        "_classifier": classifier,
    }


def _preload_real_input(classifier: Any) -> None:
    """A real photo in the input tensor, so bare invoke sees real activations."""
    from pi_daemon.preprocess import Frame
    from pi_daemon.sources.files import bundled_demo_paths, read_image

    image = read_image(bundled_demo_paths()[0])
    classifier.write_input(Frame(image, "BGR", 0, time.time(), time.monotonic()))


# -- a real `pi-daemon run` process ----------------------------------------------------------------


def measure_process(config: Config, workdir: Path, frames: int) -> dict[str, Any]:
    """Start `pi-daemon run --max-frames N`: time to first result, peak and steady RSS."""
    import psutil

    metrics = getattr(config, "metrics", None)
    if metrics is not None and metrics.enabled:
        # Never collide with a daemon already serving on the configured port.
        config = replace(config, metrics=replace(metrics, port=0))
    events = workdir / "process-events.jsonl"
    config = replace(config, output=replace(config.output, events_file=str(events)))
    config_path = workdir / "process.toml"
    config_path.write_text(to_toml(config), encoding="utf-8")
    command = [sys.executable, "-m", "pi_daemon", "run", "--config", str(config_path)]
    command += ["--max-frames", str(frames)]
    started = time.monotonic()
    with open(workdir / "process.log", "wb") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    process = psutil.Process(child.pid)
    samples: list[tuple[float, int]] = []
    first_result: float | None = None
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):  # it may exit between poll and here
            samples.append((time.monotonic(), int(process.memory_info().rss)))
        # VmHWM is the kernel's own peak RSS for the process, reset at exec (unlike
        # wait4's ru_maxrss, which counts the bench's pages the child had before exec).
        peak = max(peak, _vm_hwm_bytes(child.pid))
        if first_result is None:
            first_result = _first_result_monotonic(events)
        time.sleep(0.05)
    code = child.returncode
    if first_result is None:
        first_result = _first_result_monotonic(events)
    if code != 0 or first_result is None:
        tail = (workdir / "process.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise PiDaemonError(f"bench: `pi-daemon run` exited {code}: {' | '.join(tail)}")
    steady = [rss for t, rss in samples if t >= first_result]
    steady = steady[len(steady) // 2 :] or [rss for _, rss in samples[-3:]]
    peak = max(peak, max((rss for _, rss in samples), default=0))
    return {
        "frames": frames,
        "time_to_first_result_s": round(first_result - started, 3),
        "peak_rss_mib": round(peak / MIB, 1),
        "steady_rss_mib": round(statistics.median(steady) / MIB, 1) if steady else None,
    }


def _vm_hwm_bytes(pid: int) -> int:
    text = _read(Path(f"/proc/{pid}/status")) or ""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _first_result_monotonic(events: Path) -> float | None:
    try:
        with open(events, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                if record.get("type") == "result":
                    # CLOCK_MONOTONIC is system-wide on Linux: comparable across processes.
                    return float(record["monotonic"])
    except (OSError, ValueError):
        return None
    return None


# -- comparisons -----------------------------------------------------------------------------------


def float_twin_path(model: Any, explicit: str) -> tuple[Path | None, str]:
    if explicit:
        return Path(explicit), ""
    from pi_daemon.model import bundled_model_path

    if model.path.resolve() != bundled_model_path().resolve():
        return None, "no float32 twin known for a custom model (give --float-model PATH)"
    checkout = Path(__file__).resolve().parent.parent
    candidate = checkout / FLOAT_TWIN
    if not candidate.is_file():
        return None, f"{FLOAT_TWIN} is not here (an installed wheel does not ship it)"
    return candidate, ""


def compare_float(
    config: Config, base_dir: Path | None, int8: dict[str, Any], explicit: str, frames: int
) -> dict[str, Any]:
    """The default int8 model against its float32 twin: same backend, threads, input."""
    from pi_daemon.classifier import Classifier
    from pi_daemon.model import load_model
    from pi_daemon.preprocess import Frame
    from pi_daemon.sources.files import bundled_demo_paths, read_image

    classifier = int8["_classifier"]
    path, reason = float_twin_path(classifier.model, explicit)
    if path is None:
        return {"status": "skipped", "reason": reason}
    try:
        model = load_model(path, backend=config.model.backend, num_threads=int8["threads"])
    except PiDaemonError as error:
        return {"status": "skipped", "reason": str(error)}
    twin = Classifier(model, top_k=1, crop=config.preprocess.crop)
    agree = 0
    photos = bundled_demo_paths()
    for number, photo in enumerate(photos):
        frame = Frame(read_image(photo), "BGR", number, time.time(), time.monotonic())
        agree += twin.classify(frame).top[0].index == classifier.classify(frame).top[0].index
    _preload_real_input(twin)
    float_run = bare_invoke(twin.interpreter, frames, None)
    _preload_real_input(classifier)
    int8_run = bare_invoke(classifier.interpreter, frames, None)
    return {
        "status": "ok",
        "threads": int8["threads"],
        "float32_model": str(path),
        "int8_ms": round(1e3 / int8_run["fps"], 3),
        "float32_ms": round(1e3 / float_run["fps"], 3),
        "float32_over_int8_time": round(int8_run["fps"] / float_run["fps"], 3),
        "file_size_ratio": round(path.stat().st_size / classifier.model.path.stat().st_size, 2),
        "top1_agreement_demo_photos": f"{agree}/{len(photos)}",
    }


# Runs in another interpreter (`--compare-python`), e.g. a venv with numpy<2 for
# tflite-runtime: only the standard library, numpy and the backend module are imported.
WORKER_SOURCE = r"""
import importlib, json, sys, time
args = json.loads(sys.argv[1])
out = {}
try:
    import numpy as np
    out["numpy"] = np.__version__
    module = importlib.import_module(args["module"])
    interp = module.Interpreter(model_path=args["model"], num_threads=args["threads"])
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], np.load(args["input"]).astype(detail["dtype"]))
    for _ in range(5):
        interp.invoke()
    started = time.perf_counter()
    for _ in range(args["frames"]):
        interp.invoke()
    out["ms"] = (time.perf_counter() - started) / args["frames"] * 1e3
    try:
        from importlib.metadata import version
        out["version"] = version(args["dist"])
    except Exception:
        out["version"] = "unknown"
except Exception as error:
    out["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
print(json.dumps(out))
"""

BACKEND_MODULES = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}


def _backend_in_process(
    name: str, model_path: Path, threads: int, tensor: np.ndarray, frames: int
) -> dict[str, Any]:
    from pi_daemon.backends import load_interpreter
    from pi_daemon.errors import ModelError

    try:
        loaded = load_interpreter(model_path, name, threads)
    except ModelError as error:
        text = str(error)
        if "numpy<2" in text or "NumPy 1.x" in text:
            return {"error": f"unusable with numpy {np.__version__}: needs numpy<2"}
        if "cannot import" in text:
            return {"error": "not installed"}
        return {"error": text}
    interp = loaded.interpreter
    interp.set_tensor(interp.get_input_details()[0]["index"], tensor)
    run = bare_invoke(interp, frames, None)
    return {"ms": 1e3 / run["fps"], "version": loaded.version, "where": "in process"}


def _backend_in_worker(
    python: str, name: str, model_path: Path, threads: int, input_file: Path, frames: int
) -> dict[str, Any]:
    module, dist = BACKEND_MODULES[name]
    args = {"module": module, "dist": dist, "model": str(model_path), "threads": threads}
    args.update({"input": str(input_file), "frames": frames})
    try:
        done = subprocess.run(
            [python, "-c", WORKER_SOURCE, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        return {"error": f"{python}: worker failed: {error}"}
    if "error" in result:
        if "NumPy 1.x" in result["error"] or "_ARRAY_API" in result["error"]:
            result["error"] = f"unusable with numpy {result.get('numpy')}: needs numpy<2"
        elif "ModuleNotFoundError" in result["error"]:
            result["error"] = "not installed"
        return result
    result["where"] = f"{python} (numpy {result.get('numpy')})"
    return result


def compare_backends(
    int8: dict[str, Any], compare_python: str, frames: int, workdir: Path
) -> dict[str, Any]:
    """litert against tflite-runtime, same model, threads and input; each where it runs."""
    classifier = int8["_classifier"]
    model_path, threads = classifier.model.path, int8["threads"]
    tensor = np.array(classifier._input_tensor(), copy=True)
    input_file = workdir / "input.npy"
    np.save(input_file, tensor)
    sides: dict[str, dict[str, Any]] = {}
    for name in BACKEND_MODULES:
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


# -- the whole bench -------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    threads: list[int]
    frames: int = DEFAULT_FRAMES
    seconds: float | None = None
    model: str = ""
    float_model: str = ""
    compare_python: str = ""
    replay_size: tuple[int, int] | None = None
    replay: str = "images"


def run_bench(config: Config, config_path: Path | None, options: BenchOptions) -> dict[str, Any]:
    """Measure everything; return the report as a JSON-ready dict."""
    from pi_daemon.app import load_configured_model

    base_dir = config_path.parent if config_path else None
    if options.model:
        model_path = str(Path(options.model).resolve())
        update = {"path": model_path, "sha256": "", "labels": ""}
        config = replace(config, model=replace(config.model, **update))
    elif config.model.path and base_dir is not None:
        # Absolute paths, so the `pi-daemon run` subprocess config works from anywhere.
        update = {"path": str((base_dir / config.model.path).resolve())}
        if config.model.labels:
            update["labels"] = str((base_dir / config.model.labels).resolve())
        config = replace(config, model=replace(config.model, **update))
    probe = load_configured_model(config, base_dir)
    threads = sorted(set(options.threads or [1, config.model.num_threads]))
    started_temp = cpu_temp_c()
    report: dict[str, Any] = {
        "pi_daemon": __version__,
        "target_ratio": TARGET_RATIO,
        "model": {
            "name": probe.name,
            "path": str(probe.path),
            "sha256": probe.sha256,
            "size_bytes": probe.path.stat().st_size,
            "input": [*probe.input.shape[1:], str(probe.input.dtype)],
            "backend": probe.loaded.backend,
            "backend_version": probe.loaded.version,
        },
        "environment": environment(probe),
    }
    del probe
    with tempfile.TemporaryDirectory(prefix="pi-daemon-bench-") as tmp:
        workdir = Path(tmp)
        size = options.replay_size or tuple(
            int(v) for v in report["model"]["input"][1::-1]
        )  # (width, height)
        replay = write_replay(workdir, size, options.replay)  # type: ignore[arg-type]
        report["replay"] = {
            "kind": options.replay,
            "what": "bundled demo photos"
            + (" as an MJPG video" if options.replay == "video" else ", decoded once"),
            "size": list(size),
            "frames": len(replay) if options.replay == "images" else 3 * HOLD_FRAMES,
        }
        config = bench_config(config, replay, workdir / "events.jsonl")
        runs = []
        for count in threads:
            runs.append(measure_threads(config, base_dir, count, options.frames, options.seconds))
        chosen = next((r for r in runs if r["threads"] == config.model.num_threads), runs[-1])
        small = max(20, options.frames // 5)
        report["compare"] = {
            "int8_vs_float32": compare_float(config, base_dir, chosen, options.float_model, small),
            "litert_vs_tflite_runtime": compare_backends(
                chosen, options.compare_python, max(10, small // 2), workdir
            ),
        }
        for run in runs:
            run.pop("_classifier")
        report["runs"] = runs
        # The process replays a video: decoding is cheap at this size, and unlike the
        # in-memory image set it adds no replay frames to the RSS being measured.
        video = write_replay(workdir, size, "video")  # type: ignore[arg-type]
        process_config = bench_config(config, video, workdir / "process-events.jsonl")
        report["process"] = measure_process(process_config, workdir, max(200, options.frames))
    report["process"]["bench_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    report["environment"]["cpu_temp_c_end"] = cpu_temp_c()
    report["environment"]["cpu_temp_c"] = started_temp
    return report


# -- presentation ----------------------------------------------------------------------------------


def _fmt_stage(stats: dict[str, float]) -> str:
    return f"{stats['p50']:8.3f} {stats['p95']:8.3f} {stats['max']:8.3f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    env, model = report["environment"], report["model"]
    blas = env["blas"]
    lines = [
        f"pi-daemon {report['pi_daemon']} bench: {model['name']} "
        f"(sha256 {model['sha256'][:12]}…, input {model['input']}) "
        f"on {model['backend']} {model['backend_version']}",
        f"machine  {env['machine']}, {env['cpu']}, {env['cores']} cores "
        f"({env['usable_cores']} usable), governor {env['governor']}, "
        f"freq {env['cur_freq']} (max {env['max_freq']}), "
        f"SoC temp {env['cpu_temp_c'] if env['cpu_temp_c'] is not None else 'n/a'} °C",
        f"software python {env['python']}, numpy {env['numpy']} with BLAS "
        f"{blas.get('name')} {blas.get('version') or ''} "
        f"({blas.get('threads') or '?'} threads, via {blas['source']}), "
        f"opencv {env['opencv']} ({env['opencv_threads']} threads)",
        f"replay   {report['replay']['what']} at {report['replay']['size'][0]}x"
        f"{report['replay']['size'][1]}, through the files source and the capture thread",
        "",
        f"{'threads':>7} {'bare fps':>9} {'pipeline fps':>13} {'ratio':>6}  "
        f"target >= {report['target_ratio']}",
    ]
    for run in report["runs"]:
        bare, pipe = run["bare"], run["pipeline"]
        verdict = "ok" if run["meets_target"] else f"LOW: {run['overhead']['largest']}"
        lines.append(
            f"{run['threads']:>7} {bare['fps']:>9.1f} {pipe['fps']:>13.1f} "
            f"{run['ratio']:>6.3f}  {verdict} (rounds: ratio {run['ratio_rounds']}, "
            f"bare fps {bare['fps_rounds']})"
        )
    for run in report["runs"]:
        pipe = run["pipeline"]
        lines += [
            "",
            f"stages at {run['threads']} thread(s), ms   p50      p95      max",
        ]
        for stage in STAGES:
            note = "  (dispatcher thread)" if stage == "sinks" else ""
            lines.append(f"  {stage:<26}{_fmt_stage(pipe['stages_ms'][stage])}{note}")
        lines.append(
            f"  {'bare invoke':<26}{_fmt_stage(run['bare']['invoke_ms'])}"
            f"  | loop other {pipe['loop_other_mean_ms']:.3f} ms/frame, "
            f"{pipe['dropped_frames']} dropped frames, {pipe['dropped_events']} dropped events"
        )
        over = run["overhead"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in over["by_stage_ms"].items())
        lines.append(f"  overhead vs bare {over['per_frame_ms']:.3f} ms/frame: {parts}")
    proc = report["process"]
    lines += [
        "",
        f"process  `pi-daemon run --max-frames {proc['frames']}`: first result after "
        f"{proc['time_to_first_result_s']:.2f} s, peak RSS {proc['peak_rss_mib']} MiB, "
        f"steady RSS {proc['steady_rss_mib']} MiB (bench process peak "
        f"{proc['bench_peak_rss_mib']} MiB)",
    ]
    fl = report["compare"]["int8_vs_float32"]
    if fl["status"] == "ok":
        lines.append(
            f"int8 vs float32 at {fl['threads']} thread(s): {fl['int8_ms']:.2f} ms vs "
            f"{fl['float32_ms']:.2f} ms: float32 takes {fl['float32_over_int8_time']:.2f}x "
            f"as long; file {fl['file_size_ratio']}x as large; top-1 agrees on "
            f"{fl['top1_agreement_demo_photos']} demo photos"
        )
    else:
        lines.append(f"int8 vs float32: skipped: {fl['reason']}")
    be = report["compare"]["litert_vs_tflite_runtime"]
    if be["status"] == "ok":
        lines.append(
            f"litert vs tflite-runtime at {be['threads']} thread(s): "
            f"{be['litert']['ms']:.2f} ms vs {be['tflite_runtime']['ms']:.2f} ms: "
            f"tflite-runtime takes {be['tflite_runtime_over_litert_time']:.2f}x as long "
            f"(tflite-runtime {be['tflite_runtime'].get('version')} in "
            f"{be['tflite_runtime'].get('where')})"
        )
    else:
        lines.append(f"litert vs tflite-runtime: skipped: {be['reason']}")
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise PiDaemonError(f"--replay-size {text!r}: expected WIDTHxHEIGHT") from None
    if min(size) < 8:
        raise PiDaemonError(f"--replay-size {text!r}: too small")
    return size


def main(config: Config, config_path: Path | None, options: BenchOptions, as_json: bool) -> int:
    """Run the bench and print the table (or JSON on stdout)."""
    if options.frames < 20:
        raise PiDaemonError("--frames must be at least 20")
    if any(t < 1 for t in options.threads):
        raise PiDaemonError("--threads must be at least 1")
    report = run_bench(config, config_path, options)
    print(json.dumps(report, indent=2) if as_json else format_report(report), flush=True)
    return 0
