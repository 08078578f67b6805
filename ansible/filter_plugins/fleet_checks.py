"""Filters the fleet playbook's roles share: checking variables, and facts about a target.

Pure functions of their arguments (no Ansible imports beyond the error type), so that
tests/system/test_ansible.py checks them with tables of cases:

* `checked_vars(rules, values)`: every role variable against its rule (type and range),
  without coercing anything: "9110x" is not a port, "maybe" is not a boolean and 2.9 is
  not a thread count. Returns every problem, each naming the Ansible variable, and the
  values converted to their types (what the templates render).
* `booted_target(root, init_root, run_systemd)`: whether the stat results of `/`,
  `/proc/1/root/.` and `/run/systemd/system` on a target prove that it is a booted
  system, rather than a chroot or a mounted image whose root merely looks like one.
* `differences(wanted, recorded)`: the keys of `wanted` whose values `recorded` does not
  have (what a host should run against the state that last passed a health check).
* `swap_areas(text)`: the swap areas named in `/proc/swaps`.
* `swap_disk_problem(...)`: why a swap size does not fit the target's disk, if it does not.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

try:  # Ansible is there whenever a playbook calls these; the tests import them without it.
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only outside Ansible
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

# What `-e name=value` on the command line gives: text. These are the spellings accepted
# for each type; anything else is an error, never a guess.
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
TRUE_TEXT = frozenset({"true", "yes", "on"})
FALSE_TEXT = frozenset({"false", "no", "off"})

TYPES = (
    "int",
    "float",
    "bool",
    "str",
    "path",
    "int_list",
    "str_list",
    "str_dict",
    "auto_bool",
    "dict_list",
)


class Invalid(ValueError):
    """One variable's value does not fit its rule; the message says what it must be."""


def _shown(value: Any) -> str:
    """The value as the operator wrote it, quoted when it is text."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _integer(value: Any) -> int:
    # bool is a subclass of int in Python: True is not a thread count.
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    raise Invalid("must be a whole number")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise Invalid("must be a number")
    # Extra vars given as key=value on the command line arrive as text.
    is_text_number = isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip())
    if not (isinstance(value, int | float) or is_text_number):
        raise Invalid("must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise Invalid("must be a finite number")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_TEXT | FALSE_TEXT:
        return value.strip().lower() in TRUE_TEXT
    raise Invalid("must be true or false")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("must be a string")
    return str(value)


def _range_text(rule: Mapping[str, Any]) -> str:
    low, high, above = rule.get("min"), rule.get("max"), rule.get("gt")
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if above is not None and high is not None:
        return f"more than {above} and at most {high}"
    if low is not None:
        return f"at least {low}"
    if above is not None:
        return f"more than {above}"
    return f"at most {high}"


def _in_range(number: float, rule: Mapping[str, Any]) -> None:
    low, high, above = rule.get("min"), rule.get("max"), rule.get("gt")
    if (
        (low is not None and number < low)
        or (high is not None and number > high)
        or (above is not None and number <= above)
    ):
        raise Invalid("must be " + _range_text(rule))


def _string_rules(text: str, rule: Mapping[str, Any]) -> str:
    if rule.get("nonempty") and not text.strip():
        raise Invalid("must not be empty")
    choices = rule.get("choices")
    if choices is not None and text not in choices:
        raise Invalid("must be one of " + ", ".join(str(c) for c in choices))
    pattern = rule.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, text):
        raise Invalid(rule.get("pattern_means") or f"must match {pattern}")
    return text


def _list(value: Any, rule: Mapping[str, Any]) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise Invalid("must be a list")
    length = rule.get("length")
    if length is not None and len(value) != length:
        raise Invalid(f"must be a list of {length} items")
    return list(value)


def check_value(value: Any, rule: Mapping[str, Any]) -> Any:
    """The value converted to the rule's type, or Invalid saying what it must be."""
    kind = rule["type"]
    if value is None:
        if rule.get("nullable"):
            return None
        raise Invalid("must be set")
    if kind == "int":
        number = _integer(value)
        _in_range(number, rule)
        return number
    if kind == "float":
        number = _number(value)
        _in_range(number, rule)
        return number
    if kind == "bool":
        return _boolean(value)
    if kind == "auto_bool":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return _boolean(value)
        except Invalid:
            raise Invalid("must be auto, true or false") from None
    if kind == "str":
        return _string_rules(_text(value), rule)
    if kind == "path":
        text = _text(value)
        if not text.startswith("/"):
            raise Invalid("must be an absolute path")
        return _string_rules(text, rule)
    if kind == "int_list":
        items = _list(value, rule)
        try:
            numbers = [_integer(item) for item in items]
            for number in numbers:
                _in_range(number, rule)
        except Invalid as error:
            raise Invalid(f"each item {error}") from None
        return numbers
    if kind == "str_list":
        items = _list(value, rule)
        if not all(isinstance(item, str) for item in items):
            raise Invalid("must be a list of strings")
        return [_string_rules(str(item), rule) for item in items]
    if kind == "dict_list":
        # Only the shape: what each mapping holds is the role's own check (e.g.
        # pi_daemon_instances, filter_plugins/pi_daemon_instances.py).
        items = _list(value, rule)
        if not all(isinstance(item, Mapping) for item in items):
            raise Invalid("must be a list of mappings")
        return items
    if kind == "str_dict":
        if not isinstance(value, Mapping):
            raise Invalid("must be a mapping")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise Invalid("must map strings to strings")
        return {str(k): str(v) for k, v in value.items()}
    raise AnsibleFilterError(f"checked_vars: unknown type {kind!r} (known: {', '.join(TYPES)})")


