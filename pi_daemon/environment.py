"""Parsing the environment variables the daemon honours, strictly.

Values come from systemd, a unit file or a shell as bytes. `os.environ` holds bytes that
are not UTF-8 as lone surrogates (so `str.encode()` raises on them), and `str.isdigit()`
accepts "²" or "٣", which `int()` then refuses or reads as another number. So numbers here
are ASCII decimal digits only, within bounds, and anything else counts as absent; text
meant for a log line is shown escaped, never raw.
"""

from __future__ import annotations

# Longer than any value systemd sets (µs in 64 bits is 20 digits).
MAX_DIGITS = 20


def decimal(value: str | None, maximum: int = (1 << 64) - 1) -> int | None:
    """`value` as a non-negative int if it is plain ASCII decimal within `maximum`, else None."""
    if not value or len(value) > MAX_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= maximum else None


def shown(value: str) -> str:
    """A value for a log line: quoted, with control characters and undecodable bytes
    escaped (repr escapes lone surrogates), and cut to a sane length."""
    text = ascii(value[:200])
    return text if len(value) <= 200 else text[:-1] + "...'"
