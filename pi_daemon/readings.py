"""One poll of every sensor, as the throttle policy, the summaries and the metrics read it.

Its own small module so that the policy (pure), the governor, the metrics collector and the
status snapshot share one typed value, not a dict of string keys rebuilt in each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# The readings a summary event carries (and the README documents), in this order; the
# others (swap total, swap-out rate, PSI) feed the policy only.
SUMMARY_FIELDS = (
    "cpu_temp_c",
    "swap_used_bytes",
    "swap_in_per_s",
    "mem_available_bytes",
    "rss_bytes",
    "undervoltage",
    "throttled_flags",
)


@dataclass(frozen=True)
class Readings:
    """One poll of every sensor; None means unavailable (or, for rates, not yet known)."""

    cpu_temp_c: float | None = None
    undervoltage: bool | None = None
    # `vcgencmd get_throttled` bits: 0 under-voltage, 1 ARM capped, 2 throttled,
    # 3 soft temperature limit; 16-19 the same "since boot".
    throttled_flags: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_in_per_s: float | None = None  # pages per second
    swap_out_per_s: float | None = None  # pages per second
    mem_available_bytes: int | None = None
    rss_bytes: int | None = None
    memory_pressure_some_avg10: float | None = None  # percent, /proc/pressure/memory

    def available(self) -> dict[str, Any]:
        """The readings that are not None, keyed by field name."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def summary_fields(self) -> dict[str, Any]:
        """The available SUMMARY_FIELDS, under their stable names (summaries, events)."""
        values = asdict(self)
        return {key: values[key] for key in SUMMARY_FIELDS if values[key] is not None}
