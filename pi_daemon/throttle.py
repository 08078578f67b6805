"""The throttle policy: sensor readings and `now` in; a state and a frame pace out.

Pure (standard library and the config model only) so it behaves identically on a Pi,
in the tests and in `benchmarks/thermal_sim.py`.

States, by rising severity: normal < warm < hot < critical. The state is the most
severe of these conditions:

- **Temperature bands** (warm_c, hot_c, critical_c), each left only when the
  temperature falls hysteresis_c below the band's threshold, so noise at a
  threshold cannot flap it.
- **Firmware flags / under-voltage** (vcgencmd bits 0-3, or the rpi_volt alarm):
  at least *hot*. The firmware is already capping the clock or the supply is sagging;
  cutting our load cuts both heat and current draw, and a Pi that browns out can
  corrupt its SD card. The "since boot" bits (16-19) are history and are ignored.
- **Swap or memory pressure** (swap-in rate averaged over swap_window_s, swap used
  as a fraction of swap, or PSI `some avg10`): at least *warm*.
- **Available memory under mem_floor_mib**: *critical*, until it is back to
  mem_resume_mib.

Actions:

- *critical* pauses inference.
- Otherwise the minimum frame interval is the largest of: the thermal controller's
  interval, flags_min_interval_s while flags are set, pressure_min_interval_s while
  swap/memory pressure lasts.
- The **thermal controller** is proportional-integral on the *logarithm* of the
  frame interval, holding the SoC near setpoint_c: a smooth, throughput-keeping
  alternative to on/off. Log space because a 10 % longer interval removes about
  10 % of the inference heat whatever the model's speed, so one gain suits a 5 ms
  and a 50 ms model alike.

Dwell rule (safety first): after a state change the state holds for min_dwell_s,
which limits journal events and flapping; **entering critical is never delayed**.
Leaving critical is delayed, which only errs towards pausing longer. The intervals
follow the readings at every update; only the state label waits for the dwell.

An unavailable sensor (None) contributes nothing: it never throttles by itself.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pi_daemon.config import ThrottleSection

if TYPE_CHECKING:
    from pi_daemon.readings import Readings

STATES = ("normal", "warm", "hot", "critical")
NORMAL, WARM, HOT, CRITICAL = range(4)
# vcgencmd get_throttled bits 0-3: under-voltage, ARM capped, throttled, soft limit (now).
FLAGS_NOW_MASK = 0xF
MIB = 1024 * 1024
# Longest time step the integrator accepts: after a suspend or a stalled loop, one
# stale reading must not wind the controller up (or down) by minutes' worth.
MAX_STEP_S = 5.0


@dataclass(frozen=True)
class ThrottleDecision:
    """The policy's answer for one update."""

    state: str
    min_interval_s: float
    pause: bool
    reason: str
    previous: str  # the state before this update

    @property
    def changed(self) -> bool:
        return self.state != self.previous

    @property
    def escalated(self) -> bool:
        return STATES.index(self.state) > STATES.index(self.previous)


