"""Picamera2Source against FakePicamera2, which copies picamera2's API and failure modes."""

from __future__ import annotations

import errno
import logging
import sys
import time

import cv2
import numpy as np
import pytest

from pi_daemon.errors import EX_UNAVAILABLE, SourceUnavailable
from pi_daemon.frame import check_frame
from pi_daemon.preprocess import Preprocessor
from pi_daemon.sources.base import SourceError
from pi_daemon.sources.picamera2 import (
    BUFFER_COUNT,
    Picamera2Source,
    camera_present,
    clamp_lores_size,
)
from tests.fakes.picamera2 import FakeJob, FakePicamera2, i420_from_rgb


@pytest.fixture(autouse=True)
def fresh_fake():
    FakePicamera2.reset()
    yield
    FakePicamera2.reset()


def make_source(**overrides) -> Picamera2Source:
    args = {
        "camera_num": 0,
        "main_size": (320, 240),
        "lores_size": (160, 120),  # 160 is not a multiple of 64: the array comes back padded
        "frame_rate": 10.0,
        "capture_timeout_s": 2.0,
        "picamera2_class": FakePicamera2,
    }
    args.update(overrides)
    return Picamera2Source(**args)


def camera_of(source: Picamera2Source) -> FakePicamera2:
    return FakePicamera2.instances[-1]


def assert_one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and text.strip() == text and text
    return text


# --- open / read / close ---------------------------------------------------------------


def test_open_read_close() -> None:
    source = make_source()
    source.open()
    camera = camera_of(source)
    assert camera.started and camera.is_open

    first = source.read(timeout=1.0)
    second = source.read(timeout=1.0)

    assert first.fmt == "YUV420"
    assert first.pixels.shape == (180, 160) and first.pixels.dtype == np.uint8
    assert first.size == (160, 120)
    check_frame(first)
    assert second.frame_id == first.frame_id + 1
    source.close()
    assert not camera.is_open and not camera.started
    assert FakePicamera2._acquired == set()


def test_configuration_asks_for_cheap_yuv_streams() -> None:
    source = make_source(frame_rate=7.5)
    source.open()
    config = camera_of(source).camera_configuration()

    assert config["lores"]["format"] == "YUV420"
    assert config["lores"]["size"] == (160, 120)
    assert config["main"]["size"] == (320, 240)
    assert config["main"]["format"] == "YUV420"
    assert config["buffer_count"] == BUFFER_COUNT <= 5
    assert config["controls"]["FrameRate"] == 7.5
    source.close()


def test_context_manager_closes() -> None:
    with make_source() as source:
        source.read(timeout=1.0)
        camera = camera_of(source)
    assert not camera.is_open


def test_describe_names_camera_and_size() -> None:
    assert make_source(camera_num=0).describe() == "picamera2: camera 0, lores 160x120 YUV420"


# --- lores size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("main", "lores", "expected_main", "expected_lores"),
    [
        ((320, 240), (160, 120), (320, 240), (160, 120)),
        ((320, 240), (401, 301), (320, 240), (320, 240)),  # larger than main
        ((640, 480), (225, 223), (640, 480), (224, 222)),  # odd
        ((321, 241), (400, 100), (320, 240), (320, 100)),  # odd main, wide lores
        ((640, 480), (1, 1), (640, 480), (2, 2)),
    ],
)
def test_clamp_lores_size(main, lores, expected_main, expected_lores) -> None:
    assert clamp_lores_size(main, lores) == (expected_main, expected_lores)


