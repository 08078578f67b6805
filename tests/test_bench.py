"""`pi-daemon bench` runs end to end and reports every figure (speed is not asserted here:
timed assertions on a shared machine are flaky; the targets are checked by running bench)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from collections.abc import Callable

import pytest

from pi_daemon.bench import STAGES, format_report
from pi_daemon.errors import EX_USAGE
from tests.conftest import assert_one_line_error

STAGE_KEYS = {"p50", "p95", "max"}


def test_bench_json_has_every_figure(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = cli("bench", "--json", "--frames", "30", "--threads", "1", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert {"name", "sha256", "backend", "backend_version", "input"} <= set(report["model"])
    env = report["environment"]
    for key in ("machine", "cpu", "cores", "governor", "cur_freq", "blas", "numpy", "backend"):
        assert key in env, key
    assert env["governor"]  # "n/a" where cpufreq is missing, never empty
    assert env["blas"]["name"]

    assert [run["threads"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["bare"]["fps"] > 0 and run["pipeline"]["fps"] > 0
        assert run["ratio"] > 0 and run["cpu_ratio"] > 0
        # The verdict is on the CPU-time ratio (robust to a noisy neighbour), as the report
        # says ("target >= ... (on cpu ratio)"); the fps ratio is reported beside it.
        assert run["meets_target"] is (run["cpu_ratio"] >= report["target_ratio"])
        for name in ("ratio", "cpu_ratio"):
            low, high = run[f"{name}_spread"]
            assert low <= run[name] <= high, (name, run)
        assert set(run["pipeline"]["stages_ms"]) == set(STAGES)
        for stage in STAGES:
            stats = run["pipeline"]["stages_ms"][stage]
            assert set(stats) == STAGE_KEYS and stats["p50"] <= stats["p95"] <= stats["max"]
        assert set(run["bare"]["invoke_ms"]) == STAGE_KEYS
        assert run["overhead"]["largest"] in run["overhead"]["by_stage_ms"]

    process = report["process"]
    assert 0 < process["time_to_first_result_s"] < 60
    assert process["peak_rss_mib"] >= process["steady_rss_mib"] > 10
    # RSS is the anonymous part plus the file-backed part (sampled a moment apart).
    parts = process["steady_rss_anon_mib"] + process["steady_rss_file_mib"]
    assert parts == pytest.approx(process["steady_rss_mib"], abs=3), process
    assert process["steady_rss_anon_mib"] > 5 and process["steady_rss_file_mib"] > 5, process

    # From a checkout the float32 twin is in deploy/models: the comparison must run.
    floats = report["compare"]["int8_vs_float32"]
    assert floats["status"] == "ok", floats
    assert floats["float32_model"].endswith("deploy/models/efficientnet-lite0-fp32.tflite")
    assert floats["float32_over_int8_time"] > 0 and floats["int8_ms"] > 0
    assert 3.0 < floats["file_size_ratio"] < 4.0  # 18.6 MB against 5.3 MB
    agreed, photos = map(int, floats["top1_agreement_demo_photos"].split("/"))
    assert photos == 3 and agreed >= 2, floats
    # tflite-runtime is not in the test venv (it needs numpy<2) and no --compare-python
    # was given: exactly that is the reason, and the litert side still ran.
    backends = report["compare"]["litert_vs_tflite_runtime"]
    assert backends["status"] == "skipped", backends
    assert backends["reason"] == "tflite-runtime: not installed", backends
    assert backends["litert"]["ms"] > 0 and backends["litert"]["where"] == "in process"
    assert backends["litert"]["version"] == importlib.metadata.version("ai-edge-litert")

    table = format_report(report)
    for heading in ("bare fps", "pipeline fps", "ratio", "capture_wait", "sinks", "peak RSS"):
        assert heading in table
    assert "int8 vs float32" in table and "litert vs tflite-runtime" in table


def test_bench_rejects_too_few_frames(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = cli("bench", "--frames", "5")
    assert_one_line_error(result, EX_USAGE, "argument --frames", "must be 20 to")