def checked_vars(rules: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check every variable that has a rule.

    Returns {"problems": ["name=value: must be ...", ...], "values": {name: typed value}}.
    A variable in error is left out of "values".
    """
    problems: list[str] = []
    typed: dict[str, Any] = {}
    for rule in rules:
        name = rule["name"]
        if name not in values:
            problems.append(f"{name}: not defined")
            continue
        try:
            typed[name] = check_value(values[name], rule)
        except Invalid as error:
            problems.append(f"{name}={_shown(values[name])}: {error}")
    return {"problems": problems, "values": typed}


def booted_target(
    root: Mapping[str, Any], init_root: Mapping[str, Any], run_systemd: Mapping[str, Any]
) -> bool:
    """Positive evidence that the target is a booted system, from three `stat` results.

    * `/run/systemd/system` is a directory: systemd created it at boot on /run (a tmpfs);
      an image's /run is empty.
    * `/proc/1/root/.` is the same directory as `/`: we stand in the root of PID 1. In a
      chroot with /proc mounted, PID 1 is the host's init and its root is the host's; with
      no /proc (a mounted SD-card image), there is nothing to compare, which is no proof.

    Ansible's `is_chroot` fact instead falls back, without /proc, to "is / inode 2",
    which every ext4 root is, mounted image or not.
    """
    if not (root.get("exists") and init_root.get("exists") and run_systemd.get("isdir")):
        return False
    return (root.get("dev"), root.get("inode")) == (init_root.get("dev"), init_root.get("inode"))


def differences(wanted: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """The keys of `wanted` whose value in `recorded` is missing or different."""
    return [key for key, value in wanted.items() if key not in recorded or recorded[key] != value]


def swap_areas(text: str) -> list[str]:
    """The Filename column of /proc/swaps (spaces in names are escaped as \\040 there)."""
    lines = text.splitlines()[1:]
    return [line.split()[0].replace("\\040", " ") for line in lines if line.split()]


def swap_disk_problem(
    size_mb: int,
    block_size: int,
    blocks: int,
    blocks_available: int,
    current_file_bytes: int,
    max_disk_percent: int,
    min_free_mb: int,
) -> str:
    """Why a swap file of `size_mb` MiB does not fit the filesystem that will hold it
    (from `stat --file-system`: block size, total and available blocks), or "".

    It may take at most `max_disk_percent` of the filesystem, and must leave at least
    `min_free_mb` available after it is made. An existing swap file is replaced, so its
    size counts as available.
    """
    mib = 1024 * 1024
    size_total_mb = block_size * blocks // mib
    available_mb = (block_size * blocks_available + max(current_file_bytes, 0)) // mib
    limit_mb = size_total_mb * max_disk_percent // 100
    if size_mb > limit_mb:
        return (
            f"{size_mb} MB is more than {max_disk_percent}% of the {size_total_mb} MB "
            f"filesystem that holds the swap file (at most {limit_mb} MB; "
            "swap_max_disk_percent)"
        )
    if available_mb - size_mb < min_free_mb:
        return (
            f"{size_mb} MB would leave {available_mb - size_mb} MB of the {available_mb} MB "
            f"available on the filesystem that holds the swap file; at least {min_free_mb} MB "
            f"must stay free (swap_min_free_mb): at most {max(available_mb - min_free_mb, 0)} MB"
        )
    return ""


class FilterModule:
    """Ansible's entry point for this file."""

    def filters(self) -> dict[str, Any]:
        return {
            "checked_vars": checked_vars,
            "booted_target": booted_target,
            "differences": differences,
            "swap_areas": swap_areas,
            "swap_disk_problem": swap_disk_problem,
        }
