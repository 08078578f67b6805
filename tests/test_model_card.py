"""The model card's example table is what `pi-daemon classify` prints (issue 11): each row
is run through the real command, on scikit-image's photos, and compared word for word."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "pi_daemon" / "models" / "MODEL_CARD.md"
FLOAT_MODEL = REPO / "deploy" / "models" / "efficientnet-lite0-fp32.tflite"
ROW = re.compile(r"^\| (\w+) \| ([^|]+) \| ([^|]+) \|$", re.M)


def card_rows() -> dict[str, tuple[str, str]]:
    text = CARD.read_text(encoding="utf-8")
    table = text[text.index("| photo | int8 top-3 | float32 top-1 |") :]
    rows = {m.group(1): (m.group(2).strip(), m.group(3).strip()) for m in ROW.finditer(table)}
    rows.pop("photo", None)
    return rows


def classify(paths: list[Path], *args: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "pi_daemon", "classify", *args, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    return {Path(path).stem: labels for path, labels in lines.items()}


def test_model_card_examples_are_what_classify_prints(tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
    from PIL import Image

    rows = card_rows()
    assert set(rows) == {"coffee", "chelsea", "rocket", "astronaut"}, rows
    paths = []
    for name in rows:
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(path)
    int8 = classify(paths, "--top", "3")
    float32 = classify(paths, "--top", "1", "--model", str(FLOAT_MODEL))
    for name, (top3, top1) in rows.items():
        assert int8[name] == top3, (name, int8[name])
        assert float32[name] == top1, (name, float32[name])
