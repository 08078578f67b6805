"""The throttle policy, by tables of boundary cases. Pure: readings and `now` in."""

from __future__ import annotations

import math

import pytest

from pi_daemon.config import ThrottleSection, parse_config
from pi_daemon.errors import ConfigError
from pi_daemon.readings import Readings
from pi_daemon.throttle import MIB, ThrottleDecision, ThrottlePolicy

# Exact-threshold tables need raw readings and no dwell; dwell and smoothing get their own.
RAW = {"label_smoothing_s": 0.0, "min_dwell_s": 0.0}


def policy(**overrides: float) -> ThrottlePolicy:
    return ThrottlePolicy(ThrottleSection(**{**RAW, **overrides}))


def feed(p: ThrottlePolicy, steps: list[tuple[float, Readings]]) -> list[ThrottleDecision]:
    return [p.update(readings, now) for now, readings in steps]


def temps(*values: float | None, step: float = 1.0) -> list[tuple[float, Readings]]:
    return [(i * step, Readings(cpu_temp_c=v)) for i, v in enumerate(values)]


# -- temperature bands -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temp", "state", "pause"),
    [
        (25.0, "normal", False),
        (69.99, "normal", False),
        (70.0, "warm", False),  # warm_c: at the threshold is in the band
        (77.99, "warm", False),
        (78.0, "hot", False),  # hot_c
        (78.99, "hot", False),
        (79.0, "critical", True),  # critical_c pauses: 1 °C short of the firmware's 80
        (85.0, "critical", True),
    ],
)
def test_temperature_bands_at_exact_thresholds(temp: float, state: str, pause: bool) -> None:
    decision = policy().update(Readings(cpu_temp_c=temp), 0.0)
    assert (decision.state, decision.pause) == (state, pause)


@pytest.mark.parametrize(
    ("sequence", "state"),
    [
        ((78.0, 76.0), "hot"),  # exactly hot_c - hysteresis: still hot
        ((78.0, 75.99), "warm"),
        ((79.0, 77.0), "critical"),  # exactly critical_c - hysteresis: still paused
        ((79.0, 76.99), "hot"),
        ((70.0, 68.0), "warm"),
        ((70.0, 67.99), "normal"),
        ((79.0, 50.0), "normal"),  # falls through every band at once
        ((77.9, 78.0, 77.9, 78.0), "hot"),  # jitter at a threshold
        ((78.0, 77.0, 78.5, 76.5), "hot"),  # never 2 °C below: never leaves
    ],
)
def test_hysteresis_edges(sequence: tuple[float, ...], state: str) -> None:
    assert feed(policy(), temps(*sequence))[-1].state == state


def test_state_changes_only_at_the_hysteresis_edges() -> None:
    decisions = feed(policy(), temps(77.9, 78.0, 76.5, 77.9, 76.0, 75.9, 77.9))
    assert [d.state for d in decisions] == [
        "warm", "hot", "hot", "hot", "hot", "warm", "warm"
    ]  # fmt: skip
    assert sum(d.changed for d in decisions) == 3  # normal->warm, warm->hot, hot->warm


def test_smoothing_keeps_a_single_spike_out_of_hot_but_not_out_of_critical() -> None:
    smoothed = ThrottlePolicy(ThrottleSection(min_dwell_s=0.0, label_smoothing_s=10.0))
    assert feed(smoothed, temps(72.0, 78.5, 72.0))[1].state == "warm"
    smoothed = ThrottlePolicy(ThrottleSection(min_dwell_s=0.0, label_smoothing_s=10.0))
    assert feed(smoothed, temps(72.0, 79.0))[1].state == "critical"


def test_smoothed_label_does_reach_hot_when_the_heat_persists() -> None:
    smoothed = ThrottlePolicy(ThrottleSection(min_dwell_s=0.0, label_smoothing_s=10.0))
    decisions = feed(smoothed, temps(72.0, *[78.5] * 60))
    assert decisions[-1].state == "hot"


