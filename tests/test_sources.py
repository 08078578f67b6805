"""The OpenCV and files sources on real files, and source selection."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pi_daemon import sources
from pi_daemon.app import loop_settings
from pi_daemon.config import parse_config, replace
from pi_daemon.errors import ConfigError, SourceUnavailable
from pi_daemon.sources import create_source
from pi_daemon.sources.base import SourceEnded, SourceError
from pi_daemon.sources.files import FilesSource, bundled_demo_paths
from pi_daemon.sources.opencv import OpenCVSource, parse_device
from pi_daemon.sources.picamera2 import Picamera2Source
from tests.conftest import TEST_MODELS, assert_one_line_error
from tests.fakes.picamera2 import FakePicamera2


def test_opencv_source_reads_a_real_video_then_ends(demo_video):
    source = OpenCVSource(str(demo_video))
    assert not source.live
    with source:
        frames = []
        with pytest.raises(SourceEnded):
            while True:
                frames.append(source.read(1.0))
    assert len(frames) == 30
    assert frames[0].pixels.shape == (480, 640, 3) and frames[0].fmt == "BGR"
    assert [f.frame_id for f in frames] == list(range(1, 31))
    source.close()  # twice is fine


def test_opencv_source_missing_device_is_unavailable(tmp_path):
    with pytest.raises(SourceUnavailable, match="no such device or file"):
        OpenCVSource(str(tmp_path / "video9")).open()


def test_opencv_source_unopenable_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceUnavailable, match="cannot open video source"):
        OpenCVSource(str(junk)).open()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0", 0),
        ("12", 12),
        ("/dev/video0", "/dev/video0"),
        ("rtsp://cam/stream", "rtsp://cam/stream"),
    ],
)
def test_device_parsing(text, parsed):
    assert parse_device(text) == parsed


def test_url_is_a_live_stream():
    source = OpenCVSource("rtsp://127.0.0.1:1/none")
    assert source.is_stream and source.live


def test_files_source_images_once(photos):
    paths = [photos["coffee"], photos["rocket"]]
    with FilesSource(paths, loop=False) as source:
        first, second = source.read(1), source.read(1)
        with pytest.raises(SourceEnded):
            source.read(1)
    # Decoded by Pillow as RGB: the same pixels OpenCV decodes (as BGR).
    assert first.fmt == second.fmt == "RGB"
    assert np.array_equal(first.pixels, cv2.imread(str(paths[0]))[..., ::-1])
    assert np.array_equal(second.pixels, cv2.imread(str(paths[1]))[..., ::-1])


def test_files_source_refits_its_stills_for_another_model(tmp_path, photos):
    """A reload to another input size: the stills are decoded again for the new model, not
    blown up from the old one's; a file gone since leaves the stills in use as they were."""
    from pi_daemon.images import decode_image
    from pi_daemon.preprocess import Preprocessor

    small, large = Preprocessor(32, 32), Preprocessor(224, 224)
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(photos["coffee"].read_bytes())
    with FilesSource([photo], loop=True, prescale=small.prescale) as source:
        before = source.read(1)
        source.refit(large.prescale)
        after = source.read(1)
        photo.unlink()
        with pytest.raises(ConfigError, match="file not found"):
            source.refit(small.prescale)
        kept = source.read(1)
    assert min(before.size) == 32
    fitted = large.prescale(decode_image(photos["coffee"]))
    assert min(after.size) == 224 and np.array_equal(after.pixels, fitted)
    assert np.array_equal(kept.pixels, fitted)


def test_files_source_loops_a_video(demo_video):
    with FilesSource([demo_video], loop=True) as source:
        ids = [source.read(1).frame_id for _ in range(75)]
    assert ids == list(range(1, 76))


def test_files_source_paced(photos):
    import time

    with FilesSource([photos["coffee"]], loop=True, fps=50) as source:
        assert source.live
        start = time.monotonic()
        for _ in range(11):
            source.read(1)
        elapsed = time.monotonic() - start
    assert 0.18 <= elapsed < 1.0


def test_files_source_read_after_close_is_an_error(photos):
    source = FilesSource([photos["coffee"]])
    source.open()
    source.close()
    with pytest.raises(SourceError):
        source.read(1)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp, p: [tmp / "gone.mp4"], "file not found"),
        (lambda tmp, p: [tmp / "gone.jpg"], "file not found"),
        (lambda tmp, p: [p["coffee"], tmp / "v.avi"], "file not found"),
    ],
)
def test_files_source_missing_paths_are_config_errors(tmp_path, photos, make, fragment):
    with pytest.raises(ConfigError, match=fragment):
        FilesSource(make(tmp_path, photos)).open()


