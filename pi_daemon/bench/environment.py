"""What machine and software the bench ran on: CPU, frequency governor, BLAS, versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


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
        show_config: Any = np.show_config  # its stub says it returns None; mode="dicts" doesn't
        config = show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
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
        numpy_config: Any = np.__config__  # get_info exists in numpy < 1.26 only
        info = numpy_config.get_info("blas_opt")
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