# -- dwell -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "states"),
    [
        # the first change is free; the next must wait min_dwell_s (30 s)
        ([(0, 70.0), (10, 60.0), (29.9, 60.0), (30, 60.0)], ["warm", "warm", "warm", "normal"]),
        ([(0, 70.0), (29.9, 78.5), (30, 78.5)], ["warm", "warm", "hot"]),
        # escalation to critical is never delayed ...
        ([(0, 70.0), (1, 79.0)], ["warm", "critical"]),
        ([(0, 78.0), (0.5, 90.0)], ["hot", "critical"]),
        # ... but leaving it is (the safe direction): still paused until the dwell is over
        ([(0, 79.0), (5, 50.0), (29.9, 50.0), (30, 50.0)], ["critical"] * 3 + ["normal"]),
        # a critical held by the dwell re-arms at once when the heat comes back
        ([(0, 79.0), (31, 60.0), (32, 79.5)], ["critical", "normal", "critical"]),
    ],
)
def test_min_dwell_limits_changes_except_into_critical(
    steps: list[tuple[float, float]], states: list[str]
) -> None:
    p = policy(min_dwell_s=30.0)
    decisions = feed(p, [(t, Readings(cpu_temp_c=v)) for t, v in steps])
    assert [d.state for d in decisions] == states
    assert [d.pause for d in decisions] == [s == "critical" for s in states]


def test_a_dwell_held_state_says_so_in_its_reason() -> None:
    p = policy(min_dwell_s=30.0)
    decisions = feed(p, [(0, Readings(cpu_temp_c=79.0)), (5, Readings(cpu_temp_c=50.0))])
    assert decisions[1].state == "critical"
    assert decisions[1].reason == "readings within limits (state held for min_dwell_s 30 s)"


def test_the_reason_ranks_conditions_most_severe_first() -> None:
    decision = policy().update(
        Readings(cpu_temp_c=72.0, undervoltage=True, mem_available_bytes=50 * MIB), 0.0
    )
    assert decision.reason == ("available memory 50 MiB; under-voltage alarm; temperature 72.0 °C")
    flags = policy().update(Readings(throttled_flags=0x50005), 0.0)
    assert flags.reason == "firmware throttle flags 0x5"


# -- smoothing of the warm/hot label ---------------------------------------------------------


def test_the_label_average_follows_its_time_constant_exactly() -> None:
    """smoothed += (t - smoothed) * step / (label_smoothing_s + step): from 72 °C, readings
    of 78.9 every 5 s with a 10 s constant reach 78 (hot) at the sixth, not the fifth
    (78.9 - 6.9 * (2/3)^n: 77.99 after five, 78.29 after six)."""
    p = ThrottlePolicy(ThrottleSection(min_dwell_s=0.0, label_smoothing_s=10.0))
    steps = [(0.0, 72.0)] + [(5.0 * n, 78.9) for n in range(1, 8)]
    states = [p.update(Readings(cpu_temp_c=t), now).state for now, t in steps]
    assert states == ["warm"] * 6 + ["hot"] * 2


def test_a_one_second_constant_still_smooths() -> None:
    p = ThrottlePolicy(ThrottleSection(min_dwell_s=0.0, label_smoothing_s=1.0))
    # 72 + 6.5 * 1 / (1 + 1) = 75.25: still warm; unsmoothed it would be hot.
    assert [p.update(Readings(cpu_temp_c=t), now).state for now, t in ((0, 72.0), (1, 78.5))] == [
        "warm",
        "warm",
    ]


def test_readings_at_the_same_instant_are_taken_as_they_are() -> None:
    """A zero time step (two polls in one monotonic tick) must not divide by zero."""
    for smoothing in (0.0, 10.0):
        p = ThrottlePolicy(ThrottleSection(min_dwell_s=0.0, label_smoothing_s=smoothing))
        p.update(Readings(cpu_temp_c=72.0), 5.0)
        assert p.update(Readings(cpu_temp_c=72.5), 5.0).state == "warm"


