"""What the motion gate saves and what it costs, on scenes made from real photos
(part of `pi-daemon bench`).

1. **Static scene** (pi_daemon.bench.scenes: one bundled demo photo replayed with sensor-like
   noise, written as an MJPG video and read back through the `files` source): the share
   of frames the gate sends to the classifier. The bound is 1/(fps x max_skip_s) plus
   the start-up frame.
2. **Motion scene** (the bundled cat photo resting on the coffee photo, then moving):
   how many frames after the first moved frame the first classify verdict comes
   (0: that very frame).
3. **CPU** of the daemon's per-frame work (gate, preparation, invoke, top-k; not the
   camera or the video decoder) per minute of the static scene, gating against
   classifying every frame, with the configured model, in the same run, as a ratio. The
   frames are the static scene's, decoded once and replayed from memory in the
   picamera2 lores format (YUV420) and in the files/opencv format (BGR).

Everything is built by the service's own code: MotionGate.from_config, FilesSource, the
configured Classifier, FramePreparer.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon.bench.scenes import SceneFile, demo_photo, write_motion_scene, write_static_scene
from pi_daemon.config import MotionSection
from pi_daemon.frame import PixelFormat
from pi_daemon.motion import MotionGate, Verdict

# The scene's frames kept in memory for the CPU runs, replayed in a loop.
MEMORY_FRAMES = 60


def decoded_frames(scene: SceneFile) -> list[np.ndarray]:
    """The scene's frames as the files source reads them (BGR)."""
    from pi_daemon.sources.base import SourceEnded
    from pi_daemon.sources.files import FilesSource

    source = FilesSource([scene.path], loop=False)
    source.open()
    frames = []
    try:
        while True:
            frames.append(source.read(5.0).pixels)
    except SourceEnded:
        pass
    finally:
        source.close()
    return frames


def as_format(bgr: np.ndarray, fmt: str) -> np.ndarray:
    import cv2

    if fmt == "BGR":
        return bgr
    if fmt == "RGB":
        return np.ascontiguousarray(bgr[:, :, ::-1])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)


def replay_verdicts(scene: SceneFile, gate: MotionGate, fmt: str = "BGR") -> list[Verdict]:
    """The gate's verdict for every frame of the scene file, timed at index / fps."""
    return [
        gate.check(as_format(frame, fmt), fmt, index / scene.fps)
        for index, frame in enumerate(decoded_frames(scene))
    ]


def classified_share(verdicts: list[Verdict]) -> float:
    return sum(v.classify for v in verdicts) / len(verdicts)


def motion_latency_frames(verdicts: list[Verdict], motion_start: int) -> int | None:
    """Frames from the first moved frame to the first classify verdict (None: never)."""
    for index in range(motion_start, len(verdicts)):
        if verdicts[index].classify:
            return index - motion_start
    return None


@dataclass
class CpuFigures:
    fmt: str
    frames: int
    classified_gated: int
    cpu_s_per_min_gated: float
    cpu_s_per_min_every_frame: float

    @property
    def ratio(self) -> float:
        return self.cpu_s_per_min_gated / self.cpu_s_per_min_every_frame


def cpu_per_minute(
    classifier: Any,
    frames: list[np.ndarray],
    fmt: PixelFormat,
    fps: float,
    count: int,
    motion: MotionSection,
) -> CpuFigures:
    """CPU seconds per scene minute of gate + classify, gated and ungated, same frames."""
    from pi_daemon.capture import FramePreparer
    from pi_daemon.frame import Frame

    pre = classifier.preprocess
    prepare = FramePreparer(pre.width, pre.height, pre.crop, pre.roi)
    cycle = [as_format(frame, fmt) for frame in frames[:MEMORY_FRAMES]]

    def run(gate: MotionGate | None, frames: int = count) -> tuple[float, int]:
        classified = 0
        started = time.process_time()
        for index, pixels in zip(range(frames), itertools.cycle(cycle), strict=False):
            now = index / fps
            if gate is not None and not gate.check(pixels, fmt, now).classify:
                continue
            classifier.classify(prepare(Frame(pixels, fmt, index, now, now)))
            classified += 1
        return time.process_time() - started, classified

    run(None, frames=20)  # warm the interpreter's caches and threads
    gated_s, classified = run(MotionGate.from_config(motion))
    every_s, _ = run(None)
    minutes = count / fps / 60.0
    return CpuFigures(fmt, count, classified, gated_s / minutes, every_s / minutes)


def run(
    workdir: Path,
    classifier: Any,
    motion: MotionSection,
    fps: float = 10.0,
    seconds: float = 60.0,
) -> dict[str, object]:
    """The motion figures for `motion`'s settings (enabled or not in the config)."""
    from pi_daemon.config import replace

    motion = replace(motion, enabled=True)
    max_skip_s = motion.max_skip_s
    background, subject = demo_photo("coffee"), demo_photo("chelsea")
    static = write_static_scene(workdir / "static.avi", background, seconds, fps)
    moving = write_motion_scene(
        workdir / "motion.avi", background, subject, 10.0, fps, 5.0, speed_px_per_s=120.0
    )
    report: dict[str, object] = {"fps": fps, "seconds": seconds, "max_skip_s": max_skip_s}
    bound = 1.0 / (fps * max_skip_s) + 1.0 / static.frames
    for fmt in ("YUV420", "BGR"):
        verdicts = replay_verdicts(static, MotionGate.from_config(motion), fmt)
        report[f"static_classified_share_{fmt}"] = classified_share(verdicts)
        latency = replay_verdicts(moving, MotionGate.from_config(motion), fmt)
        assert moving.motion_start is not None
        report[f"motion_latency_frames_{fmt}"] = motion_latency_frames(latency, moving.motion_start)
    report["static_classified_share_bound"] = bound
    frames = decoded_frames(static)
    formats: tuple[PixelFormat, ...] = ("YUV420", "BGR")
    for fmt in formats:
        figures = cpu_per_minute(classifier, frames, fmt, fps, static.frames, motion)
        report[f"cpu_{fmt}"] = {**asdict(figures), "ratio": figures.ratio}
    return report
