"""SensorGovernor: the daemon's Governor, built from sensors and the throttle policy.

Sensors are read, and the policy run, on the governor's own thread every
`poll_interval_s`; the loop's `poll(now)` only returns the latest Decision. A sensor that
hangs (vcgencmd waiting on the firmware for its 2 s timeout, a wedged sysfs driver) delays
the next reading, never a frame. Reading sysfs and /proc every frame would cost more than
it tells anyway.

The first `poll()` starts the thread and waits up to FIRST_READING_WAIT_S for the first
reading, so a board that starts hot is throttled from its first frame; after that `poll()`
never blocks. If readings stop coming (a sensor stuck for good), one WARNING says so and the
last Decision stands.
"""

from __future__ import annotations

import logging
import threading
import time

from pi_daemon.config import Config
from pi_daemon.control import Decision
from pi_daemon.events import Event, emit
from pi_daemon.readings import Readings
from pi_daemon.sensors import Sensors
from pi_daemon.throttle import STATES, ThrottleDecision, ThrottlePolicy

log = logging.getLogger(__name__)

FIRST_READING_WAIT_S = 1.0
# No reading for this many poll intervals (and at least STUCK_MIN_S): the sensors are stuck.
STUCK_POLLS = 5
STUCK_MIN_S = 10.0


class SensorGovernor:
    """Polls `sensors` every `poll_interval_s` on its own thread and applies `policy`."""

    def __init__(self, sensors: Sensors, policy: ThrottlePolicy, poll_interval_s: float) -> None:
        self.sensors = sensors
        self.policy = policy
        self.poll_interval_s = poll_interval_s
        # _lock protects _decision and _read_at (written by the sensor thread, read by poll).
        self._lock = threading.Lock()
        self._decision = Decision()
        self._read_at: float | None = None
        self._first = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._warned_stuck = False

    @classmethod
    def from_config(cls, config: Config) -> SensorGovernor:
        return cls(
            Sensors(config.sensors),
            ThrottlePolicy(config.throttle),
            config.sensors.poll_interval_s,
        )

    def poll(self, now: float) -> Decision:
        """The latest Decision; never waits for a sensor (but for the very first reading)."""
        if self._thread is None:
            self._started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="sensors", daemon=True)
            self._thread.start()
            self._first.wait(FIRST_READING_WAIT_S)
        with self._lock:
            decision, read_at = self._decision, self._read_at
        self._check_stuck(read_at if read_at is not None else self._started_at)
        return decision

    def refresh(self, now: float) -> Decision:
        """Read every sensor and run the policy once, here and now (the sensor thread's
        step; tests and simulations call it directly with their own clock)."""
        readings = self.sensors.read(now)
        verdict = self.policy.update(readings, now)
        if verdict.changed:
            self._report(verdict, readings)
        decision = Decision(
            state=verdict.state,
            min_interval_s=verdict.min_interval_s,
            pause=verdict.pause,
            readings=readings,
        )
        with self._lock:
            self._decision, self._read_at = decision, time.monotonic()
        return decision

    def close(self) -> None:
        """Stop the sensor thread (it finishes a reading in progress on its own)."""
        self._closing.set()

    def _run(self) -> None:
        while not self._closing.is_set():
            started = time.monotonic()
            try:
                self.refresh(started)
            except Exception:  # a bug in a sensor must not end throttling silently
                log.exception("reading the sensors failed")
            finally:
                self._first.set()
            self._closing.wait(max(0.0, self.poll_interval_s - (time.monotonic() - started)))

    def _check_stuck(self, read_at: float) -> None:
        silent = time.monotonic() - read_at
        limit = max(STUCK_MIN_S, STUCK_POLLS * self.poll_interval_s)
        if silent > limit and not self._warned_stuck:
            self._warned_stuck = True
            log.warning(
                "no sensor reading for %.0f s (a sensor is stuck); throttling keeps its "
                "last decision",
                silent,
            )
        elif silent <= limit and self._warned_stuck:
            self._warned_stuck = False
            log.info("sensor readings are coming again")

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
