"""Append-only JSON Lines file of results and summaries, rotated by size.

Each event is one complete line, written and flushed to the kernel at once, so a
crash or SIGKILL loses nothing already written and never leaves half a line that
a reader could not parse. (It is not fsync'd per line: that would wear SD cards.)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO

from pi_daemon.errors import ConfigError
from pi_daemon.results import Result, Summary
from pi_daemon.sinks.base import Sink

log = logging.getLogger(__name__)


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._file: IO[str] | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as error:
            raise ConfigError(
                f"output.events_file: {self.path}: cannot open for append: {error.strerror}"
            ) from None
        self._size = self._file.tell()
        if self._size and not self._ends_with_newline():
            # A previous run was killed mid-write: start on a fresh line.
            self._file.write("\n")

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def _write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        if self._file is None:
            return
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        self._size += len(line.encode("utf-8"))

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if self.backup_count > 0:
            for index in range(self.backup_count - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def on_result(self, result: Result) -> None:
        self._write(result.as_dict())

    def on_summary(self, summary: Summary) -> None:
        self._write(summary.as_dict())

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
