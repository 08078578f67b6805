"""Giving back memory the process no longer uses: the model file's pages after loading.

The TFLite interpreter maps the model file and reads its weights while XNNPACK packs them
into its own buffers (at `allocate_tensors()` and the first `invoke()`). From then on a
fully delegated model never touches the file's weight pages again, yet they stay mapped
and count in the daemon's resident set: about 5 MiB for the bundled model, 7 % of its
budget on a 1 GB Pi. `release_mapped_file(path)` tells the kernel we are done with them
(`madvise(MADV_DONTNEED)`): the mapping stays valid, and should anything read it again
the kernel pages it back in from the page cache. Only clean, read-only file pages are
released, which is what makes this safe: nothing is lost that the file does not hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # <sys/mman.h>, the same value on every Linux architecture
MAPS = "/proc/self/maps"


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str


def file_mappings(path: Path, maps: str = MAPS) -> list[Mapping]:
    """This process's read-only mappings of `path` (by its resolved name)."""
    wanted = str(path.resolve())
    found = []
    try:
        with open(maps, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or parts[5].rstrip("\n") != wanted:
                    continue
                perms = parts[1]
                if "w" in perms:  # never drop pages a writable mapping may have changed
                    continue
                start, end = (int(value, 16) for value in parts[0].split("-"))
                found.append(Mapping(start, end, perms, wanted))
    except OSError:
        return []
    return found


def release_mapped_file(path: Path) -> int:
    """Drop this process's resident pages of read-only mappings of `path`; bytes released
    from the address space (0 when there is nothing to do or it cannot be done here)."""
    mappings = file_mappings(path)
    if not mappings:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the process already has
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    released = 0
    for mapping in mappings:
        length = mapping.end - mapping.start
        if madvise(mapping.start, length, MADV_DONTNEED) == 0:
            released += length
        else:
            log.debug("madvise(%s) failed: %s", mapping.path, os.strerror(ctypes.get_errno()))
    return released


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc's malloc_trim).

    Loading leaves big transient buffers behind: the model file read for its sha256, the
    decoded full-size stills before prescaling. Freed, they stay in the heap, because glibc
    raises its mmap threshold after freeing a large block and serves the next ones from the
    heap. About 5 MiB of RSS, once, after start-up; a no-op where malloc_trim is missing.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
