"""Timing primitives: percentiles, the bare `invoke()` loop, and CPU clocks.

Two clocks are recorded for every round, so that a noisy neighbour on a shared machine
shows up as a spread instead of a wrong verdict:

* wall time, which gives frames per second (what a user sees), and
* the CPU time of the thread that calls `invoke()` (`time.thread_time`), which counts
  only the work that thread really did. Time spent waiting for a core that another job
  holds is not in it, so per-frame CPU time hardly moves when the host gets busy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


def write_bytes() -> int:
    """Bytes this process has caused to be written to storage (`/proc/self/io`
    write_bytes); 0 where the kernel does not account it."""
    with open("/proc/self/io", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


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


def spread(values: list[float]) -> dict[str, float]:
    """Median and interquartile range of per-round figures."""
    q1, median, q3 = np.percentile(np.asarray(values, np.float64), (25, 50, 75))
    return {"median": round(float(median), 4), "q1": round(float(q1), 4), "q3": round(float(q3), 4)}


@dataclass
class BareRun:
    frames: int
    elapsed: float  # wall seconds
    thread_cpu: float  # CPU seconds of the invoking thread
    times: np.ndarray  # wall seconds per invoke

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed

    @property
    def cpu_per_frame(self) -> float:
        return self.thread_cpu / self.frames


def bare_invoke(interpreter: Any, frames: int, seconds: float | None) -> BareRun:
    """Tight `invoke()` loop on whatever the input tensor holds. Warm-up excluded."""
    for _ in range(10):
        interpreter.invoke()
    limit = frames if seconds is None else 1 << 22
    times = np.empty(min(limit, 1 << 22), np.float64)
    invoke, clock = interpreter.invoke, time.perf_counter
    cpu_started = time.thread_time()
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
    return BareRun(count, elapsed, time.thread_time() - cpu_started, times[:count])
