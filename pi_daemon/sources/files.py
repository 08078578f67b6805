"""Replays still images or a video file: the bundled demo, tests and benchmarks.

Images are decoded with Pillow (pi_daemon/images.py, bounded in pixels) and, given the
classifier's `prescale`, brought to the model's geometry once when opened, so replaying
them costs a copy per frame and never OpenCV; only a video needs OpenCV, which is imported
when one is opened. A snapshot of a replayed image decodes the original file again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import pi_daemon.demo as demo_package
from pi_daemon import fileio
from pi_daemon.errors import ConfigError, InputError
from pi_daemon.frame import Frame
from pi_daemon.images import MAX_IMAGE_PIXELS, decode_image, megapixels
from pi_daemon.sources.base import FrameSource, SourceEnded, SourceError
from pi_daemon.sources.video import decode_stopped, ended_early, open_video_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Replayed images stay decoded in memory: four images at the per-image cap (192 MiB).
MAX_REPLAY_PIXELS = 4 * MAX_IMAGE_PIXELS
# Time one read may take beyond the pacing wait: a video frame decode, a slow SD card.
DECODE_ALLOWANCE_S = 5.0


def bundled_demo_paths() -> list[Path]:
    folder = Path(demo_package.__file__).parent  # package data, beside the package
    return sorted(p for p in folder.iterdir() if p.name.lower().endswith(".jpg"))


class FilesSource(FrameSource):
    """Images (decoded once, kept in memory) or one video file, once or looped.

    `fps` > 0 paces the replay like a camera; 0 replays as fast as it is read.
    """

    name = "files"

    def __init__(
        self,
        paths: list[Path],
        loop: bool = True,
        fps: float = 0.0,
        prescale: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.paths = paths or bundled_demo_paths()
        # Fits a decoded still to the model's geometry once (Preprocessor.prescale).
        self.prescale = prescale
        # (frame id, image index) of recent frames, a ring as long as keep_recent's.
        self._image_of: list[tuple[int, int]] = [(0, 0)] * 8
        self.loop = loop
        self.fps = fps
        self.live = fps > 0
        self.frame_interval_s = 1.0 / fps if fps > 0 else 0.0
        self.read_timeout_s = self.frame_interval_s + DECODE_ALLOWANCE_S
        self._images: list[np.ndarray] = []
        # Protects the swap of _images by refit() (the loop's thread) against read() taking
        # a still and stamping its frame: a frame that shows an old still is stamped
        # before refit() returns.
        self._images_lock = threading.Lock()
        self._video: Any = None  # cv2.VideoCapture
        self._video_path: Path | None = None
        self._frame_count = 0  # the video container's, 0 when unknown
        self._decoded = 0  # video frames decoded in this pass
        self._first: np.ndarray | None = None  # decoded by open() to prove the video
        self._warned_early_end = False
        self._position = 0
        self._opened = False
        self._next_due = 0.0
        self._pace = threading.Event()  # set only by interrupt(): an interruptible sleep

    def describe(self) -> str:
        first = self.paths[0] if self.paths else "?"
        more = f" (+{len(self.paths) - 1} more)" if len(self.paths) > 1 else ""
        return f"files: {first}{more}, loop={self.loop}, fps={self.fps or 'unpaced'}"

    def open(self) -> None:
        for path in self.paths:
            try:
                fileio.check_regular(path)
            except fileio.FileProblem as error:
                reason = "file not found" if error.missing else error.reason
                raise ConfigError(f"files.paths: {path}: {reason}") from None
        videos = [p for p in self.paths if Path(p).suffix.lower() not in IMAGE_SUFFIXES]
        if videos and len(self.paths) > 1:
            raise ConfigError(f"files.paths: {videos[0]}: a video must be the only path")
        self._pace.clear()
        if videos:
            self._video_path = Path(videos[0])
            self._open_video()
        else:
            self._images = self._decode_images(self.prescale)
        self._position = 0
        self._opened = True

    def _decode_images(
        self, prescale: Callable[[np.ndarray], np.ndarray] | None
    ) -> list[np.ndarray]:
        decoded: dict[Path, np.ndarray] = {}  # a path listed twice is decoded once
        total = 0
        for path in map(Path, self.paths):
            if path in decoded:
                continue
            try:
                image = decode_image(path)
            except InputError as error:
                raise ConfigError(f"files.paths: {error}") from None
            total += image.shape[0] * image.shape[1]
            decoded[path] = prescale(image) if prescale is not None else image
            if total > MAX_REPLAY_PIXELS:
                raise ConfigError(
                    f"files.paths: {path}: the images up to this one decode to "
                    f"{megapixels(total)}, over the {megapixels(MAX_REPLAY_PIXELS)} a replay "
                    "keeps in memory"
                )
        return [decoded[Path(p)] for p in self.paths]

    def _open_video(self) -> None:
        assert self._video_path is not None
        where = f"files.paths: {self._video_path}"
        capture, self._frame_count = open_video_file(self._video_path)
        if capture is None:
            raise ConfigError(f"{where}: cannot open as video")
        ok, image = capture.read()
        if not ok or image is None:
            capture.release()
            raise ConfigError(f"{where}: no frame can be decoded (corrupt, or not a video)")
        self._video, self._first, self._decoded = capture, image, 0

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
        index = self._position
        self._position += 1
        with self._images_lock:
            frame = self._frame(self._images[index], "RGB")
        if self._recent and self.prescale is not None:
            # Which file each frame still held for snapshot() shows, to decode it again.
            self._image_of[frame.frame_id % len(self._image_of)] = (frame.frame_id, index)
        return frame

    def refit(self, prescale: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Decode the stills again for another model's geometry: one prescaled for a 32x32
        input has lost what a 224x224 model needs. A file that can no longer be decoded
        raises ConfigError, and the stills in use stay as they were."""
        if self._opened and self._video_path is None:
            images = self._decode_images(prescale)
            with self._images_lock:
                self._images = images
        self.prescale = prescale

    def snapshot(self, frame_id: int | None = None, timeout: float = 2.0) -> Frame:
        """The original picture: a prescaled still is decoded again from its file."""
        held = super().snapshot(frame_id, timeout)
        if self._video_path is not None or self.prescale is None:
            return held
        known, index = self._image_of[held.frame_id % len(self._image_of)]
        if known != held.frame_id:
            return held  # not remembered (cannot happen while keep_recent holds it)
        try:
            original = decode_image(Path(self.paths[index]))
        except InputError as error:
            raise SourceError(f"{self.describe()}: snapshot: {error}") from None
        return Frame(original, "RGB", held.frame_id, held.wall_time, held.monotonic)

    def _read_video(self) -> Frame:
        assert self._video is not None
        if self._first is not None:
            image, self._first = self._first, None
        else:
            ok, image = self._video.read()
            if not ok or image is None:
                image = self._end_of_pass()
        self._decoded += 1
        return self._frame(image, "BGR")

    def _end_of_pass(self) -> np.ndarray:
        """The video ran out: a corrupt file is an error (or, looping, a warning), a
        finished one ends the replay or starts it again."""
        import cv2

        where = f"files.paths: {self._video_path}"
        if ended_early(self._decoded, self._frame_count):
            problem = decode_stopped(where, self._decoded, self._frame_count)
            if not self.loop:
                raise ConfigError(problem)
            if not self._warned_early_end:
                self._warned_early_end = True
                log.warning("%s; replaying it from the start", problem)
        if not self.loop:
            raise SourceEnded(f"end of {self._video_path}")
        assert self._video is not None
        self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._decoded = 0
        ok, image = self._video.read()
        if not ok or image is None:
            raise SourceError(f"{self._video_path}: cannot rewind to the first frame")
        return image

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

    def interrupt(self) -> None:
        self._pace.set()

    def close(self) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.release()
        self._images = []
        self._first = None
        self._opened = False