# -- a sensor that comes and goes ------------------------------------------------------------


def test_a_temperature_that_returns_starts_afresh() -> None:
    """After a gap in the readings nothing of the old heat is held over: not the critical
    latch, the band, the average or the integrator (and none of it may break the update)."""
    for smoothing in (0.0, 10.0):
        config = ThrottleSection(min_dwell_s=0.0, label_smoothing_s=smoothing)
        p = ThrottlePolicy(config)
        # Ten seconds over the setpoint wind the integrator up, then a critical reading.
        feed(p, [(float(t), Readings(cpu_temp_c=77.5)) for t in range(10)])
        feed(p, [(10.0, Readings(cpu_temp_c=79.5)), (11.0, Readings(cpu_temp_c=None))])
        # 78 °C is within the hysteresis of critical (79 - 2): latched, it would stay paused.
        back = p.update(Readings(cpu_temp_c=78.0), 12.0)
        assert (back.state, back.pause) == ("hot", False)
        # Only the one second since the gap is integrated: 0.01 * 2 °C * 1 s.
        boost = config.integral_gain * 2.0 * 1.0 + config.proportional_gain * 2.0
        assert back.min_interval_s == pytest.approx(config.start_interval_s * math.exp(boost))


def test_memory_that_returns_between_floor_and_resume_is_not_low() -> None:
    steps = [
        (0.0, Readings(mem_available_bytes=50 * MIB)),
        (1.0, Readings(mem_available_bytes=None)),
        (2.0, Readings(mem_available_bytes=120 * MIB)),
    ]
    assert [d.state for d in feed(policy(min_dwell_s=0.0), steps)] == [
        "critical",
        "normal",
        "normal",
    ]


def test_a_zero_resume_rate_is_not_busy_before_any_swap_in() -> None:
    p = policy(swap_in_resume_per_s=0.0)
    assert p.update(Readings(swap_in_per_s=0.0), 0.0).state == "normal"


# -- the thermal controller ------------------------------------------------------------------


@pytest.mark.parametrize("temp", [40.0, 70.0, 75.99, 76.0])
def test_no_interval_at_or_below_the_setpoint(temp: float) -> None:
    assert policy().update(Readings(cpu_temp_c=temp), 0.0).min_interval_s == 0.0


def test_interval_just_above_setpoint_is_the_proportional_step() -> None:
    config = ThrottleSection(**RAW)
    decision = ThrottlePolicy(config).update(Readings(cpu_temp_c=77.0), 0.0)
    expected = config.start_interval_s * math.exp(config.proportional_gain * 1.0)
    assert decision.min_interval_s == pytest.approx(expected)


def test_interval_rises_with_temperature_and_is_capped() -> None:
    intervals = [policy().update(Readings(cpu_temp_c=t), 0.0).min_interval_s for t in (77, 78, 79)]
    assert intervals == sorted(intervals) and intervals[0] > 0
    assert policy().update(Readings(cpu_temp_c=120.0), 0.0).min_interval_s == 5.0


def test_integral_stretches_while_above_setpoint_and_relaxes_below() -> None:
    p = policy()
    above = [d.min_interval_s for d in feed(p, temps(*[77.0] * 60))]
    assert above == sorted(above) and above[-1] > above[0] * 1.5
    below = [p.update(Readings(cpu_temp_c=74.0), 60.0 + i).min_interval_s for i in range(200)]
    assert below[0] < above[-1] and below[-1] == 0.0


def test_the_integrator_adds_gain_times_error_times_elapsed_time() -> None:
    """Updates every 0.25 s for 20 s at 1 °C over the setpoint: the integral is
    integral_gain * 1 * 20 = 0.2 however finely the time is sliced."""
    config = ThrottleSection(**RAW)
    p = ThrottlePolicy(config)
    for i in range(81):
        decision = p.update(Readings(cpu_temp_c=77.0), i * 0.25)
    boost = config.integral_gain * 1.0 * 20.0 + config.proportional_gain * 1.0
    assert decision.min_interval_s == pytest.approx(config.start_interval_s * math.exp(boost))


