"""Log handler setup, in one place: journald under systemd, stderr otherwise."""

from __future__ import annotations

import logging
import sys

STDERR_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def setup_logging(level: str = "info") -> None:
    """Route the package's loggers to stderr with a compact format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT, "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level.upper())
