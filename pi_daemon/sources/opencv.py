"""`cv2.VideoCapture` on a V4L2 device index or path, a file, or an RTSP/HTTP URL."""

from __future__ import annotations

import logging
import os
import re

import cv2

from pi_daemon.errors import SourceUnavailable
from pi_daemon.preprocess import Frame
from pi_daemon.sources.base import FrameSource, SourceEnded, SourceError

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
        self._capture: cv2.VideoCapture | None = None
        self.is_stream = isinstance(self.device, str) and bool(_URL.match(self.device))
        # A plain file is finite; devices and streams are live.
        self.live = not (
            isinstance(self.device, str)
            and not self.is_stream
            and not self.device.startswith("/dev/")
        )

    def describe(self) -> str:
        return f"opencv: {self.device}"

    def open(self) -> None:
        if isinstance(self.device, str) and not self.is_stream and not os.path.exists(self.device):
            raise SourceUnavailable(f"opencv.device: {self.device}: no such device or file")
        timeout_ms = int(self.read_timeout_s * 1000)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            timeout_ms,
        ]
        capture = cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceUnavailable(f"opencv.device: {self.device}: cannot open video source")
        self._capture = capture
        log.debug("opened %s with backend %s", self.device, capture.getBackendName())

    def read(self, timeout: float) -> Frame:
        capture = self._capture
        if capture is None:
            raise SourceError("source is closed")
        ok, image = capture.read()
        if not ok or image is None:
            if not self.live:
                raise SourceEnded(f"end of {self.device}")
            raise SourceError(f"{self.device}: read failed (stream ended or device error)")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return self._frame(image, "BGR")

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