def test_a_long_gap_between_updates_winds_the_integrator_at_most_max_step() -> None:
    p = policy()
    p.update(Readings(cpu_temp_c=77.0), 0.0)
    after_gap = p.update(Readings(cpu_temp_c=77.0), 3600.0).min_interval_s
    q = policy()
    q.update(Readings(cpu_temp_c=77.0), 0.0)
    assert after_gap == pytest.approx(q.update(Readings(cpu_temp_c=77.0), 5.0).min_interval_s)


# -- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available_mib", "pause"),
    [
        ((99.99,), True),  # under the 100 MiB floor
        ((100.0,), False),  # at the floor is not under it
        ((99.0, 149.99), True),  # recovering, but not yet at the 150 MiB resume level
        ((99.0, 150.0), False),
        ((99.0, None), False),  # unavailable never throttles
        ((200.0, 120.0), False),  # between floor and resume, never paused: stays running
    ],
)
def test_memory_floor_pauses_until_resume_level(
    available_mib: tuple[float | None, ...], pause: bool
) -> None:
    steps = [
        (float(i), Readings(mem_available_bytes=None if m is None else int(m * MIB)))
        for i, m in enumerate(available_mib)
    ]
    decision = feed(policy(), steps)[-1]
    assert decision.pause is pause
    assert decision.state == ("critical" if pause else "normal")


def test_memory_pause_names_the_reason() -> None:
    decision = policy().update(Readings(mem_available_bytes=50 * MIB), 0.0)
    assert "available memory 50 MiB" in decision.reason


# -- swap and memory pressure ----------------------------------------------------------------


def swap_in(rates: list[float | None]) -> list[tuple[float, Readings]]:
    return [(float(i), Readings(swap_in_per_s=r)) for i, r in enumerate(rates)]


@pytest.mark.parametrize(
    ("rates", "stretched"),
    [
        ([100.0] * 61, True),  # 100 pages/s for a whole 60 s window: exactly the limit
        ([100.0] * 60, False),  # 59 s of it averages 98.3 over the window
        ([99.0] * 200, False),
        ([0.0] + [1000.0] * 5 + [0.0] * 60, False),  # a 5 s burst averages 83: not sustained
        ([None] * 100, False),  # unavailable never throttles
    ],
)
def test_sustained_swap_in_stretches_the_interval(
    rates: list[float | None], stretched: bool
) -> None:
    decision = feed(policy(), swap_in(rates))[-1]
    assert (decision.min_interval_s >= 1.0) is stretched
    assert decision.state == ("warm" if stretched else "normal")
    assert decision.pause is False


def test_swap_stretch_ends_below_the_resume_rate() -> None:
    p = policy()
    feed(p, swap_in([200.0] * 61))
    # The window average falls as zeros replace 200s; off once it is under 50 pages/s.
    later = [p.update(Readings(swap_in_per_s=0.0), 61.0 + i) for i in range(60)]
    on = [d.min_interval_s >= 1.0 for d in later]
    assert on[0] and not on[-1]
    first_off = on.index(False)
    assert 40 <= first_off <= 47  # 200 * (60 - k) / 60 < 50 from k = 45 or so


def test_the_swap_window_counts_pages_by_elapsed_time() -> None:
    """Polls every 2 s at 120 pages/s: 240 pages each, 120/s over the window (limit 100)."""
    p = policy()
    decisions = [p.update(Readings(swap_in_per_s=120.0), 2.0 * i) for i in range(31)]
    assert decisions[-1].state == "warm" and decisions[-1].min_interval_s >= 1.0
    assert decisions[-1].reason == "swap-in 120 pages/s over 60 s"
    # 24 polls of 240 pages in: 5760 / 60 = 96 pages/s; the 25th makes it exactly 100.
    assert (decisions[24].state, decisions[25].state) == ("normal", "warm")


