"""The safety property of the throttle policy on the simulated Pi 4B (benchmarks/thermal_sim.py).

Only safety is asserted here; the throughput figures are the benchmark's to report.
"""

from __future__ import annotations

from benchmarks.thermal_sim import FIRMWARE_LIMIT_C, no_throttle, policy_controller, simulate

# The hottest stretch of the simulated day (sun on the case peaks at 14:30), on a bare board.
START_HOUR, HOURS, AMBIENT_PEAK_C = 12.0, 3.5, 40.0


def test_policy_keeps_the_soc_below_the_firmware_limit() -> None:
    control, _ = policy_controller()
    outcome = simulate("policy", control, HOURS, AMBIENT_PEAK_C, seed=3, start_hour=START_HOUR)
    assert outcome.peak_c < FIRMWARE_LIMIT_C
    assert outcome.seconds_at_or_above_80 == 0
    assert outcome.throughput > 0.2  # and it did not get there by simply stopping


def test_without_throttling_the_same_scenario_reaches_the_limit() -> None:
    outcome = simulate("none", no_throttle, HOURS, AMBIENT_PEAK_C, seed=3, start_hour=START_HOUR)
    assert outcome.peak_c >= FIRMWARE_LIMIT_C
    assert outcome.seconds_at_or_above_80 > 0