def test_files_source_rejects_unreadable_image_and_mixed_video(tmp_path, photos, demo_video):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot decode image"):
        FilesSource([bad]).open()
    with pytest.raises(ConfigError, match="a video must be the only path"):
        FilesSource([photos["coffee"], demo_video]).open()
    notvideo = tmp_path / "clip.mp4"
    notvideo.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="cannot open as video"):
        FilesSource([notvideo]).open()


def test_bundled_demo_is_the_default():
    assert [p.name for p in bundled_demo_paths()] == ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    assert FilesSource([]).paths == bundled_demo_paths()


def test_create_source_resolves_relative_paths(tmp_path, photos):
    (tmp_path / "img.jpg").write_bytes(photos["coffee"].read_bytes())
    config = parse_config({"source": "files", "files": {"paths": ["img.jpg"]}})
    source = create_source(config, (224, 224), tmp_path)
    assert isinstance(source, FilesSource) and source.paths == [tmp_path / "img.jpg"]


# -- source = "auto": decided once, from what this machine has -----------------------------
# The hardware edge is replaced, not the host probed: picamera2 is the fake (or absent),
# and the V4L2 device is a path the test creates or not.


@pytest.fixture
def fake_picamera2_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakePicamera2]]:
    FakePicamera2.reset()
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    yield FakePicamera2
    FakePicamera2.reset()


