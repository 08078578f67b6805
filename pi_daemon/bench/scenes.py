"""Synthetic camera scenes made from real photos, for `pi-daemon bench` and the tests.

Never used by the service (it lives with the bench). Two kinds, each written as a real
MJPG/AVI video that the `files` source replays like any recording:

- **static**: one photo, replayed with sensor-like noise (read noise, shot noise that
  grows with brightness, a slight frame-to-frame gain jitter as auto-exposure gives),
  so consecutive frames differ the way a real still scene's frames do;
- **motion**: a subject photo, cut out with a soft-edged ellipse, resting on a
  background photo and starting to move across it at a given frame, with the same noise.

The photos are ones a package ships: the bundled demo photos (`pi_daemon/demo`, what
the bench uses on a Pi) or scikit-image's data photos (what the tests use).
Decoding and resizing use Pillow; writing the video uses OpenCV, imported on use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_SIZE = (640, 480)


def load_rgb(path: str | Path) -> np.ndarray:
    """A photo file as an RGB uint8 array."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def demo_photo(name: str) -> np.ndarray:
    """One of the bundled demo photos ("coffee", "chelsea", "rocket") as RGB."""
    return load_rgb(Path(str(resources.files("pi_daemon.demo") / f"{name}.jpg")))


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def fit(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` centre-cropped to the aspect of `size` and resized to it."""
    width, height = size
    rows, columns = rgb.shape[:2]
    if columns * height > rows * width:
        crop = round(rows * width / height)
        rgb = rgb[:, (columns - crop) // 2 : (columns - crop) // 2 + crop]
    else:
        crop = round(columns * height / width)
        rgb = rgb[(rows - crop) // 2 : (rows - crop) // 2 + crop]
    return _resize(np.ascontiguousarray(rgb), size)


@dataclass(frozen=True)
class SensorNoise:
    """Noise of a small camera sensor after the ISP, on the 0-255 scale."""

    read_sigma: float = 1.5  # independent of the signal
    shot_gain: float = 0.03  # variance per level of signal (photon shot noise)
    gain_jitter: float = 0.003  # frame-to-frame exposure/gain wobble, as a fraction

    def apply(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        signal = clean.astype(np.float32) * np.float32(1.0 + rng.normal(0.0, self.gain_jitter))
        sigma = np.sqrt(self.read_sigma**2 + self.shot_gain * signal)
        noisy = signal + sigma * rng.standard_normal(clean.shape, np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def static_frames(
    background: np.ndarray,
    count: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    noise: SensorNoise | None = None,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """`count` RGB frames of one photo with fresh noise each."""
    noise = noise or SensorNoise()
    rng = np.random.default_rng(seed)
    clean = fit(background, size)
    for _ in range(count):
        yield noise.apply(clean, rng)


def _cutout(subject: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The subject at `height` px, and a soft elliptical alpha (1 inside, 0 outside)."""
    rows, columns = subject.shape[:2]
    width = max(2, round(columns * height / rows))
    picture = _resize(np.ascontiguousarray(subject), (width, height)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    radius = np.hypot((xs + 0.5 - width / 2) / (width / 2), (ys + 0.5 - height / 2) / (height / 2))
    alpha = np.clip((1.0 - radius) / 0.08, 0.0, 1.0).astype(np.float32)  # 8 % soft edge
    return picture, alpha[:, :, None]


def motion_frames(
    background: np.ndarray,
    subject: np.ndarray,
    count: int,
    motion_start: int,
    speed_px: float,
    size: tuple[int, int] = DEFAULT_SIZE,
    subject_height: float = 0.4,
    noise: SensorNoise | None = None,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """`count` RGB frames: the subject rests at the left until frame `motion_start`,
    then moves right `speed_px` pixels per frame (it is first displaced in that frame)."""
    noise = noise or SensorNoise()
    rng = np.random.default_rng(seed)
    clean = fit(background, size).astype(np.float32)
    width, height = size
    picture, alpha = _cutout(subject, max(2, round(height * subject_height)))
    box_h, box_w = alpha.shape[:2]
    top = (height - box_h) // 2
    left0 = width // 16
    for index in range(count):
        moved = max(0, index - motion_start + 1) * speed_px
        left = left0 + round(moved)
        frame = clean.copy()
        # The part of the cut-out still inside the frame.
        x0, x1 = max(0, left), min(width, left + box_w)
        if x0 < x1:
            region = frame[top : top + box_h, x0:x1]
            cut = slice(x0 - left, x1 - left)
            a = alpha[:, cut]
            region *= 1.0 - a
            region += a * picture[:, cut]
        yield noise.apply(np.clip(frame, 0, 255), rng)


@dataclass(frozen=True)
class SceneFile:
    """A scene written as a video: where, how fast, and where its motion starts."""

    path: Path
    fps: float
    frames: int
    size: tuple[int, int]
    motion_start: int | None  # frame index of the first moved frame; None: static


def write_video(path: str | Path, frames: Iterator[np.ndarray], fps: float) -> int:
    """Write RGB frames as an MJPG AVI (quality 95); return how many were written."""
    import cv2

    path = Path(path)
    writer = None
    written = 0
    try:
        for rgb in frames:
            if writer is None:
                height, width = rgb.shape[:2]
                fourcc = cv2.VideoWriter.fourcc(*"MJPG")
                writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
                if not writer.isOpened():
                    raise OSError(f"{path}: cannot write an MJPG video here")
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            written += 1
    finally:
        if writer is not None:
            writer.release()
    return written


def write_static_scene(
    path: str | Path,
    background: np.ndarray,
    seconds: float,
    fps: float,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
) -> SceneFile:
    count = math.ceil(seconds * fps)
    written = write_video(path, static_frames(background, count, size, seed=seed), fps)
    return SceneFile(Path(path), fps, written, size, None)


def write_motion_scene(
    path: str | Path,
    background: np.ndarray,
    subject: np.ndarray,
    seconds: float,
    fps: float,
    motion_start_s: float,
    speed_px_per_s: float,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
) -> SceneFile:
    count = math.ceil(seconds * fps)
    start = round(motion_start_s * fps)
    frames = motion_frames(background, subject, count, start, speed_px_per_s / fps, size, seed=seed)
    written = write_video(path, frames, fps)
    return SceneFile(Path(path), fps, written, size, start)
