"""JPEG snapshots of events: encoded only on events, written atomically, kept within a quota.

`SnapshotStore.save()` encodes a frame with Pillow (imported on first use), writes it
to a temporary file in the snapshot directory, fsyncs it, renames it into place and
fsyncs the directory, so a reader (or a power cut) only ever sees whole JPEGs. Before
each write the oldest snapshots are deleted until the new one fits in
`snapshots_max_bytes`. A full disk, a read-only or missing directory, or a frame that
cannot be grabbed never raises into the caller: the first failure is logged once, the
recovery once, and the event simply has no snapshot.

Frames are anything with `pixels` and `fmt` as in `pi_daemon.preprocess.Frame`:
RGB or BGR HxWx3, or planar YUV420 as picamera2's main stream delivers it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pi_daemon.config import SnapshotsSection

log = logging.getLogger(__name__)

SUFFIX = ".jpg"
TEMP_PREFIX = ".snapshot-"
TEMP_SUFFIX = ".tmp"
SNAPSHOTS_SUBDIR = "snapshots"
_UNSAFE = re.compile(r"[^a-z0-9]+")
_MAX_LABEL_CHARS = 40


def snapshot_directory(section: SnapshotsSection, state_dir: Path) -> Path:
    """Where snapshots go: `[snapshots] directory`, else `snapshots/` in the daemon's state
    directory (pi_daemon/statedir.py; systemd's StateDirectory= under the unit). A relative
    `directory` is the caller's to resolve against the config file."""
    return Path(section.directory) if section.directory else state_dir / SNAPSHOTS_SUBDIR


def _limited_to_full(plane: np.ndarray, offset: float, span: float, centre: float) -> np.ndarray:
    values = (plane.astype(np.float32) - offset) * (255.0 / span) + centre
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _i420_planes(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V of planar I420 ((H*3/2) x W)."""
    rows, width = pixels.shape
    height = rows * 2 // 3
    flat = np.ascontiguousarray(pixels).reshape(-1)
    luma = width * height
    chroma = (width // 2) * (height // 2)
    y = flat[:luma].reshape(height, width)
    u = flat[luma : luma + chroma].reshape(height // 2, width // 2)
    v = flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2)
    return y, u, v


def encode_jpeg(pixels: np.ndarray, fmt: str, quality: int = 85) -> bytes:
    """A JPEG of the frame, with Pillow.

    YUV420 goes to the encoder as YCbCr without a trip through RGB: JPEG stores YCbCr
    anyway. The camera's limited-range BT.601 values (Y 16-235, chroma 16-240; what
    picamera2 gives a main stream under 1280x720) are stretched to JPEG's full range.
    """
    from PIL import Image

    if fmt == "YUV420":
        y, u, v = _i420_planes(pixels)
        height, width = y.shape
        planes = [_limited_to_full(y, 16.0, 219.0, 0.0)]
        for chroma in (u, v):
            full = _limited_to_full(chroma, 128.0, 224.0, 128.0)
            # Back to full size for Pillow; the encoder subsamples 4:2:0 again.
            planes.append(np.repeat(np.repeat(full, 2, axis=0), 2, axis=1)[:height, :width])
        image = Image.merge("YCbCr", [Image.fromarray(np.ascontiguousarray(p)) for p in planes])
    elif fmt == "RGB":
        image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    elif fmt == "BGR":
        image = Image.fromarray(np.ascontiguousarray(pixels[:, :, ::-1]), "RGB")
    else:
        raise ValueError(f"cannot encode pixel format {fmt!r}")
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def snapshot_name(label: str, frame_id: int, wall_time: float) -> str:
    """`20260412T153012.345Z-frame1234-tiger-cat.jpg`: sortable, readable, shell-safe."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall_time))
    millis = int((wall_time % 1) * 1000)
    slug = _UNSAFE.sub("-", label.lower()).strip("-")[:_MAX_LABEL_CHARS] or "frame"
    return f"{stamp}.{millis:03d}Z-frame{frame_id}-{slug}{SUFFIX}"


@dataclass
class _Kept:
    mtime_ns: int
    name: str
    size: int


class SnapshotStore:
    """Snapshots under one directory, at most `max_bytes` in all; never raises on I/O."""

    def __init__(self, directory: str | Path, max_bytes: int, quality: int = 85) -> None:
        if max_bytes <= 0 or not 1 <= quality <= 95:
            raise ValueError("need max_bytes > 0 and 1 <= quality <= 95")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.quality = quality
        # _lock protects everything below: events may come from more than one thread.
        self._lock = threading.Lock()
        self._kept: list[_Kept] | None = None  # oldest first; None until scanned
        self._total = 0
        self._failing = False
        self._grab_failing = False
        #: Snapshots written and snapshots that could not be, since the store was made.
        self.saved = 0
        self.failed = 0

    @classmethod
    def from_config(cls, section: SnapshotsSection, directory: Path) -> SnapshotStore:
        return cls(directory, section.snapshots_max_bytes, section.quality)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def take(
        self, grab: Callable[[], Any], label: str, frame_id: int, wall_time: float | None = None
    ) -> str | None:
        """`save()` the frame `grab()` returns (e.g. `source.snapshot`); None if either fails."""
        try:
            frame = grab()
        except Exception as error:  # a camera fault must never reach the event path
            with self._lock:
                self.failed += 1
                if not self._grab_failing:
                    self._grab_failing = True
                    log.warning(
                        "snapshot for %s: cannot get a still from the source: %s "
                        "(further failures are not logged until one works)",
                        label,
                        error,
                    )
            return None
        with self._lock:
            if self._grab_failing:
                self._grab_failing = False
                log.info("snapshots: the source hands over stills again")
        return self.save(frame, label, frame_id, wall_time)

    def save(
        self, frame: Any, label: str, frame_id: int, wall_time: float | None = None
    ) -> str | None:
        """Write `frame` as a JPEG; return its file name, or None (logged once) if not.

        The name carries `wall_time`, by default the frame's own capture time.
        """
        if wall_time is None:
            wall_time = getattr(frame, "wall_time", None)
        stamp = time.time() if wall_time is None else wall_time
        try:
            data = encode_jpeg(frame.pixels, frame.fmt, self.quality)
        except Exception as error:  # a malformed frame is the caller's bug: say so once
            self._failed(f"cannot encode frame {frame_id}: {error}")
            return None
        with self._lock:
            try:
                name = self._write(data, snapshot_name(label, frame_id, stamp))
            except OSError as error:
                self._kept = None  # rescan next time: someone may have fixed or tidied it
                self._failed(_describe(error), locked=True)
                return None
            self.saved += 1
            if self._failing:
                self._failing = False
                log.info("snapshots: writing under %s again", self.directory)
            return name

    # -- internals (called with _lock held) ---------------------------------------------

    def _failed(self, reason: str, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                self._failed(reason, locked=True)
            return
        self.failed += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "snapshots: %s; classification goes on without snapshots "
                "(further failures are not logged until one is written)",
                reason,
            )

    def _scan(self) -> list[_Kept]:
        """Existing snapshots, oldest first; leftovers of an interrupted write are removed."""
        kept = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                    _unlink(self.directory / entry.name)
                elif entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    kept.append(_Kept(info.st_mtime_ns, entry.name, info.st_size))
        kept.sort(key=lambda item: (item.mtime_ns, item.name))
        self._total = sum(item.size for item in kept)
        return kept

    def _write(self, data: bytes, name: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._kept is None:
            self._kept = self._scan()
        kept = self._kept
        if len(data) > self.max_bytes:
            raise OSError(
                errno.EFBIG,
                f"a {len(data)}-byte JPEG is larger than snapshots_max_bytes ({self.max_bytes})",
            )
        while kept and self._total + len(data) > self.max_bytes:
            _unlink(self.directory / kept[0].name, strict=True)  # or stay over the quota
            self._total -= kept.pop(0).size
        taken = {item.name for item in kept[-8:]}
        stem, number = name[: -len(SUFFIX)], 1
        while name in taken or (self.directory / name).exists():
            number += 1
            name = f"{stem}-{number}{SUFFIX}"
        final = self.directory / name
        temp = self.directory / f"{TEMP_PREFIX}{name}{TEMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(temp)
            raise
        os.close(fd)
        try:
            os.rename(temp, final)
            _fsync_directory(self.directory)
        except BaseException:
            _unlink(temp)
            raise
        info = final.stat()
        kept.append(_Kept(info.st_mtime_ns, name, len(data)))
        self._total += len(data)
        return name


def _unlink(path: Path, strict: bool = False) -> None:
    """Remove a file that may already be gone; `strict` raises any other failure."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass  # someone tidied up already
    except OSError as error:
        if strict:
            raise
        log.debug("cannot remove %s: %s", path, error)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(error: OSError) -> str:
    reason = error.strerror or str(error)
    where = error.filename or ""
    return f"cannot write {where}: {reason}" if where else reason
