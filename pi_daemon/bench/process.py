"""A real `pi-daemon run` process: time to its first result, and its peak and steady RSS."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pi_daemon.bench.environment import _read
from pi_daemon.config import Config, replace, to_toml
from pi_daemon.errors import PiDaemonError

MIB = 1024 * 1024
# Steady RSS budget of `pi-daemon run` on the demo with metrics and journald (issue 11).
RSS_TARGET_MIB = 75
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def demo_config(config: Config, events: Path) -> Config:
    """`pi-daemon run` as the fleet runs it, on the bundled demo photos: the user's model
    and settings, metrics on (on a free port, never the configured one) and the events file
    in the work directory."""
    files = replace(config.files, paths=[], loop=True, fps=0.0)
    return replace(
        config,
        source="files",
        files=files,
        output=replace(config.output, events_file=str(events)),
        metrics=replace(config.metrics, enabled=True, port=0),
    )


def measure_process(config: Config, workdir: Path, frames: int) -> dict[str, Any]:
    """Start `pi-daemon run --max-frames N` on the demo: time to first result, peak and
    steady RSS, with journald logging when this host has a journal (as under systemd)."""
    import psutil

    events = workdir / "process-events.jsonl"
    config_path = workdir / "process.toml"
    config_path.write_text(to_toml(demo_config(config, events)), encoding="utf-8")
    command = [sys.executable, "-m", "pi_daemon", "run", "--config", str(config_path)]
    command += ["--max-frames", str(frames)]
    journal = JOURNAL_SOCKET.exists()
    env = {**os.environ, "PI_DAEMON_LOG_TARGET": "journal" if journal else "stderr"}
    started = time.monotonic()
    with open(workdir / "process.log", "wb") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    process = psutil.Process(child.pid)
    samples: list[tuple[float, int]] = []
    # (time, RssAnon, RssFile): what the process itself allocated, and the clean pages of
    # its libraries and model that it maps (shared, reclaimable, and larger right after an
    # install: see _status_bytes).
    split: list[tuple[float, int, int]] = []
    first_result: float | None = None
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):  # it may exit between poll and here
            samples.append((time.monotonic(), int(process.memory_info().rss)))
        status = _status_bytes(child.pid)
        split.append((time.monotonic(), status.get("RssAnon", 0), status.get("RssFile", 0)))
        peak = max(peak, status.get("VmHWM", 0))
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
    steady_split = [(anon, file) for t, anon, file in split if t >= first_result]
    steady_split = steady_split[len(steady_split) // 2 :]
    return {
        "frames": frames,
        "time_to_first_result_s": round(first_result - started, 3),
        "peak_rss_mib": round(peak / MIB, 1),
        "steady_rss_mib": round(statistics.median(steady) / MIB, 1) if steady else None,
        "steady_rss_anon_mib": _median_mib([anon for anon, _ in steady_split]),
        "steady_rss_file_mib": _median_mib([file for _, file in steady_split]),
        "what": "the bundled demo, metrics on, logging to "
        + ("journald" if journal else "stderr (this host has no journald)"),
    }


def _median_mib(values: list[int]) -> float | None:
    return round(statistics.median(values) / MIB, 1) if values else None


def _status_bytes(pid: int) -> dict[str, int]:
    """The memory lines of /proc/<pid>/status, in bytes ({"VmHWM": ..., "RssAnon": ...};
    empty once the process is gone).

    VmHWM is the kernel's own peak RSS for the process, reset at exec (unlike wait4's
    ru_maxrss, which counts the bench's pages the child had before exec). RssFile depends
    on the page cache, not only on the process: files written moments ago (a fresh venv)
    sit in the cache as large folios on newer kernels (ext4 since Linux 6.16), and a fault
    maps the whole folio, so the same process maps several MiB more of them than once they
    have been read back from disk; RssAnon is what the process itself allocated."""
    values = {}
    for line in (_read(Path(f"/proc/{pid}/status")) or "").splitlines():
        words = line.split()
        if len(words) == 3 and words[2] == "kB":
            values[words[0].rstrip(":")] = int(words[1]) * 1024
    return values


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