@pytest.mark.parametrize(
    ("fractions", "stretched"),
    [
        ((0.8,), True),
        ((0.79,), False),
        ((0.8, 0.7), True),  # at the resume fraction: still on
        ((0.8, 0.69), False),
    ],
)
def test_swap_used_level(fractions: tuple[float, ...], stretched: bool) -> None:
    total = 100 * MIB
    steps = [
        (float(i), Readings(swap_used_bytes=int(f * total), swap_total_bytes=total))
        for i, f in enumerate(fractions)
    ]
    assert (feed(policy(), steps)[-1].min_interval_s >= 1.0) is stretched


def test_no_swap_configured_is_not_pressure() -> None:
    decision = policy().update(Readings(swap_used_bytes=0, swap_total_bytes=0), 0.0)
    assert decision.state == "normal" and decision.min_interval_s == 0.0


@pytest.mark.parametrize(
    ("psi", "stretched"),
    [((10.0,), True), ((9.99,), False), ((10.0, 5.0), True), ((10.0, 4.99), False)],
)
def test_memory_pressure_psi(psi: tuple[float, ...], stretched: bool) -> None:
    steps = [(float(i), Readings(memory_pressure_some_avg10=v)) for i, v in enumerate(psi)]
    assert (feed(policy(), steps)[-1].min_interval_s >= 1.0) is stretched


# -- firmware flags and under-voltage --------------------------------------------------------


@pytest.mark.parametrize(
    ("readings", "state"),
    [
        (Readings(throttled_flags=0x50005), "hot"),  # under-voltage + throttled now
        (Readings(throttled_flags=0x2), "hot"),  # ARM frequency capped
        (Readings(throttled_flags=0x8), "hot"),  # soft temperature limit
        (Readings(throttled_flags=0x50000), "normal"),  # only "since boot": history
        (Readings(throttled_flags=0), "normal"),
        (Readings(undervoltage=True), "hot"),
        (Readings(undervoltage=False), "normal"),
        (Readings(undervoltage=True, cpu_temp_c=79.5), "critical"),  # hotter wins
    ],
)
def test_flags_and_undervoltage_mean_at_least_hot(readings: Readings, state: str) -> None:
    decision = policy().update(readings, 0.0)
    assert decision.state == state
    if state == "hot":
        assert decision.min_interval_s >= 0.5 and not decision.pause


# -- unavailable sensors ---------------------------------------------------------------------


def test_no_readings_at_all_never_throttle() -> None:
    decisions = feed(policy(), [(float(i), Readings()) for i in range(100)])
    assert all((d.state, d.min_interval_s, d.pause) == ("normal", 0.0, False) for d in decisions)


def test_temperature_going_unavailable_drops_thermal_throttling() -> None:
    p = policy()
    feed(p, temps(78.5, 78.5, 78.5))
    decision = p.update(Readings(cpu_temp_c=None), 3.0)
    assert (decision.state, decision.min_interval_s) == ("normal", 0.0)


def test_reason_within_limits_when_normal() -> None:
    assert policy().update(Readings(cpu_temp_c=50.0), 0.0).reason == "readings within limits"


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"warm_c": 78.0},  # warm == hot
        {"hot_c": 79.0},  # hot == critical
        {"setpoint_c": 69.0},  # below warm
        {"setpoint_c": 78.5},  # above hot
        {"critical_c": 86.0},  # beyond the firmware's hard limit
        {"start_interval_s": 5.0},  # not below max_interval_s
        {"mem_resume_mib": 100.0},
        {"swap_in_resume_per_s": 100.0},
        {"swap_used_resume_fraction": 0.8},
        {"pressure_resume_pct": 10.0},
        {"hysteresis_c": 0.0},
    ],
)
def test_config_rejects_inconsistent_thresholds(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"^<config>: throttle"):
        parse_config({"throttle": bad})


def test_default_config_is_valid_and_orders_thresholds_below_the_firmware_limit() -> None:
    c = ThrottleSection()
    assert c.warm_c < c.setpoint_c < c.hot_c < c.critical_c < 80.0
