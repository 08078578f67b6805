"""Releasing the model file's pages: RSS falls, and the model still gives the same answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import BUNDLED_MODEL

# Runs in a fresh process so that nothing else in the test session maps the model.
PROBE = """
import json, sys, time
from pathlib import Path
import numpy as np
from pi_daemon.classifier import Classifier
from pi_daemon.memory import file_mappings, release_mapped_file, resident_bytes
from pi_daemon.model import load_model
from pi_daemon.frame import Frame
from pi_daemon.sources.files import bundled_demo_paths
from PIL import Image

model = load_model(sys.argv[1], num_threads=1)
classifier = Classifier(model, top_k=3)
frames = [
    Frame(np.asarray(Image.open(p).convert("RGB")), "RGB", i, 0.0, 0.0)
    for i, p in enumerate(bundled_demo_paths())
]
before = [classifier.classify(f).top for f in frames]
mapped = sum(m.end - m.start for m in file_mappings(Path(sys.argv[1])))
rss_before = resident_bytes()
released = release_mapped_file(Path(sys.argv[1]))
rss_after = resident_bytes()
after = [classifier.classify(f).top for f in frames for _ in range(20)][::20]
rss_later = resident_bytes()
print(json.dumps({
    "mapped": mapped, "released": released, "rss_before": rss_before,
    "rss_after": rss_after, "rss_later": rss_later,
    "same": [[p.index for p in a] for a in before] == [[p.index for p in a] for a in after],
    "scores": [[round(p.score, 6) for p in a] for a in before]
    == [[round(p.score, 6) for p in a] for a in after],
}))
"""


def test_releasing_the_model_pages_lowers_rss_and_keeps_results():
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(BUNDLED_MODEL)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    import json

    figures = json.loads(result.stdout.strip().splitlines()[-1])
    size = BUNDLED_MODEL.stat().st_size
    assert figures["mapped"] >= size  # the interpreter maps the whole file
    assert figures["released"] == figures["mapped"]
    # At least 3/4 of the file's pages leave the resident set, and 40 more frames of
    # inference do not bring them back (the delegate reads only its packed copy).
    assert figures["rss_before"] - figures["rss_after"] >= 0.75 * size, figures
    assert figures["rss_later"] - figures["rss_after"] < 0.25 * size, figures
    assert figures["same"] and figures["scores"]


def test_nothing_to_release_is_not_an_error(tmp_path):
    from pi_daemon.memory import release_mapped_file

    path = tmp_path / "not-mapped.bin"
    path.write_bytes(b"x" * 4096)
    assert release_mapped_file(path) == 0


@pytest.mark.parametrize("perms", ["rw-p", "rw-s"])
def test_writable_mappings_are_never_released(tmp_path, perms):
    from pi_daemon.memory import file_mappings

    target = tmp_path / "model.tflite"
    target.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000001000 {perms} 00000000 00:00 0 {target.resolve()}\n"
        f"7f0000001000-7f0000002000 r--s 00000000 00:00 0 {target.resolve()}\n"
    )
    found = file_mappings(target, str(maps))
    assert [m.perms for m in found] == ["r--s"]
