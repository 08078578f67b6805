"""The whole daemon with motion gating, event rules and snapshots: real scene videos made
from real photos, replayed at camera pace through a real `pi-daemon run` process."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from skimage import data

from pi_daemon.bench.scenes import write_motion_scene, write_static_scene
from tests.conftest import write_sensor_files
from tests.test_notify import NotifySocket, notify_env

FPS = 10.0
MAX_SKIP_S = 2.0


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scenes")
    coffee, cat = data.coffee(), data.chelsea()
    static = write_static_scene(folder / "static.avi", coffee, seconds=8, fps=FPS)
    moving = write_motion_scene(
        folder / "motion.avi", coffee, cat, seconds=6, fps=FPS, motion_start_s=3.0,
        speed_px_per_s=120,
    )  # fmt: skip
    assert static.frames == 80 and moving.motion_start == 30
    return {"static": static.path, "motion": moving.path}


def config_for(folder: Path, video: Path, extra: str = "", motion: bool = True) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""
source = "files"
[files]
paths = ["{video}"]
loop = false
fps = {FPS}
[output]
events_file = "{folder / "events.jsonl"}"
summary_interval_s = 2.0
[motion]
enabled = {"true" if motion else "false"}
max_skip_s = {MAX_SKIP_S}
{extra}
{write_sensor_files(folder)}
"""
    )
    return path


def run(config: Path, *args: str, env: dict[str, str] | None = None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "pi_daemon", "run", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PI_DAEMON_LOG_TARGET": "stderr", **(env or {})},
    )


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_a_static_scene_is_classified_once_per_max_skip_s(tmp_path, scenes):
    done = run(config_for(tmp_path, scenes["static"]))
    assert done.returncode == 0, done.stderr
    records = events(tmp_path)
    results = [e for e in records if e["type"] == "result"]
    stop = next(e for e in records if e["type"] == "stop")
    taken = 80 - stop["dropped_frames"]  # a loaded machine may drop one; none is lost
    # At most 1/(fps x max_skip_s) of the frames, plus the first one.
    assert len(results) <= math.ceil(taken / (FPS * MAX_SKIP_S)) + 1, len(results)
    assert stop["frames"] == len(results) and stop["skipped_frames"] == taken - len(results)
    summaries = [e for e in records if e["type"] == "summary"]
    assert sum(s["skipped_frames"] for s in summaries) == taken - len(results)
    assert sum(s["frames"] for s in summaries) == len(results)
    # The keyframes are spread out by max_skip_s, not bunched.
    times = [r["time"] for r in results]
    assert all(b - a >= MAX_SKIP_S - 0.3 for a, b in itertools.pairwise(times))


def test_motion_is_classified_within_a_frame_of_starting(tmp_path, scenes):
    done = run(config_for(tmp_path, scenes["motion"]))
    assert done.returncode == 0, done.stderr
    records = events(tmp_path)
    results = [e for e in records if e["type"] == "result"]
    # A frame the loop was too busy for is dropped (a loaded machine) and leaves a gap
    # in the frame ids; allow exactly as many gaps as the daemon reports drops.
    dropped = next(e for e in records if e["type"] == "stop")["dropped_frames"]
    # Frame ids start at 1 at the video's first frame; the first moved frame is index 30.
    moved = [r["frame_id"] for r in results if r["frame_id"] >= 31]
    assert moved and moved[0] - 31 <= dropped, ([r["frame_id"] for r in results], dropped)
    # Once the cat moves, every frame is classified.
    assert len(set(range(31, 41)) - set(moved)) <= dropped, (moved, dropped)


def test_without_the_gate_every_frame_is_classified(tmp_path, scenes):
    done = run(config_for(tmp_path, scenes["static"], motion=False))
    assert done.returncode == 0, done.stderr
    stop = next(e for e in events(tmp_path) if e["type"] == "stop")
    # A paced replay is a live source: a frame the loop was too busy for (a loaded
    # machine) is dropped, not skipped. None is skipped as unchanged, and every frame
    # is accounted for.
    assert stop["skipped_frames"] == 0, stop
    assert stop["frames"] + stop["dropped_frames"] == 80, stop
    assert stop["frames"] >= 60, stop


