"""Replays still images or a video file: the bundled demo, tests and benchmarks."""

from __future__ import annotations

import logging
import threading
import time
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from pi_daemon.errors import ConfigError, InputError
from pi_daemon.preprocess import Frame
from pi_daemon.sources.base import FrameSource, SourceEnded, SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def bundled_demo_paths() -> list[Path]:
    demo = resources.files("pi_daemon.demo")
    return sorted(Path(str(p)) for p in demo.iterdir() if p.name.lower().endswith(".jpg"))


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to a BGR array, or raise InputError naming it."""
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{path}: cannot decode image (not a supported image or truncated)")
    return image


class FilesSource(FrameSource):
    """Images (decoded once, kept in memory) or one video file, once or looped.

    `fps` > 0 paces the replay like a camera; 0 replays as fast as it is read.
    """

    name = "files"

    def __init__(self, paths: list[Path], loop: bool = True, fps: float = 0.0) -> None:
        super().__init__()
        self.paths = paths or bundled_demo_paths()
        self.loop = loop
        self.fps = fps
        self.live = fps > 0
        self._images: list[np.ndarray] = []
        self._video: cv2.VideoCapture | None = None
        self._video_path: Path | None = None
        self._position = 0
        self._opened = False
        self._next_due = 0.0
        self._pace = threading.Event()  # never set; an interruptible sleep

    def describe(self) -> str:
        first = self.paths[0] if self.paths else "?"
        more = f" (+{len(self.paths) - 1} more)" if len(self.paths) > 1 else ""
        return f"files: {first}{more}, loop={self.loop}, fps={self.fps or 'unpaced'}"

    def open(self) -> None:
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"files.paths: {missing[0]}: file not found")
        videos = [p for p in self.paths if Path(p).suffix.lower() not in IMAGE_SUFFIXES]
        if videos and len(self.paths) > 1:
            raise ConfigError(f"files.paths: {videos[0]}: a video must be the only path")
        if videos:
            self._video_path = Path(videos[0])
            self._open_video()
        else:
            try:
                self._images = [read_image(Path(p)) for p in self.paths]
            except InputError as error:
                raise ConfigError(f"files.paths: {error}") from None
        self._position = 0
        self._opened = True

    def _open_video(self) -> None:
        assert self._video_path is not None
        capture = cv2.VideoCapture(str(self._video_path))
        if not capture.isOpened():
            capture.release()
            raise ConfigError(f"files.paths: {self._video_path}: cannot open as video")
        self._video = capture

    def read(self, timeout: float) -> Frame:
        if not self._opened:
            raise SourceError("source is closed")
        if self.fps > 0:
            self._wait_for_slot(timeout)
        if self._video_path is not None:
            return self._read_video()
        if self._position >= len(self._images):
            if not self.loop:
                raise SourceEnded(f"{len(self._images)} images replayed")
            self._position = 0
        image = self._images[self._position]
        self._position += 1
        return self._frame(image, "BGR")

    def _read_video(self) -> Frame:
        assert self._video is not None
        ok, image = self._video.read()
        if not ok:
            if not self.loop:
                raise SourceEnded(f"end of {self._video_path}")
            self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._video.read()
            if not ok:
                raise SourceError(f"{self._video_path}: cannot rewind to the first frame")
        return self._frame(image, "BGR")

    def _wait_for_slot(self, timeout: float) -> None:
        now = time.monotonic()
        if self._next_due <= now:
            self._next_due = now
        delay = self._next_due - now
        if delay > timeout:
            raise SourceError("paced replay: next frame is not due within the timeout")
        if delay > 0:
            self._pace.wait(delay)
        self._next_due += 1.0 / self.fps

    def close(self) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.release()
        self._images = []
        self._opened = False
