"""Commands from `<topic_prefix>/<device_id>/set`: exactly {"command": "pause"|"resume"|"reload"}.

Anything else is rejected with a reason for the one journal line, and never applied.
"""

from __future__ import annotations

import json

from pi_daemon.mqtt.status import Command

MAX_COMMAND_BYTES = 1024
_CHOICES = ", ".join(command.value for command in Command)


def parse_command(payload: bytes, retained: bool = False) -> Command | str:
    """The command, or why the message is rejected (a plain str; test with
    `isinstance(result, Command)`, as a Command is a str too)."""
    if retained:
        # A retained command would be applied again at every reconnect.
        return "retained message ignored (publish commands without the retain flag)"
    if len(payload) > MAX_COMMAND_BYTES:
        return f"{len(payload)} bytes, more than {MAX_COMMAND_BYTES}"
    try:
        message = json.loads(payload.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return f"not JSON: {error}"
    if not isinstance(message, dict):
        return f"not a JSON object ({type(message).__name__})"
    extra = sorted(set(message) - {"command"})
    if extra:
        return f"unknown key {', '.join(map(repr, extra))} (only 'command')"
    value = message.get("command")
    if not isinstance(value, str):
        return f'"command" must be one of {_CHOICES}, got {json.dumps(value)[:40]}'
    try:
        return Command(value)
    except ValueError:
        return f"unknown command {json.dumps(value)[:40]} (one of {_CHOICES})"


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)


def describe(payload: bytes) -> str:
    """The payload for a log line: short and printable."""
    text = payload[:60].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text + ("..." if len(payload) > 60 else "")
