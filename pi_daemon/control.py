"""What the loop is told and whom it tells: the governor's Decision, and the interfaces of
the governor and the service-manager notifier, with their do-nothing defaults.

Below the loop and the governor, so the governor does not import the loop it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pi_daemon.readings import Readings


@dataclass(frozen=True)
class Decision:
    """What the governor allows right now, and the readings it decided on."""

    state: str = "normal"
    min_interval_s: float = 0.0
    pause: bool = False
    readings: Readings = field(default_factory=Readings)


class Governor(Protocol):
    def poll(self, now: float) -> Decision: ...

    def close(self) -> None: ...


class Notifier(Protocol):
    def ready(self, status: str) -> None: ...
    def reloading(self) -> None: ...
    def progress(self, now: float) -> None: ...
    def status(self, text: str) -> None: ...
    def stopping(self) -> None: ...


class UnlimitedGovernor:
    """No throttling: used off-device and by `classify`/`bench`."""

    def poll(self, now: float) -> Decision:
        return Decision()

    def close(self) -> None:
        pass


class SilentNotifier:
    """No service manager to talk to."""

    def ready(self, status: str) -> None:
        pass

    def reloading(self) -> None:
        pass

    def progress(self, now: float) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def stopping(self) -> None:
        pass