@pytest.fixture
def v4l2_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Where `auto` looks for a V4L2 camera; absent until the test creates it."""
    device = tmp_path / "video0"
    monkeypatch.setattr(sources, "DEFAULT_V4L2_DEVICE", str(device))
    return device


AUTO = parse_config({"source": "auto", "picamera2": {"capture_timeout_s": 1.5}})


def test_auto_prefers_a_pi_camera(fake_picamera2_module, v4l2_device, caplog):
    v4l2_device.touch()  # a USB webcam too: the Pi camera still wins
    caplog.set_level(logging.INFO, logger="pi_daemon.sources")
    source = create_source(AUTO, (224, 224))
    assert isinstance(source, Picamera2Source) and source.name == "picamera2"
    assert source.capture_timeout_s == 1.5 and source.lores_size == (300, 224)
    assert "source = auto: using picamera2" in caplog.text
    assert FakePicamera2._acquired == set()  # probing never opens (and so never holds) it
    # The loop takes the camera's capture timeout, not OpenCV's, for the kind `auto` chose.
    assert source.read_timeout_s == 1.5  # the camera's own timeout, not opencv's


def test_auto_without_a_pi_camera_uses_the_v4l2_device(fake_picamera2_module, v4l2_device):
    fake_picamera2_module.cameras = []  # picamera2 imports, but libcamera lists nothing
    v4l2_device.touch()
    source = create_source(AUTO, (224, 224))
    assert isinstance(source, OpenCVSource) and source.device == str(v4l2_device)
    assert source.read_timeout_s == AUTO.opencv.read_timeout_s


def test_auto_ignores_the_opencv_device_setting(fake_picamera2_module, v4l2_device):
    """`opencv.device` belongs to `source = "opencv"`; auto probes only the standard node."""
    fake_picamera2_module.cameras = []
    v4l2_device.touch()
    config = parse_config({"source": "auto", "opencv": {"device": "rtsp://cam/stream"}})
    assert create_source(config, (224, 224)).device == str(v4l2_device)


def test_auto_without_any_camera_names_both(monkeypatch, v4l2_device):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed, as off a Pi
    with pytest.raises(SourceUnavailable) as caught:
        create_source(AUTO, (224, 224))
    text = str(caught.value)
    assert "\n" not in text and caught.value.exit_code == 69
    assert "picamera2: picamera2 camera 0: cannot import picamera2" in text
    assert f"opencv: {v4l2_device} does not exist" in text


def test_each_source_kind_reads_with_its_own_timeout(fake_picamera2_module):
    """The fact is decided once, by the source actually built: a camera's capture timeout,
    a stream's read timeout, a paced replay's frame interval (plus decoding)."""
    config = parse_config(
        {
            "picamera2": {"capture_timeout_s": 1.5},
            "opencv": {"read_timeout_s": 7.0},
            "files": {"fps": 0.1},
        }
    )
    kinds = {kind: create_source(replace(config, source=kind), (224, 224)) for kind in
             ("picamera2", "opencv", "files")}  # fmt: skip
    assert kinds["picamera2"].read_timeout_s == 1.5
    assert kinds["opencv"].read_timeout_s == 7.0
    assert kinds["files"].read_timeout_s == pytest.approx(10.0 + 5.0)  # interval + decode
    assert loop_settings(config).stall_timeout_s == config.capture.stall_timeout_s


# The real CLI with no camera of either kind: `auto` exits 69 in one line. The child
# blocks picamera2 and points the V4L2 probe at a missing node (the hardware edge).
NO_CAMERA_CHILD = """
import sys
sys.modules["picamera2"] = None
import pi_daemon.sources
pi_daemon.sources.DEFAULT_V4L2_DEVICE = sys.argv.pop(1)
from pi_daemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_auto_without_any_camera_exits_69(write_config, tmp_path):
    from tests.conftest import assert_one_line_error

    config = write_config('source = "auto"\n')
    missing = tmp_path / "video0"
    result = subprocess.run(
        [sys.executable, "-c", NO_CAMERA_CHILD, str(missing), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PI_DAEMON_LOG_TARGET": "stderr"},
    )
    assert_one_line_error(result, 69, "picamera2:", f"{missing} does not exist")


def test_explicit_opencv_device_missing_exits_69(cli, write_config, tmp_path):
    from tests.conftest import assert_one_line_error

    config = write_config(f'source = "opencv"\n[opencv]\ndevice = "{tmp_path}/video7"\n')
    result = cli("run", "--config", str(config))
    assert_one_line_error(result, 69, "video7", "no such device")


def test_missing_video_file_in_config_exits_78(cli, write_config, tmp_path):
    from tests.conftest import assert_one_line_error

    config = write_config(f'source = "files"\n[files]\npaths = ["{tmp_path}/clip.mp4"]\n')
    result = cli("run", "--config", str(config))
    assert_one_line_error(result, 78, "files.paths", "clip.mp4", "file not found")


@pytest.mark.parametrize(
    ("main", "model", "lores"),
    [
        ((640, 480), (224, 224), (300, 224)),
        ((480, 640), (224, 224), (224, 300)),
        ((224, 224), (224, 224), (224, 224)),
        ((1920, 1080), (224, 224), (400, 224)),
    ],
)
def test_picamera2_lores_keeps_main_aspect(main, model, lores):
    from pi_daemon.sources import lores_size_for

    assert lores_size_for(main, model) == lores


# -- timeouts come from the source (a slow replay is not a fault) -------------------------


@pytest.mark.parametrize(
    ("make", "read_timeout", "interval"),
    [
        (lambda: FilesSource([], fps=0.1), 15.0, 10.0),
        (lambda: FilesSource([], fps=20), 5.05, 0.05),
        (lambda: FilesSource([], fps=0), 5.0, 0.0),
        (lambda: OpenCVSource("rtsp://127.0.0.1:1/x", read_timeout_s=3.0), 3.0, 0.0),
    ],
)
def test_each_source_says_its_natural_read_timeout(make, read_timeout, interval):
    source = make()
    assert source.read_timeout_s == pytest.approx(read_timeout)
    assert source.frame_interval_s == pytest.approx(interval)


def test_picamera2_under_auto_gets_its_own_timeout():
    """`source = "auto"` resolving to a Pi camera reads with picamera2's timeout (and waits
    for a slow frame rate), never opencv.read_timeout_s."""
    from pi_daemon.sources.picamera2 import Picamera2Source

    config = parse_config(
        {
            "source": "picamera2",
            "picamera2": {"capture_timeout_s": 1.5, "frame_rate": 0.25},
            "opencv": {"read_timeout_s": 42.0},
        }
    )
    source = create_source(config, (224, 224))
    assert isinstance(source, Picamera2Source)
    assert source.read_timeout_s == 8.0 and source.frame_interval_s == 4.0
    fast = Picamera2Source(0, (640, 480), (224, 224), 30.0, 1.5)
    assert fast.read_timeout_s == 1.5


def test_a_slow_replay_runs_without_source_faults(cli, write_config, photos, tmp_path):
    """files.fps = 0.15: a frame every 6.7 s, longer than opencv.read_timeout_s (5 s), and
    two of them longer than capture.stall_timeout_s (10 s)."""
    events = tmp_path / "events.jsonl"
    config = write_config(
        f'source = "files"\n[files]\npaths = ["{photos["coffee"]}"]\nfps = 0.15\n'
        f'[output]\nevents_file = "{events}"\n'
        f'[model]\npath = "{TEST_MODELS / "tiny_uint8.tflite"}"\n'
        f'labels = "{TEST_MODELS / "tiny_labels.txt"}"\n'
    )
    result = cli("run", "--config", str(config), "--max-frames", "3", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "source_fault" not in result.stderr and "no frame from" not in result.stderr
    assert "failed" not in result.stderr, result.stderr
    assert "stall timeout 13.3 s" in result.stderr
    lines = events.read_text().splitlines()
    assert sum('"type":"result"' in line for line in lines) == 3


def test_stop_cuts_a_slow_replay_short(photos):
    """SIGTERM must not wait out a 10 s pacing interval: interrupt() ends the wait."""
    import threading
    import time

    source = FilesSource([photos["coffee"]], fps=0.1)
    with source:
        source.read(source.read_timeout_s)  # the first frame is due at once
        timer = threading.Timer(0.3, source.interrupt)
        timer.start()
        started = time.monotonic()
        source.read(source.read_timeout_s)
        assert time.monotonic() - started < 2.0


# -- corrupt videos: pi-daemon names the file and the problem; FFmpeg stays quiet ---------


def _damaged(video: Path, folder: Path, how: str) -> Path:
    data = bytearray(video.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # bytes flipped from the middle on: frames stop decoding
        for i in range(len(data) // 2, len(data), 97):
            data[i] ^= 0xFF
    path = folder / f"{how}.avi"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_corrupt_video_replay_is_not_a_clean_end(cli, write_config, demo_video, tmp_path, how):
    video = _damaged(demo_video, tmp_path, how)
    events = tmp_path / "events.jsonl"
    config = write_config(
        f'source = "files"\n[files]\npaths = ["{video}"]\nloop = false\n'
        f'[output]\nevents_file = "{events}"\n'
    )
    result = cli("run", "--config", str(config), timeout=120)
    line = assert_one_line_error(result, 78, f"files.paths: {video}: decoding stopped at frame")
    assert "of 30 (the file is corrupt or truncated)" in line
    # FFmpeg's own lines ("[mjpeg @ 0x...] overread 8") stay out of stderr (the journal).
    assert " @ 0x" not in result.stderr, result.stderr
    # What was classified before the damage is kept.
    decoded = int(line.split("decoding stopped at frame ")[1].split()[0]) - 1
    results = [x for x in events.read_text().splitlines() if '"type":"result"' in x]
    assert len(results) == decoded > 0


def test_a_looping_corrupt_video_warns_once(demo_video, tmp_path, caplog):
    video = _damaged(demo_video, tmp_path, "truncated")
    with FilesSource([video], loop=True) as source:
        for _ in range(60):  # more than two passes over what decodes
            source.read(1.0)
    warnings = [r for r in caplog.records if "decoding stopped" in r.getMessage()]
    assert len(warnings) == 1 and "replaying it from the start" in warnings[0].getMessage()


def test_a_video_that_decodes_nothing_is_refused_at_open(tmp_path, demo_video):
    data = bytearray(demo_video.read_bytes())
    header_end = data.find(b"movi") + 8
    for i in range(header_end, len(data)):
        data[i] = 0
    video = tmp_path / "zeros.avi"
    video.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"zeros\.avi: (no frame can be decoded|cannot open)"):
        FilesSource([video]).open()


def test_a_corrupt_video_as_opencv_device_is_a_config_error(demo_video, tmp_path):
    video = _damaged(demo_video, tmp_path, "truncated")
    source = OpenCVSource(str(video))
    with source, pytest.raises(ConfigError, match=r"opencv\.device: .*decoding stopped"):
        while True:
            source.read(1.0)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_special_files_as_videos_are_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "clip.mp4"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(ConfigError, match=f"files.paths: {path}: not a regular file"):
        FilesSource([path]).open()
    with pytest.raises(SourceUnavailable, match=f"opencv.device: {path}: not a regular file"):
        OpenCVSource(str(path)).open()


def test_a_fifo_under_dev_is_not_a_video_device(tmp_path):
    OpenCVSource("/dev/null")._check_path("/dev/null")  # a character device passes the check
    fifo = tmp_path / "dev-fifo"
    os.mkfifo(fifo)
    source = OpenCVSource(str(fifo))
    source.is_file = False  # as if it lived under /dev
    with pytest.raises(SourceUnavailable, match="not a video device"):
        source._check_path(str(fifo))
