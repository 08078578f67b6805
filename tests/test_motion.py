"""The motion gate: verdict boundaries, region and mask, background, formats, allocations,
and the two measured scenes (real photos, written as real videos, replayed from file)."""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from pi_daemon.bench.motion import classified_share, motion_latency_frames, replay_verdicts
from pi_daemon.bench.scenes import SensorNoise, fit, write_motion_scene, write_static_scene
from pi_daemon.config import MotionSection, parse_config
from pi_daemon.errors import ConfigError
from pi_daemon.motion import MotionGate, Verdict

FMTS = ["RGB", "BGR", "YUV420"]


@pytest.fixture(scope="module")
def rocket() -> np.ndarray:
    from skimage import data

    return fit(data.rocket(), (320, 240))


def as_fmt(rgb: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "RGB":
        return rgb
    if fmt == "BGR":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)


def grey(width: int = 20, height: int = 10, level: int = 100) -> np.ndarray:
    return np.full((height, width, 3), level, np.uint8)


def one_cell_per_pixel(**kwargs) -> MotionGate:
    """A gate whose grid is the 20x10 frame itself: one tap, one pixel per cell."""
    return MotionGate(resolution=20, **kwargs)


# -- verdict boundaries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changed_pixels", "step", "verdict"),
    [
        (9, 30, Verdict.SKIP),  # 9 of 200 cells = 0.045 < 0.05
        (10, 30, Verdict.MOTION),  # 10 of 200 = 0.05: at the threshold counts
        (200, 30, Verdict.MOTION),
        (200, 24, Verdict.SKIP),  # every cell differs, but by less than pixel_threshold
        (10, 25, Verdict.MOTION),  # exactly pixel_threshold counts
        (10, -25, Verdict.MOTION),  # darker counts too (absdiff)
    ],
)
def test_changed_fraction_and_pixel_threshold_boundaries(changed_pixels, step, verdict) -> None:
    gate = one_cell_per_pixel(min_changed_fraction=0.05, pixel_threshold=25)
    assert gate.check(grey(), "RGB", 0.0) is Verdict.FIRST
    frame = grey()
    frame.reshape(-1, 3)[:changed_pixels] = 100 + step
    assert gate.check(frame, "RGB", 0.1) is verdict
    assert gate.changed_fraction == pytest.approx(changed_pixels / 200 if abs(step) >= 25 else 0)


@pytest.mark.parametrize(
    ("times", "verdicts"),
    [
        # A keyframe at least every max_skip_s (2 s), measured from the last classify.
        ([0.0, 1.0, 1.999, 2.0, 3.0, 3.999, 4.0], "F S S K S S K"),
        # A gap longer than max_skip_s: the next frame is a keyframe at once.
        ([0.0, 10.0, 10.5], "F K S"),
    ],
)
def test_keyframes_come_at_least_every_max_skip_s(times, verdicts) -> None:
    gate = one_cell_per_pixel(max_skip_s=2.0)
    letters = {Verdict.FIRST: "F", Verdict.SKIP: "S", Verdict.KEYFRAME: "K", Verdict.MOTION: "M"}
    got = " ".join(letters[gate.check(grey(), "RGB", t)] for t in times)
    assert got == verdicts


def test_motion_resets_the_keyframe_clock() -> None:
    gate = one_cell_per_pixel(max_skip_s=2.0, background_s=0.01)
    moved = grey(level=200)
    got = [
        gate.check(grey(), "RGB", 0.0),
        gate.check(moved, "RGB", 1.5),  # motion; the background then catches up at once
        gate.check(moved, "RGB", 3.0),  # 1.5 s after the motion: no keyframe yet
        gate.check(moved, "RGB", 3.5),  # 2 s after it
    ]
    assert got == [Verdict.FIRST, Verdict.MOTION, Verdict.SKIP, Verdict.KEYFRAME]
    assert [v.classify for v in got] == [True, True, False, True]
    assert gate.frames == 4 and gate.skipped == 1


def test_a_new_frame_geometry_or_reset_starts_again() -> None:
    gate = one_cell_per_pixel()
    assert gate.check(grey(), "RGB", 0.0) is Verdict.FIRST
    assert gate.check(grey(), "RGB", 0.1) is Verdict.SKIP
    assert gate.check(grey(width=22), "RGB", 0.2) is Verdict.FIRST  # a reconnect, new size
    assert gate.check(grey(width=22), "BGR", 0.3) is Verdict.FIRST  # another format
    gate.reset()
    assert gate.check(grey(width=22), "BGR", 0.4) is Verdict.FIRST


