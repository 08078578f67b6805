"""Event snapshots: real JPEGs, atomic writes, the byte quota, and a real full or
read-only filesystem (a small tmpfs mounted by the test), which must never raise."""

from __future__ import annotations

import io
import logging
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pi_daemon.config import SnapshotsSection
from pi_daemon.frame import Frame
from pi_daemon.snapshots import (
    SnapshotStore,
    encode_jpeg,
    snapshot_directory,
    snapshot_name,
)
from pi_daemon.sources.base import SourceError

LOGGER = "pi_daemon.snapshots"


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)


def frame_of(rgb: np.ndarray, fmt: str = "RGB", frame_id: int = 1) -> Frame:
    if fmt == "BGR":
        pixels = np.ascontiguousarray(rgb[:, :, ::-1])
    elif fmt == "YUV420":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    else:
        pixels = rgb
    return Frame(pixels, fmt, frame_id, 1_700_000_000.25, 10.0)  # type: ignore[arg-type]


def decode(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "JPEG"
        return np.asarray(image.convert("RGB"))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


def infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO
    ]


def mount_tmpfs(where: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: mounting a small tmpfs (a real full disk) needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A real 192 KiB filesystem of our own; unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    mount_tmpfs(mount, "size=192k,mode=0755")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


# -- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["RGB", "BGR", "YUV420"])
def test_every_frame_format_becomes_a_faithful_jpeg(photo, fmt) -> None:
    data = encode_jpeg(frame_of(photo, fmt).pixels, fmt, quality=90)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (320, 240)
        back = np.asarray(image.convert("RGB")).astype(np.int16)
    # Colours survive (BGR is not swapped, YUV's limited range is stretched back).
    assert np.abs(back.mean((0, 1)) - photo.mean((0, 1))).max() < 2.0
    assert np.abs(back - photo).mean() < 6.0


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), "NV12")


def test_names_sort_by_time_and_are_shell_safe() -> None:
    assert snapshot_name("Tiger cat / x", 42, 1_700_000_000.25) == (
        "20231114T221320.250Z-frame42-tiger-cat-x.jpg"
    )
    assert snapshot_name("", 1, 0.0) == "19700101T000000.000Z-frame1-frame.jpg"
    assert len(snapshot_name("a" * 500, 1, 0.0)) < 100


# -- writing -----------------------------------------------------------------------------------


def test_a_snapshot_is_written_through_a_synced_temp_file_then_renamed(
    tmp_path, photo, monkeypatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst) -> None:
        calls.append(("rename", f"{Path(src).name} -> {Path(dst).name}"))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    store = SnapshotStore(tmp_path / "snaps", max_bytes=1 << 20)
    name = store.save(frame_of(photo, frame_id=7), "tabby", 7)
    assert name == "20231114T221320.250Z-frame7-tabby.jpg"
    temp = f".snapshot-{name}.tmp"
    assert calls == [
        ("fsync", str(tmp_path / "snaps" / temp)),  # the data is on disk ...
        ("rename", f"{temp} -> {name}"),  # ... before the name appears ...
        ("fsync", str(tmp_path / "snaps")),  # ... and the rename is made durable.
    ]
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [name]
    assert decode(tmp_path / "snaps" / name).shape == (240, 320, 3)
    assert store.saved == 1 and store.total_bytes == (tmp_path / "snaps" / name).stat().st_size


def test_the_quota_deletes_the_oldest_first(tmp_path, photo) -> None:
    size = len(encode_jpeg(photo, "RGB"))
    store = SnapshotStore(tmp_path, max_bytes=int(size * 4.5))
    names = []
    for number in range(12):
        frame = frame_of(photo, frame_id=number)
        names.append(store.save(frame, "tabby", number, wall_time=1_700_000_000 + number))
        on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert on_disk <= store.max_bytes
        assert on_disk == store.total_bytes
    assert None not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == names[-4:]


def test_snapshots_of_an_earlier_run_count_and_torn_temp_files_go(tmp_path, photo) -> None:
    size = len(encode_jpeg(photo, "RGB"))
    first = SnapshotStore(tmp_path, max_bytes=size * 3)
    old = [first.save(frame_of(photo), "tabby", n, 1_700_000_000 + n) for n in range(3)]
    (tmp_path / ".snapshot-interrupted.jpg.tmp").write_bytes(b"\xff\xd8 half a jpeg")
    (tmp_path / "notes.txt").write_text("an operator's file: not ours, left alone")
    second = SnapshotStore(tmp_path, max_bytes=size * 3)  # a restart
    new = second.save(frame_of(photo), "tabby", 9, 1_700_000_100)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*old[1:], new, "notes.txt"])


def test_a_jpeg_larger_than_the_quota_is_refused_once_and_never_raises(tmp_path, photo, caplog):
    store = SnapshotStore(tmp_path, max_bytes=1000)
    assert store.save(frame_of(photo), "tabby", 1) is None
    assert store.save(frame_of(photo), "tabby", 2) is None
    assert len(warnings(caplog)) == 1
    assert "larger than snapshots_max_bytes (1000)" in warnings(caplog)[0]
    assert list(tmp_path.iterdir()) == [] and store.failed == 2


