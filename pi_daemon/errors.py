"""Errors that end the program with one line and a sysexits(3) code.

Anything the user can fix (bad config, bad model, no camera) is raised as a
`PiDaemonError` subclass; the CLI prints `str(error)` on one line and exits with
`error.exit_code`. No traceback reaches the user for these.
"""

from __future__ import annotations

EX_OK = 0
EX_USAGE = 64
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CONFIG = 78


class PiDaemonError(Exception):
    """Base class: a problem the operator can fix, reported in one line."""

    exit_code = EX_SOFTWARE


class UsageError(PiDaemonError):
    """A command-line argument is wrong (argparse's errors too)."""

    exit_code = EX_USAGE


class ConfigError(PiDaemonError):
    """The config file is missing, unparsable or invalid. Never restart on it."""

    exit_code = EX_CONFIG


class ModelError(PiDaemonError):
    """The model or its labels cannot be used. Also a configuration problem."""

    exit_code = EX_CONFIG


class InputError(PiDaemonError):
    """An input file named on the command line cannot be read."""

    exit_code = EX_NOINPUT


class SourceUnavailable(PiDaemonError):
    """No camera or stream could be opened; systemd may retry later."""

    exit_code = EX_UNAVAILABLE


class SourceFailed(PiDaemonError):
    """The frame source kept failing mid-run; exit so systemd restarts us."""

    exit_code = EX_UNAVAILABLE
