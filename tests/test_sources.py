"""The OpenCV and files sources on real files, and source selection."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from pi_daemon.config import parse_config
from pi_daemon.errors import ConfigError, SourceUnavailable
from pi_daemon.sources import create_source
from pi_daemon.sources.base import SourceEnded, SourceError
from pi_daemon.sources.files import FilesSource, bundled_demo_paths
from pi_daemon.sources.opencv import OpenCVSource, parse_device


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
    assert np.array_equal(first.pixels, cv2.imread(str(paths[0])))
    assert np.array_equal(second.pixels, cv2.imread(str(paths[1])))


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


@pytest.mark.skipif(os.path.exists("/dev/video0"), reason="this machine has /dev/video0")
def test_auto_without_any_camera_names_both(cli, write_config):
    from tests.conftest import assert_one_line_error

    config = write_config('source = "auto"\n')
    result = cli("run", "--config", str(config))
    assert_one_line_error(result, 69, "picamera2:", "/dev/video0 does not exist")


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