@pytest.mark.parametrize(
    ("pixels", "fmt"),
    [
        (np.zeros((10, 20, 3), np.float32), "RGB"),
        (np.zeros((10, 20), np.uint8), "RGB"),
        (np.zeros((10, 20), np.uint8), "YUV420"),  # 10 rows is not h * 3/2
        (np.zeros((15, 20), np.uint8), "NV12"),
    ],
)
def test_frames_that_are_not_frames_are_refused(pixels, fmt) -> None:
    with pytest.raises(ValueError):
        one_cell_per_pixel().check(pixels, fmt, 0.0)


# -- region of interest and mask -------------------------------------------------------------


def test_change_outside_the_region_of_interest_is_not_motion(rocket) -> None:
    gate = MotionGate(roi=(0.0, 0.5, 1.0, 0.5))  # the lower half
    gate.check(rocket, "RGB", 0.0)
    upper = rocket.copy()
    upper[:100] = 255 - upper[:100]
    assert gate.check(upper, "RGB", 0.1) is Verdict.SKIP
    lower = rocket.copy()
    lower[140:200, 100:200] = 0
    assert gate.check(lower, "RGB", 0.2) is Verdict.MOTION


def test_change_under_the_mask_is_not_motion(rocket) -> None:
    tree = [[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]]  # the whole left half
    gate = MotionGate(mask=tree)
    gate.check(rocket, "RGB", 0.0)
    left = rocket.copy()
    left[:, :150] = 255 - left[:, :150]  # sway the whole left half
    assert gate.check(left, "RGB", 0.1) is Verdict.SKIP
    right = rocket.copy()
    right[100:140, 200:260] = 0
    assert gate.check(right, "RGB", 0.2) is Verdict.MOTION
    # Only the unmasked half is watched: 40x60 px of 160x240 px is ~6 %, not ~3 %.
    assert gate.changed_fraction == pytest.approx(40 * 60 / (160 * 240), rel=0.25)


def test_a_mask_over_the_whole_region_is_a_config_error() -> None:
    mask = [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)]]
    with pytest.raises(ConfigError, match=r"^motion\.mask: covers the whole region"):
        MotionGate(roi=(0.3, 0.3, 0.4, 0.4), mask=mask)
    MotionGate(roi=(0.1, 0.1, 0.4, 0.4), mask=mask)  # part of it is still watched


def test_from_config_uses_every_motion_key_and_the_roi() -> None:
    config = parse_config(
        {
            "preprocess": {"roi": [0.0, 0.25, 1.0, 0.75]},
            "motion": {
                "enabled": True,
                "max_skip_s": 3.5,
                "pixel_threshold": 12,
                "min_changed_fraction": 0.02,
                "background_s": 7.0,
                "resolution": 40,
                "mask": [[[0.0, 0.0], [0.1, 0.0], [0.1, 0.1]]],
            },
        }
    )
    gate = MotionGate.from_config(config.motion, config.preprocess.roi)
    assert (gate.max_skip_s, gate.pixel_threshold, gate.min_changed_fraction) == (3.5, 12, 0.02)
    assert (gate.background_s, gate.resolution, gate.roi) == (7.0, 40, (0.0, 0.25, 1.0, 0.75))
    assert gate.mask == [[(0.0, 0.0), (0.1, 0.0), (0.1, 0.1)]]
    assert MotionGate.from_config(MotionSection()).roi == (0.0, 0.0, 1.0, 1.0)


# -- the running background ------------------------------------------------------------------


def _frames_until_absorbed(fps: float, background_s: float = 1.0) -> float:
    """Seconds from a new object's arrival (a car parking) to the first frame where it no
    longer counts as motion."""
    gate = one_cell_per_pixel(background_s=background_s, max_skip_s=1000)
    gate.check(grey(), "RGB", 0.0)
    parked = grey()
    parked[:, :10] = 200  # half the frame changes by 100 and stays
    for index in range(1, 10_000):  # it arrives in frame 1
        if gate.check(parked, "RGB", index / fps) is Verdict.SKIP:
            return (index - 1) / fps
    raise AssertionError("never absorbed")


def test_a_parked_object_becomes_background_at_the_same_speed_at_any_frame_rate() -> None:
    # The background closes in as 1 - exp(-t / 1 s): a difference of 100 falls under
    # pixel_threshold 25 once ln(4) s = 1.39 s have passed; seen at the next frame.
    for fps in (5.0, 10.0, 30.0):
        assert np.log(4) <= _frames_until_absorbed(fps) < np.log(4) + 1.0 / fps


