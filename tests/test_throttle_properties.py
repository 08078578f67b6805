"""Properties of the throttle policy over many generated temperature histories (hypothesis).

The table tests in test_throttle.py pin the boundaries; these check the two promises
that must hold for every history and every valid configuration:

- rising past critical_c pauses at that very reading, whatever came before (the dwell,
  the smoothing and the previous state never delay it);
- hysteresis: a state is entered only at or above its threshold and left only below
  threshold - hysteresis_c, so readings that wander less than hysteresis_c never flap.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi_daemon.config import ThrottleSection
from pi_daemon.readings import Readings
from pi_daemon.throttle import STATES, ThrottlePolicy

# Reproducible in CI (the same examples every run); exploring anew elsewhere.
settings.register_profile(
    "pi-daemon",
    max_examples=300,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("pi-daemon")

temperatures = st.floats(min_value=20.0, max_value=95.0, allow_nan=False)


@st.composite
def thresholds(draw: st.DrawFn) -> dict[str, float]:
    """A valid band layout: warm < hot < critical, setpoint between warm and hot."""
    warm = draw(st.floats(40.0, 75.0))
    hot = draw(st.floats(warm + 0.5, 82.0))
    critical = draw(st.floats(hot + 0.5, 85.0))
    return {
        "warm_c": warm,
        "hot_c": hot,
        "critical_c": critical,
        "setpoint_c": draw(st.floats(warm, hot)),
        "hysteresis_c": draw(st.floats(0.1, 10.0)),
    }


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[float, float]]:
    """(seconds since the previous reading, °C) pairs: jitter, steps, gaps, repeats."""
    steps = st.tuples(st.floats(0.0, 40.0), temperatures)
    return draw(st.lists(steps, min_size=1, max_size=60))


def threshold_of(level: int, config: ThrottleSection) -> float:
    return (0.0, config.warm_c, config.hot_c, config.critical_c)[level]


@given(
    bands=thresholds(),
    dwell=st.floats(0.0, 600.0),
    smoothing=st.floats(0.0, 600.0),
    history=histories(),
)
def test_a_reading_at_or_past_critical_pauses_at_once(
    bands: dict[str, float], dwell: float, smoothing: float, history: list[tuple[float, float]]
) -> None:
    config = ThrottleSection(**bands, min_dwell_s=dwell, label_smoothing_s=smoothing)
    policy = ThrottlePolicy(config)
    now = 1000.0
    for step, temp in history:
        now += step
        decision = policy.update(Readings(cpu_temp_c=temp), now)
        if temp >= config.critical_c:
            assert (decision.state, decision.pause) == ("critical", True), (temp, decision)
        assert decision.pause == (decision.state == "critical")


@given(bands=thresholds(), history=histories())
def test_states_change_only_across_the_hysteresis_edges(
    bands: dict[str, float], history: list[tuple[float, float]]
) -> None:
    """Raw readings, no dwell: each change is explained by the reading that caused it."""
    config = ThrottleSection(**bands, min_dwell_s=0.0, label_smoothing_s=0.0)
    policy = ThrottlePolicy(config)
    level, now = 0, 1000.0
    for step, temp in history:
        now += step
        new = STATES.index(policy.update(Readings(cpu_temp_c=temp), now).state)
        if new > level:  # entered: the reading reached the new band's threshold ...
            assert temp >= threshold_of(new, config), (level, new, temp)
        if new < level:  # ... left: it fell below every band it left by more than hysteresis
            for left in range(new + 1, level + 1):
                assert temp < threshold_of(left, config) - config.hysteresis_c, (level, new, temp)
        level = new


@given(
    bands=thresholds(),
    start=temperatures,
    offsets=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=60),
)
def test_readings_wandering_less_than_the_hysteresis_never_flap(
    bands: dict[str, float], start: float, offsets: list[float]
) -> None:
    """Jitter within a window narrower than hysteresis_c: the state may rise as readings
    reach a threshold, but it never comes back down, so it never flips back and forth."""
    config = ThrottleSection(**bands, min_dwell_s=0.0, label_smoothing_s=0.0)
    width = config.hysteresis_c * 0.999
    policy = ThrottlePolicy(config)
    states = [
        STATES.index(policy.update(Readings(cpu_temp_c=start + f * width), float(i)).state)
        for i, f in enumerate(offsets)
    ]
    assert states == sorted(states), [STATES[s] for s in states]


@given(
    bands=thresholds(),
    dwell=st.floats(1.0, 120.0),
    smoothing=st.floats(0.0, 30.0),
    history=histories(),
)
def test_the_dwell_spaces_every_change_except_into_critical(
    bands: dict[str, float], dwell: float, smoothing: float, history: list[tuple[float, float]]
) -> None:
    config = ThrottleSection(**bands, min_dwell_s=dwell, label_smoothing_s=smoothing)
    policy = ThrottlePolicy(config)
    last_change: float | None = None
    now = 1000.0
    for step, temp in history:
        now += step
        decision = policy.update(Readings(cpu_temp_c=temp), now)
        if not decision.changed:
            continue
        if decision.state != "critical" and last_change is not None:
            assert now - last_change >= dwell, (decision, now - last_change)
        last_change = now