def test_lores_larger_than_main_is_clamped_and_logged(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pi_daemon.sources.picamera2")
    source = make_source(main_size=(320, 240), lores_size=(401, 301))
    source.open()
    frame = source.read(timeout=1.0)

    assert camera_of(source).stream_configuration("lores")["size"] == (320, 240)
    assert frame.size == (320, 240) and frame.pixels.shape == (360, 320)
    assert "clamped to 320x240" in caplog.text
    source.close()


def test_lores_size_adjusted_by_libcamera_is_the_size_read(caplog) -> None:
    """libcamera may change the lores size in validate(); picamera2 writes the final size
    into the configuration. Frames must be unpadded at that size, not the requested one."""
    caplog.set_level(logging.WARNING, logger="pi_daemon.sources.picamera2")
    FakePicamera2.picture = np.random.default_rng(3).integers(0, 256, (240, 320, 3), np.uint8)
    FakePicamera2.libcamera_adjusts = {"lores": (304, 228)}
    source = make_source(main_size=(640, 480), lores_size=(300, 224))
    source.open()
    frame = source.read(timeout=1.0)
    source.close()

    assert "libcamera adjusted lores 300x224 to 304x228" in caplog.text
    assert source.lores_size == (304, 228)
    assert source.describe() == "picamera2: camera 0, lores 304x228 YUV420"
    assert frame.size == (304, 228) and frame.pixels.shape == (342, 304)
    check_frame(frame)
    np.testing.assert_array_equal(frame.pixels, i420_from_rgb(FakePicamera2.picture, 304, 228))


@pytest.mark.parametrize(
    ("read_timeout", "capture_timeout", "wait"),
    [
        (5.0, 2.0, 2.0),  # the camera's own limit is the shorter: it wins
        (0.5, 2.0, 0.5),  # the caller's deadline is the shorter
        (2.0, 2.0, 2.0),
        (0.0, 2.0, 0.01),  # never 0: picamera2 would return a Job instead of an array
        (-1.0, 2.0, 0.01),
    ],
)
def test_read_passes_the_shorter_timeout_as_a_positive_wait(
    read_timeout: float, capture_timeout: float, wait: float
) -> None:
    source = make_source(capture_timeout_s=capture_timeout)
    source.open()
    source.read(timeout=read_timeout)
    source.close()
    assert camera_of(source).waits == [wait]


def test_different_aspect_ratio_is_warned_about(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pi_daemon.sources.picamera2")
    source = make_source(main_size=(640, 480), lores_size=(224, 224))
    source.open()
    assert "aspect ratio" in caplog.text
    source.close()


@pytest.mark.parametrize("lores", [(160, 120), (224, 224), (256, 192), (298, 224)])
def test_stride_padding_is_removed_exactly(lores) -> None:
    FakePicamera2.picture = cv2.cvtColor(
        np.random.default_rng(1).integers(0, 256, (240, 320), np.uint8), cv2.COLOR_GRAY2RGB
    )
    FakePicamera2.picture[:, :, 2] = 255 - FakePicamera2.picture[:, :, 0]
    source = make_source(main_size=(640, 480), lores_size=lores)
    source.open()
    stride = camera_of(source).stream_configuration("lores")["stride"]
    frame = source.read(timeout=1.0)

    w, h = lores
    assert stride % 64 == 0 and stride >= w
    np.testing.assert_array_equal(frame.pixels, i420_from_rgb(FakePicamera2.picture, w, h))
    source.close()


# --- colour, end to end ------------------------------------------------------------------


def test_yuv_frame_becomes_the_original_picture_in_rgb() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()  # 512x512 RGB photograph
    FakePicamera2.picture = photo
    source = make_source(main_size=(448, 448), lores_size=(224, 224))  # stride 256: padded
    source.open()
    frame = source.read(timeout=1.0)
    source.close()

    out = np.empty((224, 224, 3), np.uint8)
    Preprocessor(224, 224, "center")(frame, out)

    expected = cv2.resize(photo, (224, 224), interpolation=cv2.INTER_AREA)
    error = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert error.mean() < 8, error.mean()
    # Per channel too, so a red/blue swap cannot hide in the average.
    for channel in range(3):
        assert error[:, :, channel].mean() < 8


# --- close -------------------------------------------------------------------------------


def test_close_twice_and_before_open_is_safe() -> None:
    source = make_source()
    source.close()
    source.open()
    source.close()
    source.close()
    assert camera_of(source).close_calls == 1


def test_close_after_failed_open_is_safe() -> None:
    FakePicamera2.cameras = []
    source = make_source()
    with pytest.raises(SourceUnavailable):
        source.open()
    source.close()
    source.close()


def test_close_swallows_and_logs_errors(caplog) -> None:
    source = make_source()
    source.open()
    camera = camera_of(source)

    def broken_stop() -> None:
        raise RuntimeError("camera.stop() failed: frontend timeout")

    # The real close() calls stop() first, so it fails the same way: both are logged.
    camera.stop = broken_stop
    source.close()
    assert "stop() failed: camera.stop() failed: frontend timeout" in caplog.text
    assert "close() failed" in caplog.text
    source.close()  # the source let go of the camera object; nothing left to do
    with pytest.raises(SourceError, match="closed"):
        source.read(timeout=0.1)


def test_read_after_close_is_a_source_error() -> None:
    source = make_source()
    source.open()
    source.close()
    with pytest.raises(SourceError, match="closed"):
        source.read(timeout=0.1)


# --- open failures -----------------------------------------------------------------------


def test_busy_camera_is_unavailable_with_the_real_cause() -> None:
    holder = make_source()
    holder.open()
    second = make_source()

    with pytest.raises(SourceUnavailable) as caught:
        second.open()

    text = assert_one_line(caught.value)
    assert "camera 0" in text
    assert "Device or resource busy" in text
    assert caught.value.exit_code == EX_UNAVAILABLE
    assert caught.value.__suppress_context__  # `from None`: the CLI prints one line

    holder.close()
    second.open()  # free again once the holder let go
    assert second.read(timeout=1.0).fmt == "YUV420"
    second.close()


def test_two_cameras_open_independently() -> None:
    FakePicamera2.cameras = [
        {"Model": "imx708", "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a", "Num": 0},
        {"Model": "imx477", "Id": "/base/axi/pcie@120000/rp1/i2c@80000/imx477@1a", "Num": 1},
    ]
    first, second = make_source(camera_num=0), make_source(camera_num=1)
    first.open()
    second.open()
    cam0, cam1 = FakePicamera2.instances
    assert (cam0.camera_idx, cam1.camera_idx) == (0, 1)
    assert cam0.started and cam1.started and FakePicamera2._acquired == {0, 1}
    assert first.describe().startswith("picamera2: camera 0")
    assert second.describe().startswith("picamera2: camera 1")
    assert first.read(timeout=1.0).frame_id == second.read(timeout=1.0).frame_id == 1
    first.close()
    # Releasing one camera leaves the other acquired and streaming.
    assert not cam0.is_open and cam1.started and FakePicamera2._acquired == {1}
    assert second.read(timeout=1.0).fmt == "YUV420"
    assert (cam0.frames, cam1.frames) == (1, 2)
    second.close()
    assert FakePicamera2._acquired == set()


def test_no_camera_is_unavailable() -> None:
    FakePicamera2.cameras = []
    with pytest.raises(SourceUnavailable) as caught:
        make_source().open()
    text = assert_one_line(caught.value)
    assert "camera 0" in text and "no camera" in text


def test_camera_number_out_of_range_is_unavailable() -> None:
    with pytest.raises(SourceUnavailable) as caught:
        make_source(camera_num=1).open()
    text = assert_one_line(caught.value)
    assert "camera 1" in text and "only 1 camera" in text


@pytest.fixture
def no_picamera2_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import picamera2` fails, as off a Pi, whether or not this machine has it."""
    monkeypatch.setitem(sys.modules, "picamera2", None)


def test_missing_picamera2_module_is_unavailable(no_picamera2_module: None) -> None:
    source = make_source(picamera2_class=None)
    with pytest.raises(SourceUnavailable) as caught:
        source.open()
    text = assert_one_line(caught.value)
    assert "camera 0" in text and "picamera2" in text and "python3-picamera2" in text
    source.close()


def test_out_of_cma_memory_during_configure_is_unavailable_and_releases() -> None:
    FakePicamera2.fail_configure = OSError(errno.ENOMEM, "Cannot allocate memory")
    source = make_source()
    with pytest.raises(SourceUnavailable) as caught:
        source.open()
    text = assert_one_line(caught.value)
    assert "camera 0" in text and "Cannot allocate memory" in text and "CMA" in text
    assert FakePicamera2._acquired == set()  # a later open is not "busy"

    FakePicamera2.fail_configure = None
    source.open()
    source.close()


def test_start_failure_is_unavailable_and_releases() -> None:
    FakePicamera2.fail_start = RuntimeError("Failed to start camera: Cannot allocate memory")
    with pytest.raises(SourceUnavailable) as caught:
        make_source().open()
    assert "Failed to start camera" in assert_one_line(caught.value)
    assert FakePicamera2._acquired == set()


# --- read failures -----------------------------------------------------------------------


def test_stalled_camera_times_out_as_source_error_and_recovers() -> None:
    source = make_source(capture_timeout_s=5.0)
    source.open()
    camera = camera_of(source)
    camera.hang = True

    started = time.monotonic()
    with pytest.raises(SourceError, match=r"no frame within 0\.20 s"):
        source.read(timeout=0.2)
    elapsed = time.monotonic() - started

    assert 0.15 <= elapsed < 1.5
    assert camera.pending_jobs == 0  # the timed-out job was flushed
    camera.hang = False
    assert source.read(timeout=1.0).fmt == "YUV420"
    source.close()


def test_capture_timeout_caps_the_wait() -> None:
    source = make_source(capture_timeout_s=0.2)
    source.open()
    camera_of(source).hang = True
    started = time.monotonic()
    with pytest.raises(SourceError):
        source.read(timeout=30.0)
    assert time.monotonic() - started < 1.5
    source.close()


def test_zero_timeout_still_waits_for_an_array() -> None:
    # picamera2 treats wait=0 as "return a Job"; the source must never pass it.
    source = make_source()
    source.open()
    frame = source.read(timeout=0.0)
    assert frame.pixels.shape == (180, 160)
    source.close()


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("failed to lock-sync-write dma buf"),
        OSError(errno.EIO, "Input/output error"),
    ],
)
def test_capture_errors_become_source_errors(failure) -> None:
    source = make_source()
    source.open()
    camera_of(source).fail_capture = failure
    with pytest.raises(SourceError, match="capture failed"):
        source.read(timeout=1.0)
    source.close()


# --- camera_present ----------------------------------------------------------------------


def test_camera_present_with_a_camera() -> None:
    assert camera_present(FakePicamera2) == (True, "")
    assert FakePicamera2._acquired == set()  # probing must not hold the camera


def test_camera_present_without_a_camera() -> None:
    FakePicamera2.cameras = []
    present, reason = camera_present(FakePicamera2)
    assert not present and "no camera" in reason


def test_camera_present_when_listing_fails() -> None:
    class Broken(FakePicamera2):
        @staticmethod
        def global_camera_info():
            raise RuntimeError("libcamera: failed to start camera manager")

    present, reason = camera_present(Broken)
    assert not present and "failed to start camera manager" in reason


def test_camera_present_without_picamera2_module(no_picamera2_module: None) -> None:
    present, reason = camera_present()
    assert not present and "picamera2" in reason


# --- the fake keeps to the real library's behaviour --------------------------------------


def test_fake_busy_camera_raises_like_picamera2() -> None:
    first = FakePicamera2(0)
    with pytest.raises(RuntimeError, match=r"__init__ sequence did not complete\.") as caught:
        FakePicamera2(0)
    assert str(caught.value.__context__) == "Failed to acquire camera: Device or resource busy"
    first.close()
    FakePicamera2(0).close()


def test_fake_without_camera_raises_index_error() -> None:
    FakePicamera2.cameras = []
    with pytest.raises(IndexError):
        FakePicamera2(0)


def test_fake_rejects_rgb_lores_on_pi4_only() -> None:
    camera = FakePicamera2()
    config = camera.create_video_configuration(
        main={"size": (640, 480)}, lores={"size": (320, 240), "format": "RGB888"}
    )
    with pytest.raises(RuntimeError, match="lores stream must be YUV"):
        camera.configure(config)
    FakePicamera2.platform = "PISP"
    camera.configure(config)
    camera.close()


def test_fake_rejects_lores_larger_than_main() -> None:
    with FakePicamera2() as camera:
        config = camera.create_video_configuration(
            main={"size": (320, 240)}, lores={"size": (640, 480)}
        )
        with pytest.raises(RuntimeError, match="may not exceed main stream"):
            camera.configure(config)


def test_fake_rejects_unknown_stream_keys_and_controls() -> None:
    with FakePicamera2() as camera:
        with pytest.raises(ValueError, match="Bad key 'fmt'"):
            camera.create_video_configuration(main={"fmt": "YUV420"})
        config = camera.create_video_configuration(controls={"Framerate": 10})
        with pytest.raises(RuntimeError, match="not advertised"):
            camera.configure(config)


def test_fake_capture_before_start_times_out() -> None:
    with FakePicamera2() as camera:
        camera.configure(camera.create_video_configuration(lores={"size": (160, 120)}))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            camera.capture_array("lores", wait=0.1)
        assert time.monotonic() - started < 1.0


def test_fake_zero_wait_returns_a_job_and_close_is_idempotent() -> None:
    camera = FakePicamera2()
    camera.configure(camera.create_video_configuration(lores={"size": (160, 120)}))
    camera.start()
    assert isinstance(camera.capture_array("lores", wait=0), FakeJob)
    assert camera.capture_array("lores", wait=1.0).shape == (180, 192)  # stride-padded
    camera.close()
    camera.close()
    assert not camera.is_open
