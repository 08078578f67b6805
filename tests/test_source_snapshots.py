"""Sources hand over a full-size still for an event's snapshot.

picamera2 captures its main stream (against FakePicamera2, which queues capture jobs and
cancels them on a flush the way picamera2 does); the files and opencv sources return
the original frame, before the capture thread shrinks it for the model.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pi_daemon.capture import CaptureThread, FramePreparer, LatestFrameSlot, RetryPolicy
from pi_daemon.images import decode_image
from pi_daemon.snapshots import SnapshotStore, encode_jpeg
from pi_daemon.sources.base import SourceEnded, SourceError
from pi_daemon.sources.files import FilesSource
from pi_daemon.sources.opencv import OpenCVSource
from pi_daemon.sources.picamera2 import Picamera2Source
from tests.fakes.picamera2 import FakePicamera2, i420_from_rgb


@pytest.fixture(autouse=True)
def fresh_fake():
    FakePicamera2.reset()
    yield
    FakePicamera2.reset()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def camera_source(**overrides) -> Picamera2Source:
    args = {
        "camera_num": 0,
        "main_size": (640, 480),
        "lores_size": (224, 168),
        "frame_rate": 10.0,
        "capture_timeout_s": 2.0,
        "picamera2_class": FakePicamera2,
    }
    args.update(overrides)
    return Picamera2Source(**args)


def camera_of() -> FakePicamera2:
    return FakePicamera2.instances[-1]


# -- picamera2: the main stream -------------------------------------------------------------


def test_a_picamera2_still_comes_from_the_main_stream_at_main_size(astronaut) -> None:
    FakePicamera2.picture = astronaut
    with camera_source() as source:
        lores = source.read(1.0)
        still = source.snapshot(lores.frame_id, timeout=1.0)
        camera = camera_of()
    assert lores.size == (224, 168)
    assert still.fmt == "YUV420" and still.size == (640, 480)
    assert camera.captures == ["lores", "main"]
    assert still.frame_id == lores.frame_id  # the newest lores frame read before it
    assert np.array_equal(still.pixels, i420_from_rgb(astronaut, 640, 480))


def test_a_padded_main_stream_is_unpadded(astronaut) -> None:
    FakePicamera2.picture = astronaut
    # 330 is not a multiple of 64: the array comes back with a 384-byte stride.
    with camera_source(main_size=(330, 248), lores_size=(160, 120)) as source:
        still = source.snapshot(timeout=1.0)
    assert still.pixels.shape == (372, 330)
    assert np.array_equal(still.pixels, i420_from_rgb(astronaut, 330, 248))


def test_the_still_becomes_a_main_size_jpeg_with_the_cameras_colours(astronaut, tmp_path) -> None:
    FakePicamera2.picture = astronaut
    store = SnapshotStore(tmp_path, max_bytes=1 << 20)
    with camera_source() as source:
        source.read(1.0)
        name = store.take(lambda: source.snapshot(timeout=1.0), "tabby", 1)
    assert name is not None
    with Image.open(tmp_path / name) as image:
        assert image.size == (640, 480)
        back = np.asarray(image.convert("RGB")).astype(np.int16)
    expected = cv2.resize(astronaut, (640, 480), interpolation=cv2.INTER_AREA)
    assert np.abs(back - expected).mean() < 6.0


def test_a_still_taken_beside_the_capture_thread_costs_it_one_frame(astronaut) -> None:
    FakePicamera2.picture = astronaut
    source = camera_source()
    source.open()
    camera = camera_of()
    stop = threading.Event()
    lores_frames = []

    def capture() -> None:
        while not stop.is_set():
            lores_frames.append(source.read(1.0).frame_id)

    reader = threading.Thread(target=capture)
    reader.start()
    try:
        while not lores_frames:
            time.sleep(0.01)
        still = source.snapshot(timeout=1.0)
    finally:
        stop.set()
        reader.join(5)
        source.close()
    assert still.size == (640, 480)
    assert camera.captures.count("main") == 1
    assert camera.captures.count("lores") == len(lores_frames) >= 1
    assert camera.frames == len(camera.captures)  # one frame per served job


def test_a_stalled_camera_times_out_without_flushing_the_capture_threads_read() -> None:
    with camera_source(capture_timeout_s=5.0) as source:
        camera = camera_of()
        camera.hang = True
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no main-stream still within 0\.20 s"):
            source.snapshot(timeout=0.2)
        assert time.monotonic() - started < 1.5
        # Left queued, not flushed: a flush would cancel every other waiter too.
        assert camera.pending_jobs == 1
        camera.hang = False
        assert source.read(1.0).fmt == "YUV420"
        # The stale job took a frame first; nobody saw it.
        assert camera.frames == 2 and camera.captures == ["lores"]


def test_a_flush_by_a_timed_out_read_cancels_a_waiting_still() -> None:
    with camera_source(capture_timeout_s=5.0) as source:
        camera = camera_of()
        camera.hang = True
        outcome: list[BaseException] = []

        def still() -> None:
            try:
                source.snapshot(timeout=3.0)
            except SourceError as error:
                outcome.append(error)

        waiter = threading.Thread(target=still)
        waiter.start()
        while not camera._jobs:  # the still's job is queued
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(SourceError, match="no frame within"):
            source.read(timeout=0.2)  # times out and calls cancel_all_and_flush()
        waiter.join(5)
        assert time.monotonic() - started < 2.0  # cancelled, not left to time out
    assert len(outcome) == 1 and "cancelled by a flush" in str(outcome[0])
    assert isinstance(outcome[0].__cause__, CancelledError)


def test_a_closed_or_failing_camera_hands_over_no_still() -> None:
    source = camera_source()
    with pytest.raises(SourceError, match="source is closed"):
        source.snapshot()
    source.open()
    camera_of().fail_capture = RuntimeError("failed to lock-sync-write dma buf")
    with pytest.raises(SourceError, match="still capture failed: failed to lock-sync-write"):
        source.snapshot()
    source.close()


def test_the_fake_cancels_waiters_in_other_threads_like_picamera2() -> None:
    camera = FakePicamera2()
    camera.configure(camera.create_video_configuration())
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            camera.capture_array("main", wait=5.0)
        except BaseException as error:
            caught.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()  # not started: no frames, so it waits
    while not camera._jobs:
        time.sleep(0.01)
    camera.cancel_all_and_flush()
    waiter.join(5)
    assert len(caught) == 1 and isinstance(caught[0], CancelledError)
    camera.close()


# -- files and opencv: the original frame ---------------------------------------------------------


def test_without_keep_recent_a_files_source_has_no_still(photos: dict[str, Path]) -> None:
    with FilesSource([photos["coffee"]], loop=True) as source:
        source.read(1.0)
        with pytest.raises(SourceError, match="no frame kept"):
            source.snapshot()


def test_a_files_source_hands_back_the_original_frame_by_id(photos: dict[str, Path]) -> None:
    paths = [photos[name] for name in ("coffee", "chelsea", "rocket", "astronaut")]
    originals = [decode_image(p) for p in paths]  # the files source hands over RGB
    with FilesSource(paths, loop=True) as source:
        source.keep_recent(3)
        frames = [source.read(1.0) for _ in range(6)]  # ids 1-6: coffee .. astronaut, coffee, ..
        assert source.snapshot(5).frame_id == 5
        assert np.array_equal(source.snapshot(5).pixels, originals[0])
        assert source.snapshot(4).pixels.shape == originals[3].shape
        # Frame 2 is no longer held: the newest one is the nearest there is.
        assert source.snapshot(2).frame_id == 6
        assert source.snapshot().frame_id == 6
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 5, 6]


def test_an_opencv_source_hands_back_the_original_decoded_frame(demo_video: Path) -> None:
    with OpenCVSource(str(demo_video)) as source:
        source.keep_recent(3)
        frames = [source.read(1.0) for _ in range(5)]
        still = source.snapshot(frames[3].frame_id)
    assert still is frames[3]
    assert still.pixels.shape == (480, 640, 3) and still.fmt == "BGR"
    assert encode_jpeg(still.pixels, still.fmt)[:2] == b"\xff\xd8"


def test_keep_recent_3_is_exact_behind_a_capture_thread_that_runs_ahead(
    photos: dict[str, Path],
) -> None:
    """The capture thread prepares frames ahead of a slow consumer; the still for the
    frame being classified is still that frame's original, full size."""
    paths = [photos[name] for name in ("coffee", "chelsea", "rocket", "astronaut")]
    originals = [decode_image(p) for p in paths]  # the files source hands over RGB
    source = FilesSource(paths, loop=False)
    source.open()
    source.keep_recent(3)
    slot, stop = LatestFrameSlot(), threading.Event()
    thread = CaptureThread(source, slot, stop, RetryPolicy(), prepare=FramePreparer(32, 32))
    thread.start()
    matched = 0
    try:
        while True:
            try:
                frame = slot.take(5.0, wake_producer=False)
            except SourceEnded:
                break
            assert frame is not None and frame.size == (32, 32)
            slot.wake_producer()
            time.sleep(0.3)  # "invoke": the capture thread reads and prepares ahead
            still = source.snapshot(frame.frame_id)
            assert still.frame_id == frame.frame_id
            assert np.array_equal(still.pixels, originals[frame.frame_id - 1])
            matched += 1
    finally:
        stop.set()
        thread.join(5)
    assert matched == 4
