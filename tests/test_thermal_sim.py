"""The safety property of the throttle policy on the simulated Pi 4B (benchmarks/thermal_sim.py).

Only safety is asserted for the policy alone; the throughput figures are the benchmark's to
report. The duty profile (motion part of the time) is checked for what gating must give:
a cooler board on the same day, with no less throughput while something moves.
"""

from __future__ import annotations

import itertools

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


# -- the duty profile: the motion gate on the same hot day ------------------------------------


def test_the_motion_schedule_covers_about_the_share_asked_for() -> None:
    from benchmarks.thermal_sim import motion_schedule

    episodes = motion_schedule(24.0, 0.1, seed=7)
    share = sum(end - start for start, end in episodes) / (24 * 3600)
    assert 0.07 <= share <= 0.13
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(episodes))
    assert motion_schedule(24.0, 0.1, seed=7) == episodes  # the same every run
    assert motion_schedule(1.0, 0.0) == () and motion_schedule(1.0, 1.0) == ((0.0, 3600.0),)


def test_the_duty_profile_classifies_flat_out_in_motion_and_keyframes_otherwise() -> None:
    from benchmarks.thermal_sim import CAMERA_FPS, GATE_S_PER_FRAME, DutyProfile

    gated = DutyProfile(((100.0, 200.0),), gating=True, max_skip_s=10.0)
    assert gated.has_motion(100.0) and gated.has_motion(199.9)
    assert not gated.has_motion(99.9) and not gated.has_motion(200.0)
    assert gated.demand(150.0) == (0.0, GATE_S_PER_FRAME * CAMERA_FPS)
    assert gated.demand(50.0) == (10.0, GATE_S_PER_FRAME * CAMERA_FPS)
    assert DutyProfile(((100.0, 200.0),), gating=False).demand(50.0) == (0.0, 0.0)


def test_gating_runs_the_board_cooler_and_serves_motion_better_on_the_same_day() -> None:
    from benchmarks.thermal_sim import run_duty_profile

    result = run_duty_profile(HOURS, AMBIENT_PEAK_C, share=0.1, seed=3, start_hour=START_HOUR)
    outcomes = {o["name"]: o for o in result["outcomes"]}  # type: ignore[attr-defined]
    policy, gated = outcomes["policy"], outcomes["policy + gate"]
    # Safety holds either way ...
    assert policy["seconds_at_or_above_80"] == gated["seconds_at_or_above_80"] == 0
    assert gated["peak_c"] < FIRMWARE_LIMIT_C
    # ... the gated board is much cooler on average (idle between motion episodes) ...
    assert gated["mean_c"] < policy["mean_c"] - 5.0
    # ... so the throttle leaves it more headroom when something does happen.
    assert gated["motion_throughput"] > policy["motion_throughput"]
    # And it classifies far fewer frames overall: keyframes only outside motion.
    assert gated["throughput"] < 0.5 * policy["throughput"]
