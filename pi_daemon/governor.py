"""SensorGovernor: the daemon's Governor, built from sensors and the throttle policy.

The loop calls `poll(now)` once per iteration (per frame, or once a second while
paused); sensors are read and the policy run only every `poll_interval_s`, because
reading sysfs and /proc every frame would cost more than it tells. In between, the
last Decision is returned unchanged.

Only the loop thread calls `poll`, so no lock is needed.
"""

from __future__ import annotations

import logging

from pi_daemon.config import Config
from pi_daemon.daemon import Decision
from pi_daemon.events import Event, emit
from pi_daemon.sensors import Readings, Sensors
from pi_daemon.throttle import STATES, ThrottleDecision, ThrottlePolicy

log = logging.getLogger(__name__)

# Decision.readings keys: other modules (Prometheus metrics, the status line, summaries)
# read exactly these names. Keep them stable.
READING_KEYS = (
    "cpu_temp_c",
    "swap_used_bytes",
    "swap_in_per_s",
    "mem_available_bytes",
    "rss_bytes",
    "undervoltage",
    "throttled_flags",
)


class SensorGovernor:
    """Polls `sensors` at most every `poll_interval_s` and applies `policy`."""

    def __init__(self, sensors: Sensors, policy: ThrottlePolicy, poll_interval_s: float) -> None:
        self.sensors = sensors
        self.policy = policy
        self.poll_interval_s = poll_interval_s
        self._next_poll: float | None = None
        self._decision = Decision()

    @classmethod
    def from_config(cls, config: Config) -> SensorGovernor:
        return cls(
            Sensors(config.sensors),
            ThrottlePolicy(config.throttle),
            config.sensors.poll_interval_s,
        )

    def poll(self, now: float) -> Decision:
        """The current Decision, refreshed when the poll interval has passed."""
        if self._next_poll is not None and now < self._next_poll:
            return self._decision
        self._next_poll = now + self.poll_interval_s
        readings = self.sensors.read(now)
        verdict = self.policy.update(readings, now)
        if verdict.changed:
            self._report(verdict, readings)
        self._decision = Decision(
            state=verdict.state,
            min_interval_s=verdict.min_interval_s,
            pause=verdict.pause,
            readings=readings_for_decision(readings),
        )
        return self._decision

    @staticmethod
    def _report(verdict: ThrottleDecision, readings: Readings) -> None:
        # Escalating into hot or critical needs an operator's eye; the rest is routine.
        alarming = verdict.escalated and STATES.index(verdict.state) >= STATES.index("hot")
        temp = readings.cpu_temp_c
        emit(
            log,
            logging.WARNING if alarming else logging.INFO,
            Event.THROTTLE,
            "throttle %s -> %s: %s (%s, %s)",
            verdict.previous,
            verdict.state,
            verdict.reason,
            f"{temp:.1f} °C" if temp is not None else "temperature n/a",
            "paused" if verdict.pause else f"min interval {verdict.min_interval_s * 1e3:.0f} ms",
            throttle_state=verdict.state,
            throttle_previous=verdict.previous,
            throttle_reason=verdict.reason,
            cpu_temp_c=round(temp, 1) if temp is not None else None,
            min_interval_ms=round(verdict.min_interval_s * 1e3),
        )


def readings_for_decision(readings: Readings) -> dict[str, object]:
    """The readings other modules consume, under their stable names, when available."""
    available = readings.available()
    return {key: available[key] for key in READING_KEYS if key in available}