def test_rgb_bgr_and_the_yuv_y_plane_give_the_same_picture(rocket) -> None:
    lumas = {}
    for fmt in FMTS:
        gate = MotionGate()
        gate.check(as_fmt(rocket, fmt), fmt, 0.0)
        assert gate._grid is not None
        lumas[fmt] = gate._grid.luma.copy() / gate._grid.scale
    assert np.allclose(lumas["RGB"], lumas["BGR"], atol=1e-3)
    # OpenCV's I420 Y is limited-range BT.601: 16 + 219/255 of the full-range luma.
    assert np.abs(lumas["YUV420"] - (16 + lumas["RGB"] * 219 / 255)).max() < 2.0


# -- no allocation per frame, no OpenCV --------------------------------------------------------


@pytest.mark.parametrize("fmt", FMTS)
def test_checking_a_frame_allocates_nothing_that_stays(fmt, rocket) -> None:
    rng = np.random.default_rng(3)
    camera = cv2.resize(rocket, (640, 480))
    noise = SensorNoise()
    frames = [as_fmt(noise.apply(camera, rng), fmt) for _ in range(4)]
    moved = frames[0].copy()
    moved[: moved.shape[0] // 3] //= 2  # every few frames some motion, so every path runs
    frames.append(moved)
    # A fine grid (160x120 cells, 75 KiB per float32 buffer), so that a temporary the
    # size of one buffer would stand out above numpy's own casting buffer (8192
    # elements, ~32 KiB, freed when each call returns).
    gate = MotionGate(max_skip_s=0.5, resolution=160)

    def run(first: int, count: int) -> None:
        for index in range(first, first + count):
            gate.check(frames[index % len(frames)], fmt, index / 30)

    tracemalloc.start()
    try:
        run(0, 300)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run(300, 2000)
        _, peak = tracemalloc.get_traced_memory()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The loop went through every path: skip, keyframe and motion.
    assert 0 < gate.skipped < gate.frames
    seen = {gate.check(frames[i % len(frames)], fmt, 100 + i / 30).value for i in range(20)}
    assert {"motion", "skip"} <= seen
    assert after - before < 4096, f"grew {after - before} B over 2000 frames"
    assert gate._grid is not None and gate._grid.luma.nbytes == 160 * 120 * 4
    assert peak - before < 48 * 1024, f"a frame allocated {peak - before} B at peak"


def test_the_pure_modules_do_not_import_opencv() -> None:
    code = (
        "import sys\n"
        "import pi_daemon.motion, pi_daemon.rules, pi_daemon.roi, pi_daemon.snapshots\n"
        "import pi_daemon.config\n"
        "assert 'cv2' not in sys.modules, 'cv2 imported'\n"
        "assert 'PIL' not in sys.modules, 'Pillow imported before a snapshot is encoded'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- the measured scenes: real photos, real video files ----------------------------------------

FPS, MAX_SKIP_S = 10.0, 5.0


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory):
    """A static scene (25 s) and one where a cat starts moving at 4 s, at 320x240 10 fps."""
    from skimage import data

    folder: Path = tmp_path_factory.mktemp("scenes")
    size = (320, 240)
    static = write_static_scene(folder / "static.avi", data.rocket(), 25.0, FPS, size)
    moving = write_motion_scene(
        folder / "motion.avi", data.rocket(), data.chelsea(), 8.0, FPS, 4.0, 60.0, size
    )
    return static, moving


@pytest.mark.parametrize("fmt", ["BGR", "YUV420"])
def test_a_static_scene_is_classified_once_per_max_skip_s(scenes, fmt) -> None:
    static, _ = scenes
    assert static.frames == 250
    verdicts = replay_verdicts(static, MotionGate(max_skip_s=MAX_SKIP_S), fmt)
    assert len(verdicts) == static.frames  # every frame of the file was read back
    startup_frames = 1
    bound = 1 / (FPS * MAX_SKIP_S) + startup_frames / len(verdicts)
    share = classified_share(verdicts)
    assert share <= bound, (share, bound)
    # Exactly the start-up frame and one keyframe per 5 s: noise never looks like motion.
    classified = [i for i, v in enumerate(verdicts) if v.classify]
    assert classified == [0, 50, 100, 150, 200]
    assert Verdict.MOTION not in verdicts


@pytest.mark.parametrize("fmt", ["BGR", "YUV420"])
def test_motion_is_classified_within_one_frame_of_its_start(scenes, fmt) -> None:
    _, moving = scenes
    verdicts = replay_verdicts(moving, MotionGate(max_skip_s=MAX_SKIP_S), fmt)
    start = moving.motion_start
    assert start == 40
    assert Verdict.MOTION not in verdicts[:start]  # resting cat + noise: no false alarm
    latency = motion_latency_frames(verdicts, start)
    assert latency is not None and latency <= 1, latency
    assert verdicts[start] is Verdict.MOTION
    # While it moves, every frame is classified.
    assert all(v is Verdict.MOTION for v in verdicts[start : start + 20])