def test_a_frame_that_cannot_be_encoded_is_logged_not_raised(tmp_path, caplog) -> None:
    store = SnapshotStore(tmp_path, max_bytes=1 << 20)
    bad = Frame(np.zeros((5, 7), np.float64), "RGB", 3, 0.0, 0.0)
    assert store.save(bad, "tabby", 3) is None
    assert "cannot encode frame 3" in warnings(caplog)[0]


def test_a_full_disk_is_logged_once_then_its_recovery_once(tmpfs: Path, photo, caplog) -> None:
    store = SnapshotStore(tmpfs, max_bytes=64 << 20)  # the disk fills long before the quota
    saved = []
    for number in range(40):
        name = store.save(frame_of(photo, frame_id=number), "tabby", number, 1e9 + number)
        if name is None:
            break
        saved.append(name)
    assert 2 <= len(saved) < 40, "the 192 KiB filesystem never filled"
    for number in range(40, 45):  # more events while the disk is full: no more log lines
        assert store.save(frame_of(photo), "tabby", number) is None
    assert len(warnings(caplog)) == 1
    assert "No space left on device" in warnings(caplog)[0]
    # Nothing torn: only whole snapshots, no temp file, and every kept one decodes.
    assert sorted(p.name for p in tmpfs.iterdir()) == sorted(saved)
    for name in saved:
        assert decode(tmpfs / name).shape == (240, 320, 3)

    remount(tmpfs, "size=4m")  # an operator makes room
    assert store.save(frame_of(photo), "tabby", 50) is not None
    assert infos(caplog) == [f"snapshots: writing under {tmpfs} again"]
    assert len(warnings(caplog)) == 1

    fill(tmpfs / "someone-elses.log")  # another program fills the disk again
    assert store.save(frame_of(photo), "tabby", 51) is None
    assert store.save(frame_of(photo), "tabby", 52) is None
    assert len(warnings(caplog)) == 2  # a new episode is logged again, once


def fill(path: Path) -> None:
    """Write to `path` until the filesystem is full."""
    with path.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(os.urandom(64 * 1024))
                out.flush()
        except OSError:
            pass


def test_a_read_only_directory_is_logged_once_and_recovers(tmpfs: Path, photo, caplog) -> None:
    remount(tmpfs, "ro")
    store = SnapshotStore(tmpfs / "snapshots", max_bytes=1 << 20)
    for number in range(3):
        assert store.save(frame_of(photo), "tabby", number) is None
    assert len(warnings(caplog)) == 1 and "Read-only file system" in warnings(caplog)[0]
    remount(tmpfs, "rw")
    assert store.save(frame_of(photo), "tabby", 4) is not None
    assert len(infos(caplog)) == 1


def test_a_directory_that_cannot_exist_never_raises(tmp_path, photo, caplog) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SnapshotStore(tmp_path / "file" / "snapshots", max_bytes=1 << 20)
    assert store.save(frame_of(photo), "tabby", 1) is None
    assert store.save(frame_of(photo), "tabby", 2) is None
    assert len(warnings(caplog)) == 1 and "Not a directory" in warnings(caplog)[0]


# -- taking a still from a source ------------------------------------------------------------


def test_take_saves_what_the_source_hands_over(tmp_path, photo) -> None:
    store = SnapshotStore(tmp_path, max_bytes=1 << 20)
    name = store.take(lambda: frame_of(photo, "BGR", 5), "tabby", 5)
    assert name is not None and decode(tmp_path / name).shape == (240, 320, 3)


def test_a_source_that_cannot_hand_over_a_still_is_logged_once(tmp_path, photo, caplog) -> None:
    store = SnapshotStore(tmp_path, max_bytes=1 << 20)

    def stalled() -> Frame:
        raise SourceError("picamera2 camera 0: no main-stream still within 2.00 s")

    assert store.take(stalled, "tabby", 1) is None
    assert store.take(stalled, "tabby", 2) is None
    assert len(warnings(caplog)) == 1 and "no main-stream still" in warnings(caplog)[0]
    assert store.take(lambda: frame_of(photo), "tabby", 3) is not None
    assert infos(caplog) == ["snapshots: the source hands over stills again"]


# -- where --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directory", "expected"),
    [
        ("/srv/snaps", "/srv/snaps"),
        ("", "/var/lib/pi-daemon/snapshots"),  # in the state directory (statedir.py)
    ],
)
def test_snapshot_directory(directory, expected) -> None:
    section = SnapshotsSection(enabled=True, directory=directory)
    assert snapshot_directory(section, Path("/var/lib/pi-daemon")) == Path(expected)


def test_from_config() -> None:
    store = SnapshotStore.from_config(
        SnapshotsSection(snapshots_max_bytes=123_456, quality=70), Path("/x")
    )
    assert (store.directory, store.max_bytes, store.quality) == (Path("/x"), 123_456, 70)
