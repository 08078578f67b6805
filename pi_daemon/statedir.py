"""Where the daemon keeps what must survive a restart: sequence numbers, the MQTT outbox,
snapshots. Decided once at start-up; everything else is handed the answer.

`output.state_dir` in the config wins. Otherwise, under systemd, the unit's
`StateDirectory=` (systemd passes it as $STATE_DIRECTORY and creates it for the service
user); otherwise /var/lib/pi-daemon when we may create it (root on a dev box), else the
XDG state directory of the user running it, so `pi-daemon run` works from a shell too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pi_daemon.errors import ConfigError

SYSTEM_STATE_DIR = Path("/var/lib/pi-daemon")
EXPLICIT = ("output.state_dir", "$STATE_DIRECTORY")


def candidates(configured: str, env: Mapping[str, str]) -> list[tuple[str, Path]]:
    """(where the answer came from, directory), most specific first."""
    if configured:
        return [("output.state_dir", Path(configured))]
    found = []
    if env.get("STATE_DIRECTORY"):
        # systemd joins several StateDirectory= entries with ':'; ours is the first.
        found.append(("$STATE_DIRECTORY", Path(env["STATE_DIRECTORY"].split(":")[0])))
    found.append(("default", SYSTEM_STATE_DIR))
    xdg = env.get("XDG_STATE_HOME") or (
        os.path.join(env["HOME"], ".local", "state") if env.get("HOME") else ""
    )
    if xdg:
        found.append(("$XDG_STATE_HOME", Path(xdg) / "pi-daemon"))
    return found


def resolve_state_dir(configured: str = "", env: Mapping[str, str] | None = None) -> Path:
    """The first usable state directory, created if needed; ConfigError if none is."""
    env = os.environ if env is None else env
    tried = []
    for origin, directory in candidates(configured, env):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            if os.access(directory, os.W_OK | os.X_OK) and directory.is_dir():
                return directory
            problem = "not writable"
        except OSError as error:
            problem = error.strerror or str(error)
        if origin in EXPLICIT:
            # A directory someone chose that does not work is an error, not a reason to
            # look elsewhere: events would silently land somewhere nobody looks.
            raise ConfigError(f"{origin}: {directory}: cannot use as state directory: {problem}")
        tried.append(f"{directory} ({problem})")
    raise ConfigError("no usable state directory: tried " + ", ".join(tried))