def test_max_frames_counts_frames_taken_classified_or_skipped(tmp_path, scenes):
    done = run(config_for(tmp_path, scenes["static"]), "--max-frames", "25")
    assert done.returncode == 0, done.stderr
    stop = next(e for e in events(tmp_path) if e["type"] == "stop")
    assert stop["frames"] + stop["skipped_frames"] == 25 and stop["skipped_frames"] > 15


def test_the_watchdog_is_fed_while_frames_are_skipped(tmp_path, scenes):
    socket = NotifySocket(tmp_path / "notify")
    try:
        done = run(config_for(tmp_path, scenes["static"]), env=notify_env(socket, 1.0))
        assert done.returncode == 0, done.stderr
        pings = [m.received for m in socket.messages if m.fields.get("WATCHDOG") == "1"]
    finally:
        socket.close()
    # 8 s of replay with a keyframe every 2 s: pings at least every half-interval (0.5 s)
    # while frames are skipped, never only at the keyframes.
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 10 and max(gaps) < 1.0, gaps


def test_label_events_with_snapshots(tmp_path, scenes, private_state_directory):
    extra = """
[rules]
start_frames = 2
window_frames = 3
min_score = 0.2
end_after_s = 1.0
cooldown_s = 0.0
[snapshots]
enabled = true
"""
    done = run(config_for(tmp_path, scenes["motion"], extra))
    assert done.returncode == 0, done.stderr
    labels = [e for e in events(tmp_path) if e["type"] == "label"]
    starts = [e for e in labels if e["event"] == "start"]
    assert starts, done.stderr
    first = starts[0]
    assert {"label", "peak_score", "first_frame", "last_frame", "duration_s", "snapshot"} <= set(
        first
    )
    snapshot = private_state_directory / "snapshots" / first["snapshot"]
    assert snapshot.is_file() and snapshot.read_bytes()[:2] == b"\xff\xd8"
    # The still is the original frame (640x480), not the model's 224x224 input.
    from PIL import Image

    with Image.open(snapshot) as picture:
        assert picture.size == (640, 480)
    # Every start has its end by the end of the run, naming the same snapshot.
    ends = {e["label"]: e for e in labels if e["event"] == "end"}
    assert ends[first["label"]]["snapshot"] == first["snapshot"]
    assert f"{first['label']} started: peak" in done.stderr


def test_a_start_events_snapshot_is_published_retained_over_mqtt(
    tmp_path, scenes, private_state_directory
):
    from tests.mqtt_broker import HOST, USERS, Broker, Subscriber

    broker = Broker()
    try:
        broker.start()
        subscriber = Subscriber(broker, ["pi-daemon/cam/#"], client_id="ha-snapshot")
        password = tmp_path / "password"
        password.write_text(USERS["pi"])
        password.chmod(0o600)
        extra = f"""
[rules]
start_frames = 2
window_frames = 3
min_score = 0.2
[snapshots]
enabled = true
[mqtt]
enabled = true
host = "{HOST}"
port = {broker.port}
username = "pi"
password_file = "{password}"
device_id = "cam"
"""
        done = run(config_for(tmp_path, scenes["motion"], extra))
        assert done.returncode == 0, done.stderr
        start = next(e for e in events(tmp_path) if e["type"] == "label")
        assert subscriber.wait_for(lambda s: bool(s.snapshot("/snapshot")), 10)
        jpeg = subscriber.snapshot("/snapshot")[-1].payload
        saved = sorted((private_state_directory / "snapshots").glob("*.jpg"))
        assert jpeg[:2] == b"\xff\xd8" and jpeg in {path.read_bytes() for path in saved}
        assert (private_state_directory / "snapshots" / start["snapshot"]).is_file()
        subscriber.close()
    finally:
        broker.cleanup()