class ThrottlePolicy:
    """Stateful (hysteresis, dwell, integrator, swap window), but driven only by arguments."""

    def __init__(self, config: ThrottleSection | None = None) -> None:
        self.config = config or ThrottleSection()
        self._level = NORMAL
        self._changed_at = -math.inf
        self._last_now: float | None = None
        self._temp_level = NORMAL  # the temperature's own level, hysteresis applied
        self._temp_band = NORMAL  # warm/hot from the smoothed temperature
        self._temp_critical = False
        self._smoothed: float | None = None
        # ln(interval / start_interval_s) accumulated by the integral term, >= 0.
        self._integral = 0.0
        self._integral_max = math.log(self.config.max_interval_s / self.config.start_interval_s)
        self._mem_low = False
        self._swap_busy = False
        self._swap_full = False
        self._pressure_high = False
        self._swap_pages: deque[tuple[float, float]] = deque()  # (time, pages swapped in)

    @property
    def state(self) -> str:
        return STATES[self._level]

    def update(self, readings: Readings, now: float) -> ThrottleDecision:
        """Advance the policy to `now` with fresh readings."""
        step = 0.0 if self._last_now is None else min(max(now - self._last_now, 0.0), MAX_STEP_S)
        self._last_now = now
        conditions: list[tuple[int, str]] = []  # (level, why) for every active condition
        intervals = [self._thermal(readings.cpu_temp_c, step, conditions)]
        if self._flags(readings, conditions):
            intervals.append(self.config.flags_min_interval_s)
        if self._pressure(readings, now, step, conditions):
            intervals.append(self.config.pressure_min_interval_s)
        self._memory(readings.mem_available_bytes, conditions)

        previous = self._level
        wanted = max((level for level, _ in conditions), default=NORMAL)
        if wanted != self._level and (
            wanted == CRITICAL or now - self._changed_at >= self.config.min_dwell_s
        ):
            self._level = wanted
            self._changed_at = now
        return ThrottleDecision(
            state=STATES[self._level],
            min_interval_s=max(intervals),
            pause=self._level == CRITICAL,
            reason=self._reason(conditions),
            previous=STATES[previous],
        )

    # -- conditions ---------------------------------------------------------------------

    def _band(self, temp_c: float) -> int:
        c = self.config
        if temp_c >= c.critical_c:
            return CRITICAL
        if temp_c >= c.hot_c:
            return HOT
        return WARM if temp_c >= c.warm_c else NORMAL

    def _thermal(self, temp_c: float | None, step: float, out: list[tuple[int, str]]) -> float:
        """Update the temperature band and the PI controller; return its interval."""
        c = self.config
        if temp_c is None:
            # Unavailable: no band, and forget the integrator rather than act on old heat.
            self._temp_level = self._temp_band = NORMAL
            self._temp_critical = False
            self._smoothed = None
            self._integral = 0.0
            return 0.0
        # Critical follows every raw reading: entering it is never delayed.
        if temp_c >= c.critical_c:
            self._temp_critical = True
        elif temp_c < c.critical_c - c.hysteresis_c:
            self._temp_critical = False
        # The warm/hot label follows a short moving average, so reading jitter (the
        # Pi's sensor moves in ~0.5 °C steps) cannot flap it; it only names the state.
        if self._smoothed is None or c.label_smoothing_s <= 0:
            self._smoothed = temp_c
        else:
            self._smoothed += (temp_c - self._smoothed) * step / (c.label_smoothing_s + step)
        # Rise at a threshold; fall only hysteresis_c below it.
        band = min(self._band(self._smoothed), HOT)
        held = min(self._temp_band, self._band(self._smoothed + c.hysteresis_c), HOT)
        self._temp_band = max(band, held)
        self._temp_level = CRITICAL if self._temp_critical else self._temp_band
        if self._temp_level > NORMAL:
            out.append((self._temp_level, f"temperature {temp_c:.1f} °C"))

        error = temp_c - c.setpoint_c
        self._integral = min(
            max(self._integral + c.integral_gain * error * step, 0.0), self._integral_max
        )
        boost = self._integral + c.proportional_gain * error
        if boost <= 0.0:
            return 0.0
        return min(c.start_interval_s * math.exp(boost), c.max_interval_s)

    def _flags(self, readings: Readings, out: list[tuple[int, str]]) -> bool:
        active = False
        if readings.undervoltage:
            out.append((HOT, "under-voltage alarm"))
            active = True
        flags = (readings.throttled_flags or 0) & FLAGS_NOW_MASK
        if flags:
            out.append((HOT, f"firmware throttle flags {flags:#x}"))
            active = True
        return active

    def _pressure(
        self, readings: Readings, now: float, step: float, out: list[tuple[int, str]]
    ) -> bool:
        """Swap-in rate, swap fill and PSI, each with its own hysteresis."""
        c = self.config
        # Pages swapped in over the window / window length: a burst (a program starting)
        # averages out, sustained thrash does not. Missing readings count as zero.
        if readings.swap_in_per_s is not None and step > 0:
            self._swap_pages.append((now, readings.swap_in_per_s * step))
        while self._swap_pages and self._swap_pages[0][0] <= now - c.swap_window_s:
            self._swap_pages.popleft()
        rate = sum(pages for _, pages in self._swap_pages) / c.swap_window_s
        self._swap_busy = _hysteresis(
            self._swap_busy, rate, c.swap_in_limit_per_s, c.swap_in_resume_per_s
        )
        if self._swap_busy:
            out.append((WARM, f"swap-in {rate:.0f} pages/s over {c.swap_window_s:.0f} s"))

        used, total = readings.swap_used_bytes, readings.swap_total_bytes
        if used is None or not total:
            self._swap_full = False
        else:
            fraction = used / total
            self._swap_full = _hysteresis(
                self._swap_full, fraction, c.swap_used_limit_fraction, c.swap_used_resume_fraction
            )
            if self._swap_full:
                out.append((WARM, f"swap {fraction:.0%} used"))

        psi = readings.memory_pressure_some_avg10
        if psi is None:
            self._pressure_high = False
        else:
            self._pressure_high = _hysteresis(
                self._pressure_high, psi, c.pressure_limit_pct, c.pressure_resume_pct
            )
            if self._pressure_high:
                out.append((WARM, f"memory pressure {psi:.1f}%"))
        return self._swap_busy or self._swap_full or self._pressure_high

    def _memory(self, available: int | None, out: list[tuple[int, str]]) -> None:
        c = self.config
        if available is None:
            self._mem_low = False
            return
        if available < c.mem_floor_mib * MIB:
            self._mem_low = True
        elif available >= c.mem_resume_mib * MIB:
            self._mem_low = False
        if self._mem_low:
            out.append((CRITICAL, f"available memory {available / MIB:.0f} MiB"))

    def _reason(self, conditions: list[tuple[int, str]]) -> str:
        ranked = sorted(conditions, key=lambda item: -item[0])
        text = "; ".join(why for _, why in ranked) or "readings within limits"
        if max((level for level, _ in ranked), default=NORMAL) != self._level:
            text += f" (state held for min_dwell_s {self.config.min_dwell_s:g} s)"
        return text


def _hysteresis(active: bool, value: float, on_at: float, off_below: float) -> bool:
    """On at or above `on_at`; off only below `off_below` (< on_at)."""
    if value >= on_at:
        return True
    if value < off_below:
        return False
    return active
