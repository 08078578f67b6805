"""Shared fixtures: real models, real photos, and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_MODELS = REPO / "tests" / "data" / "models"
BUNDLED_MODEL = REPO / "pi_daemon" / "models" / "efficientnet-lite0-int8.tflite"
FLOAT_TWIN = REPO / "deploy" / "models" / "efficientnet-lite0-fp32.tflite"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A few-KB uint8 model with 10 classes (tests/data/models/README.md)."""
    return TEST_MODELS / "tiny_uint8.tflite"


@pytest.fixture(scope="session")
def tiny_labels() -> Path:
    return TEST_MODELS / "tiny_labels.txt"


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos shipped by scikit-image, written as JPEG files."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("coffee", "chelsea", "rocket", "astronaut"):
        image = getattr(data, name)()
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def demo_video(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Path]) -> Path:
    """A real MJPG/AVI video cycling through the photos, 30 frames at 640x480."""
    path = tmp_path_factory.mktemp("video") / "demo.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert writer.isOpened()
    frames = [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in photos.values()]
    for i in range(30):
        writer.write(frames[i % len(frames)])
    writer.release()
    return path


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pi_daemon ARGS` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pi_daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    """The process failed with `code`, one stderr line with every fragment, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("pi-daemon:")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def rgb_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
