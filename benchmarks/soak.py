#!/usr/bin/env python3
"""Memory soak: run the real daemon flat out for a long time; watch RSS and open fds.

    python benchmarks/soak.py [--duration 1800] [--warmup S] [--interval 1] [--json]

Starts `pi-daemon run` (this interpreter's `-m pi_daemon`) on a replay of the bundled
demo photos at full speed, with a JSONL events file that rotates every MiB and, when
prometheus-client is installed, the metrics endpoint scraped every few seconds (loopback
only), so every long-lived path is exercised. RSS and the open fd count are sampled with
psutil. After the warm-up it reports:

* RSS drift: the linear-fit trend over the window, and the median of the last tenth of
  the samples minus the median of the first tenth; also max - min, for information;
* the fd count at the start and end of the window.

Exit status: 0 if the drift is at most 2 MiB and the fd count did not grow, 1 if either
failed, 2 if the daemon died. CI runs a short version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MIB = 1024 * 1024
MAX_DRIFT_MIB = 2.0
SCRAPE_EVERY_S = 5.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metrics_available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def write_config(workdir: Path, port: int | None, threads: int) -> Path:
    """Full-speed replay of the bundled photos; events rotate every MiB (rotation soaks too)."""
    metrics = f"[metrics]\nenabled = true\nport = {port}\n" if port else ""
    path = workdir / "soak.toml"
    path.write_text(
        f"""source = "files"
[model]
num_threads = {threads}
[files]
paths = []
loop = true
fps = 0.0
[output]
events_file = "{workdir / "events.jsonl"}"
events_max_bytes = 1048576
events_backup_count = 2
summary_interval_s = 10.0
log_level = "warning"
{metrics}"""
    )
    return path


def scrape_frames(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    match = re.search(r"^pi_daemon_frames_processed_total (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else None


def analyse(samples: list[tuple[float, int, int]], warmup: float, started: float) -> dict[str, Any]:
    """Drift and fd figures over the samples taken after the warm-up."""
    window = [s for s in samples if s[0] - started >= warmup]
    if len(window) < 10:
        raise SystemExit(f"soak: only {len(window)} samples after warm-up; run longer")
    t = np.array([s[0] for s in window]) - window[0][0]
    rss = np.array([s[1] for s in window], np.float64) / MIB
    fds = np.array([s[2] for s in window])
    tenth = max(1, len(window) // 10)
    slope, _ = np.polyfit(t, rss, 1)  # MiB per second
    fit_drift = float(slope * (t[-1] - t[0]))
    median_drift = float(np.median(rss[-tenth:]) - np.median(rss[:tenth]))
    drift = max(fit_drift, median_drift)
    # A transient fd (a scrape's socket) is fine; a higher floor at the end is a leak.
    fds_grew = int(fds[-tenth:].min()) > int(fds[:tenth].max())
    return {
        "window_s": round(float(t[-1] - t[0]), 1),
        "samples": len(window),
        "rss_start_mib": round(float(np.median(rss[:tenth])), 2),
        "rss_end_mib": round(float(np.median(rss[-tenth:])), 2),
        "rss_slope_mib_per_hour": round(float(slope) * 3600, 3),
        "rss_fit_drift_mib": round(fit_drift, 3),
        "rss_median_drift_mib": round(median_drift, 3),
        "rss_max_minus_min_mib": round(float(rss.max() - rss.min()), 3),
        "rss_drift_mib": round(drift, 3),
        "fds_start": int(fds[:tenth].max()),
        "fds_end": int(fds[-tenth:].min()),
        "fds_min": int(fds.min()),
        "fds_max": int(fds.max()),
        "fds_grew": fds_grew,
        "ok": drift <= MAX_DRIFT_MIB and not fds_grew,
    }


def soak(
    duration: float, warmup: float, interval: float, config: Path | None, threads: int = 2
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pi-daemon-soak-") as tmp:
        workdir = Path(tmp)
        port = _free_port() if config is None and _metrics_available() else None
        config = config or write_config(workdir, port, threads)
        command = [sys.executable, "-m", "pi_daemon", "run", "--config", str(config)]
        env = {**os.environ, "PI_DAEMON_LOG_TARGET": "stderr"}
        with open(workdir / "daemon.log", "wb") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        process = psutil.Process(child.pid)
        started = time.monotonic()
        samples: list[tuple[float, int, int]] = []
        frames_at: list[tuple[float, int]] = []
        next_scrape = started + SCRAPE_EVERY_S
        try:
            while time.monotonic() - started < duration:
                if child.poll() is not None:
                    tail = (workdir / "daemon.log").read_text(errors="replace")[-600:]
                    return {"ok": False, "died": True, "exit_code": child.returncode, "log": tail}
                with contextlib.suppress(psutil.Error):
                    samples.append((time.monotonic(), process.memory_info().rss, process.num_fds()))
                if port and time.monotonic() >= next_scrape:
                    frames = scrape_frames(port)
                    if frames is not None:
                        frames_at.append((time.monotonic(), frames))
                    next_scrape += SCRAPE_EVERY_S
                time.sleep(interval)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                code = child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
    report = analyse(samples, warmup, started)
    report.update({"duration_s": duration, "warmup_s": warmup, "exit_code": code})
    if len(frames_at) >= 2:
        (t0, f0), (t1, f1) = frames_at[0], frames_at[-1]
        report["frames"] = f1
        report["fps"] = round((f1 - f0) / (t1 - t0), 1)
    report["ok"] = report["ok"] and code == 0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds ignored at the start (default 1/6)"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--config", type=Path, default=None, help="daemon config (default: own)")
    parser.add_argument(
        "--threads", type=int, default=2, help="interpreter threads of the default config"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(300.0, args.duration / 6)
    report = soak(args.duration, warmup, args.interval, args.config, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
    elif report.get("died"):
        print(f"soak: the daemon died with exit code {report['exit_code']}:\n{report['log']}")
    else:
        print(
            f"soak {report['window_s']:.0f} s after {warmup:.0f} s warm-up, "
            f"{report.get('fps', '?')} fps, {report.get('frames', '?')} frames: "
            f"RSS {report['rss_start_mib']} -> {report['rss_end_mib']} MiB, "
            f"drift {report['rss_drift_mib']} MiB (fit {report['rss_fit_drift_mib']}, "
            f"{report['rss_slope_mib_per_hour']} MiB/h; medians "
            f"{report['rss_median_drift_mib']}), max-min {report['rss_max_minus_min_mib']} MiB; "
            f"fds {report['fds_start']} -> {report['fds_end']} "
            f"(range {report['fds_min']}-{report['fds_max']}): "
            f"{'OK' if report['ok'] else 'FAIL'}"
        )
    if report.get("died"):
        return 2
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
