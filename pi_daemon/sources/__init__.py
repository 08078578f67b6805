"""Frame sources and the factory that picks one from config."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pi_daemon.config import Config
from pi_daemon.errors import SourceUnavailable
from pi_daemon.sources.base import FrameSource, SourceEnded, SourceError

__all__ = ["FrameSource", "SourceEnded", "SourceError", "create_source"]

log = logging.getLogger(__name__)

DEFAULT_V4L2_DEVICE = "/dev/video0"


def create_source(
    config: Config,
    model_input_size: tuple[int, int],
    base_dir: Path | None = None,
    prescale: Callable[[np.ndarray], np.ndarray] | None = None,
) -> FrameSource:
    """Build (but do not open) the source that config asks for. `prescale` fits still
    images to the model's geometry once (the files source)."""
    kind: str = config.source
    if kind == "auto":
        kind = _auto_kind()
        log.info("source = auto: using %s", kind)
    if kind == "picamera2":
        from pi_daemon.sources.picamera2 import Picamera2Source

        cam = config.picamera2
        return Picamera2Source(
            camera_num=cam.camera_num,
            main_size=cam.main_size,
            lores_size=lores_size_for(cam.main_size, model_input_size),
            frame_rate=cam.frame_rate,
            capture_timeout_s=cam.capture_timeout_s,
        )
    if kind == "opencv":
        from pi_daemon.sources.opencv import OpenCVSource

        device = config.opencv.device if config.source == "opencv" else DEFAULT_V4L2_DEVICE
        return OpenCVSource(device, config.opencv.read_timeout_s)
    from pi_daemon.config import resolve_relative
    from pi_daemon.sources.files import FilesSource

    paths = [resolve_relative(p, base_dir) for p in config.files.paths]
    return FilesSource(paths, loop=config.files.loop, fps=config.files.fps, prescale=prescale)


def lores_size_for(main_size: tuple[int, int], model_size: tuple[int, int]) -> tuple[int, int]:
    """A lores size with main's aspect ratio that covers the model input.

    On a Pi 4 the ISP scales lores from the same sensor crop as main, so a square
    lores under a 4:3 main would squash the picture; keeping main's aspect and
    letting preprocessing crop keeps shapes true. Sizes are even for YUV420.
    """
    main_w, main_h = main_size
    model_w, model_h = model_size
    scale = max(model_w / main_w, model_h / main_h)
    width, height = math.ceil(main_w * scale), math.ceil(main_h * scale)
    return width + width % 2, height + height % 2


def _auto_kind() -> str:
    from pi_daemon.sources.picamera2 import camera_present

    present, reason = camera_present()
    if present:
        return "picamera2"
    if os.path.exists(DEFAULT_V4L2_DEVICE):
        return "opencv"
    raise SourceUnavailable(
        f"source = auto: no camera found: picamera2: {reason}; "
        f"opencv: {DEFAULT_V4L2_DEVICE} does not exist"
    )
