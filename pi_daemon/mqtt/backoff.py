"""When to try the broker again: exponential backoff with jitter, and a long fixed wait after
the broker refused the credentials. Pure logic, tested with tables."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Reconnect timing. Not config keys: the defaults suit a fleet, tests shorten them."""

    # After a failure: initial_s, doubling per failure, capped at max_s ...
    initial_s: float = 1.0
    max_s: float = 60.0
    # ... each delay spread by +-jitter (a fraction), so forty Pis that lost the same broker
    # do not all knock at the same instant when it comes back.
    jitter: float = 0.2
    # Wrong credentials will not fix themselves: try again rarely, not in a hot loop.
    unauthorized_s: float = 300.0
    # A connection that stayed up this long resets the backoff; one that the broker drops at
    # once (a duplicate client id, an ACL kick) keeps backing off instead of flapping.
    stable_s: float = 10.0
    # TCP connect plus TLS handshake, on the network thread (paho's default).
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s):
            raise ValueError("need 0 < initial_s <= max_s")
        if not 0 <= self.jitter < 1:
            raise ValueError("need 0 <= jitter < 1")
        if self.unauthorized_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("unauthorized_s and connect_timeout_s must be > 0")


class Backoff:
    """The next delay after each failure; `reset()` after a stable connection."""

    def __init__(self, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rand = rand
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self, unauthorized: bool = False) -> float:
        policy = self.policy
        if unauthorized:
            base = policy.unauthorized_s
        else:
            base = min(policy.max_s, policy.initial_s * 2 ** min(self._failures, 62))
            self._failures += 1
        return base * (1 + policy.jitter * (2 * self._rand() - 1))
