"""`pi-daemon bench`: how fast the pipeline runs on this machine and where the time goes.

Everything is measured in one run, on one machine, with one model and one thread count at
a time, so the figures can be compared with each other even when the machine is noisy:

* **bare** - a tight `invoke()` loop on a preloaded, real input: the ceiling.
* **pipeline** - the service's own `Daemon` loop (built by the same functions that
  `pi-daemon run` uses): the files source replaying real frames (the bundled demo photos,
  from memory or as an MJPG video), the capture thread, preprocessing, invoke, top-k and
  every configured sink (always including a JSONL events file), on the same interpreter.
* **ratio** and **cpu_ratio** (`pipeline.py` says how each is measured and why the verdict
  uses the CPU-time one).

Then a real `pi-daemon run` process on the bundled demo, with metrics on and journald when
the host has one (as the fleet runs it), gives the time to the first result and the peak and
steady RSS; and the comparisons (int8 against its float32 twin, litert against
tflite-runtime) are printed as ratios.

The modules, one concern each: `environment` (machine facts), `replay` (the frames),
`timing` (clocks and the bare loop), `pipeline` (the real loop), `mqtt` (the loop with
MQTT on, a live and a dead broker), `motion` (what the motion gate saves, on `scenes`),
`process` (a real daemon process), `compare` (model and backend comparisons, `worker`
runs in another Python) and `report` (the table).
"""

from __future__ import annotations

import json
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pi_daemon import __version__
from pi_daemon.bench import motion
from pi_daemon.bench.compare import compare_backends, compare_float
from pi_daemon.bench.environment import cpu_temp_c, environment
from pi_daemon.bench.mqtt import measure_mqtt
from pi_daemon.bench.pipeline import STAGES, TARGET_RATIO, bench_config, measure_threads
from pi_daemon.bench.process import RSS_TARGET_MIB, measure_process
from pi_daemon.bench.replay import HOLD_FRAMES, write_replay
from pi_daemon.bench.report import format_report
from pi_daemon.config import Config, replace

__all__ = ["STAGES", "TARGET_RATIO", "BenchOptions", "format_report", "main", "run_bench"]

DEFAULT_FRAMES = 500


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


def _with_absolute_model(config: Config, base_dir: Path | None, model: str) -> Config:
    """The config with `--model` applied and the model's paths absolute, so the `pi-daemon
    run` subprocess finds them from its own config file in the work directory."""
    if model:
        update = {"path": str(Path(model).resolve()), "sha256": "", "labels": ""}
        return replace(config, model=replace(config.model, **update))
    if config.model.path and base_dir is not None:
        update = {"path": str((base_dir / config.model.path).resolve())}
        if config.model.labels:
            update["labels"] = str((base_dir / config.model.labels).resolve())
        return replace(config, model=replace(config.model, **update))
    return config


def run_bench(config: Config, config_path: Path | None, options: BenchOptions) -> dict[str, Any]:
    """Measure everything; return the report as a JSON-ready dict."""
    from pi_daemon.app import load_configured_model

    base_dir = config_path.parent if config_path else None
    config = _with_absolute_model(config, base_dir, options.model)
    probe = load_configured_model(config, base_dir)
    threads = sorted(set(options.threads or [1, config.model.num_threads]))
    started_temp = cpu_temp_c()
    report: dict[str, Any] = {
        "pi_daemon": __version__,
        "target_ratio": TARGET_RATIO,
        "rss_target_mib": RSS_TARGET_MIB,
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
    width, height = probe.input_size
    del probe
    with tempfile.TemporaryDirectory(prefix="pi-daemon-bench-") as tmp:
        workdir = Path(tmp)
        size = options.replay_size or (width, height)
        replay = write_replay(workdir, size, options.replay)
        report["replay"] = {
            "kind": options.replay,
            "what": "bundled demo photos"
            + (" as an MJPG video" if options.replay == "video" else ", decoded once"),
            "size": list(size),
            "frames": len(replay) if options.replay == "images" else 3 * HOLD_FRAMES,
        }
        bench = bench_config(config, replay, workdir / "events.jsonl")
        runs = [
            measure_threads(bench, base_dir, count, options.frames, options.seconds)
            for count in threads
        ]
        chosen = next(
            (r for r in runs if r.report["threads"] == config.model.num_threads), runs[-1]
        )
        small = max(20, options.frames // 5)
        report["compare"] = {
            "int8_vs_float32": compare_float(bench, base_dir, chosen, options.float_model, small),
            "litert_vs_tflite_runtime": compare_backends(
                chosen, options.compare_python, max(10, small // 2), workdir
            ),
        }
        report["runs"] = [run.report for run in runs]
        # Rounds as long as the main ones: connecting and discovery must not dominate.
        frames = max(300, options.frames)
        report["mqtt"] = measure_mqtt(bench, base_dir, chosen.classifier, replay, frames)
        report["motion"] = motion.run(workdir, chosen.classifier, config.motion)
        del runs, chosen
        report["process"] = measure_process(config, workdir, max(200, options.frames))
    report["process"]["bench_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    report["environment"]["cpu_temp_c_end"] = cpu_temp_c()
    report["environment"]["cpu_temp_c"] = started_temp
    return report


def parse_size(text: str) -> tuple[int, int]:
    from pi_daemon.errors import PiDaemonError

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
    from pi_daemon.errors import PiDaemonError

    if options.frames < 20:
        raise PiDaemonError("--frames must be at least 20")
    if any(t < 1 for t in options.threads):
        raise PiDaemonError("--threads must be at least 1")
    report = run_bench(config, config_path, options)
    print(json.dumps(report, indent=2) if as_json else format_report(report), flush=True)
    return 0
