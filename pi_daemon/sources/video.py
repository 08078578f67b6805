"""What the files and opencv sources share about video files and OpenCV's FFmpeg.

* FFmpeg's own log is silenced: one damaged file can print thousands of lines such as
  `[mpeg4 @ 0x55d1c0] marker does not match f_code` onto stderr, the journal under
  systemd. pi-daemon's own line names the file and the problem instead. An operator who
  wants FFmpeg's detail sets OPENCV_FFMPEG_LOGLEVEL (e.g. 24, warnings) in the
  environment; that setting is left alone.
* A video path must be a regular file: FFmpeg opening a FIFO blocks forever.
* A file that stops decoding before the frame count its container promises is corrupt or
  truncated, not finished: `ended_early` tells the two apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pi_daemon import fileio

# AV_LOG_QUIET; read by OpenCV when its FFmpeg backend first opens something.
FFMPEG_LOGLEVEL_ENV = "OPENCV_FFMPEG_LOGLEVEL"
FFMPEG_QUIET = "-8"


def quiet_ffmpeg() -> None:
    os.environ.setdefault(FFMPEG_LOGLEVEL_ENV, FFMPEG_QUIET)


def open_video_file(path: Path) -> tuple[Any, int]:
    """An opened cv2.VideoCapture and the container's frame count (0: unknown).

    FileProblem if `path` is not a regular file; None instead of a capture when OpenCV
    cannot open it as a video.
    """
    fileio.check_regular(path)
    return open_capture(str(path))


def open_capture(target: str | int, params: list[int] | None = None) -> tuple[Any, int]:
    """cv2.VideoCapture(target) with FFmpeg quiet; (None, 0) when it does not open."""
    quiet_ffmpeg()
    import cv2

    capture = cv2.VideoCapture(target, cv2.CAP_ANY, params) if params else cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        return None, 0
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return capture, int(count) if count and count > 0 else 0


def ended_early(frames_decoded: int, frame_count: int) -> bool:
    """True when the container promised clearly more frames than could be decoded (a
    count taken from the duration may be off by a frame or so; unknown counts never are)."""
    if frame_count <= 0:
        return False
    return frames_decoded + max(1, frame_count // 100) < frame_count


def decode_stopped(where: str, frames_decoded: int, frame_count: int) -> str:
    return (
        f"{where}: decoding stopped at frame {frames_decoded + 1} of {frame_count} "
        "(the file is corrupt or truncated)"
    )
