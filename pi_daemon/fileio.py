"""Reading the files an operator points us at, safely: regular files only, size-bounded.

Every config, model, manifest, labels, image, password or sensor file the daemon reads,
and the events file it appends to, goes through here, so one mechanism decides what a bad
path does:

* a FIFO, socket or device (`/dev/zero`, a named pipe) is refused instead of blocking
  forever in `open()` or reading until memory runs out: the file is opened with
  O_NONBLOCK and checked with fstat before a byte is read;
* nothing larger than the caller's limit is read;
* text is UTF-8 with an optional byte-order mark, which is dropped (Windows editors add
  one, and `journalctl LABEL=...` would never match a label that kept it).

Errors are `FileProblem`, an OSError whose `reason` is a short phrase for a one-line
message ("not a regular file", "larger than 1 MiB", "No such file or directory").
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

BOM = "\ufeff"
KIB = 1024
MIB = 1024 * KIB


class FileProblem(OSError):
    """A file that cannot be used; `reason` is a phrase fit for a one-line message."""

    def __init__(self, path: str | Path, reason: str, code: int = 0) -> None:
        super().__init__(code, reason, str(path))
        self.path = str(path)
        self.reason = reason

    @property
    def missing(self) -> bool:
        return self.errno == errno.ENOENT


def _size_text(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit >= MIB and limit % MIB == 0 else f"{limit} bytes"


def open_regular(path: str | Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A file descriptor for `path`, which must be (or, with O_CREAT, become) a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; it is
    cleared again once fstat has shown a regular file (where it means nothing anyway).
    """
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise FileProblem(path, "not a regular file (a FIFO)", error.errno) from None
        raise FileProblem(path, error.strerror or str(error), error.errno or 0) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(path, f"not a regular file ({_kind(info.st_mode)})", errno.EINVAL)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | Path) -> int:
    """The size of `path` if it is a regular file, else FileProblem (for files that a
    library opens by name, such as a video handed to OpenCV: a FIFO would block it)."""
    fd = open_regular(path)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def open_append(path: str | Path, mode: int = 0o644) -> int:
    """A write-only O_APPEND descriptor for `path`, created if missing; regular files only."""
    return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)


def describe(error: OSError) -> str:
    """A short reason for any OSError: FileProblem's own phrase, else strerror."""
    if isinstance(error, FileProblem):
        return error.reason
    return error.strerror or str(error)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The whole file, at most `limit` bytes (FileProblem if it is larger)."""
    fd = open_regular(path)
    try:
        chunks, total = [], 0
        while True:
            # /proc and /sys files report size 0 or 4096 whatever they hold: read, don't stat.
            chunk = os.read(fd, min(1 * MIB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileProblem(path, f"larger than {_size_text(limit)}", errno.EFBIG)
    except OSError as error:
        if isinstance(error, FileProblem):
            raise
        raise FileProblem(path, error.strerror or str(error), error.errno or 0) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: str | Path, limit: int = 1 * MIB, encoding: str = "utf-8") -> str:
    """The file as text, without a leading byte-order mark. FileProblem on any problem."""
    data = read_bytes(path, limit)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise FileProblem(
            path, f"not {encoding.upper()} text (byte {error.start})", errno.EILSEQ
        ) from None
    return text[1:] if text.startswith(BOM) else text
