"""`cv2.VideoCapture` on a V4L2 device index or path, a file, or an RTSP/HTTP URL."""

from __future__ import annotations

import logging
import os
import re
import stat
from typing import Any

from pi_daemon import fileio
from pi_daemon.errors import ConfigError, SourceUnavailable
from pi_daemon.frame import Frame
from pi_daemon.sources.base import FrameSource, SourceEnded, SourceError
from pi_daemon.sources.video import decode_stopped, ended_early, open_capture

log = logging.getLogger(__name__)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def parse_device(device: str) -> int | str:
    """ "0" → 0 (a V4L2 index); anything else is a path or URL, passed as is."""
    return int(device) if device.isdigit() else device


class OpenCVSource(FrameSource):
    """Frames from OpenCV. Network streams end or stall; both are reported as errors.

    `read_timeout_s` bounds how long a blocking read may take: OpenCV's FFmpeg
    backend honours CAP_PROP_READ_TIMEOUT_MSEC for network streams, and the
    capture thread's stall detector covers backends that do not.
    """

    name = "opencv"

    def __init__(self, device: str, read_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.device = parse_device(device)
        self.read_timeout_s = read_timeout_s
        self._capture: Any = None  # cv2.VideoCapture
        self.is_stream = isinstance(self.device, str) and bool(_URL.match(self.device))
        # A plain file is finite; devices and streams are live.
        self.is_file = (
            isinstance(self.device, str)
            and not self.is_stream
            and not self.device.startswith("/dev/")
        )
        self.live = not self.is_file
        self._frame_count = 0  # a file's, from its container; 0 when unknown
        self._decoded = 0

    def describe(self) -> str:
        return f"opencv: {self.device}"

    def open(self) -> None:
        if isinstance(self.device, str) and not self.is_stream:
            self._check_path(self.device)
        import cv2

        timeout_ms = int(self.read_timeout_s * 1000)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            timeout_ms,
        ]
        capture, count = open_capture(self.device, params)
        if capture is None:
            raise SourceUnavailable(f"opencv.device: {self.device}: cannot open video source")
        self._capture = capture
        self._frame_count = count if self.is_file else 0
        self._decoded = 0
        log.debug("opened %s with backend %s", self.device, capture.getBackendName())

    def _check_path(self, path: str) -> None:
        """A device must be a character device and a file a regular file: FFmpeg opening
        a FIFO (or a directory) would block or fail in a way that names nothing."""
        try:
            info = os.stat(path)
        except OSError:
            raise SourceUnavailable(f"opencv.device: {path}: no such device or file") from None
        if self.is_file:
            try:
                fileio.check_regular(path)
            except fileio.FileProblem as error:
                raise SourceUnavailable(f"opencv.device: {path}: {error.reason}") from None
        elif not stat.S_ISCHR(info.st_mode):
            raise SourceUnavailable(f"opencv.device: {path}: not a video device")

    def read(self, timeout: float) -> Frame:
        capture = self._capture
        if capture is None:
            raise SourceError("source is closed")
        ok, image = capture.read()
        if not ok or image is None:
            if not self.live:
                if ended_early(self._decoded, self._frame_count):
                    where = f"opencv.device: {self.device}"
                    raise ConfigError(decode_stopped(where, self._decoded, self._frame_count))
                raise SourceEnded(f"end of {self.device}")
            raise SourceError(f"{self.device}: read failed (stream ended or device error)")
        self._decoded += 1
        if image.ndim == 2:
            import cv2

            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return self._frame(image, "BGR")

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
