"""The hot path allocates nothing that stays: steady-state memory is flat per frame.

tracemalloc sees every Python and numpy allocation. A leak of even a few bytes per frame
(a list that remembers results, a cache keyed by frame, a buffer per frame kept alive)
shows up over 2000 frames; transient per-frame objects (a Result, a Frame) do not.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from pi_daemon.capture import FramePreparer
from pi_daemon.classifier import Classifier
from pi_daemon.daemon import Daemon, LoopSettings
from pi_daemon.frame import Frame
from pi_daemon.model import load_model
from pi_daemon.results import Result, StageTimes
from pi_daemon.sinks.base import SinkDispatcher
from pi_daemon.sinks.jsonl import JsonlSink
from pi_daemon.sinks.log import LogSink
from pi_daemon.sources.files import FilesSource
from tests.conftest import TEST_MODELS
from tests.test_sinks import IDENTITY

FRAMES = 2000
WARMUP = 300
# Allowed growth over FRAMES steady-state frames: under 8 bytes per frame on average,
# far below one leaked Result (~1 KB) or one frame-sized buffer per frame.
MAX_GROWTH_BYTES = 16 * 1024


@pytest.fixture
def camera_frames(photos: dict[str, Path]) -> list[np.ndarray]:
    """Real photos at a camera's 640x480, so a per-frame copy would be ~900 KB."""
    return [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in photos.values()]


def _traced_after_gc() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_hot_path_does_not_grow_or_allocate_frames(
    tiny_model: Path, tiny_labels: Path, camera_frames: list[np.ndarray]
) -> None:
    """Preparation, preprocessing, invoke and top-k, as the loop runs them, frame by frame."""
    model = load_model(tiny_model, labels=str(tiny_labels), num_threads=1)
    classifier = Classifier(model, top_k=3)
    width, height = model.input_size
    preparer = FramePreparer(width, height, "center")

    def one_frame(number: int) -> None:
        raw = Frame(camera_frames[number % 3], "BGR", number, time.time(), time.monotonic())
        out = classifier.classify(preparer(raw))
        Result(number, raw.wall_time, time.monotonic(), out.top, StageTimes(0, 0, 0, 0))

    tracemalloc.start()
    try:
        for number in range(WARMUP):
            one_frame(number)
        before = _traced_after_gc()
        tracemalloc.reset_peak()
        for number in range(WARMUP, WARMUP + FRAMES):
            one_frame(number)
        _, peak = tracemalloc.get_traced_memory()
        after = _traced_after_gc()
    finally:
        tracemalloc.stop()
    assert after - before < MAX_GROWTH_BYTES, f"grew {after - before} B over {FRAMES} frames"
    # No frame-sized (921,600 B) or even input-sized temporary was allocated per frame.
    assert peak - before < 64 * 1024, f"a frame allocated {peak - before} B at peak"


def _run_daemon(
    classifier: Classifier, paths: list[Path], events: Path, frames: int, extra_sinks: list
) -> Daemon:
    source = FilesSource(paths, loop=True, fps=0.0)
    sinks = [LogSink(0.5, IDENTITY), JsonlSink(events, 1 << 20, 1, IDENTITY), *extra_sinks]
    dispatcher = SinkDispatcher(sinks)
    # As app.py does: the caller owns the source and the dispatcher and closes both.
    source.open()
    try:
        daemon = Daemon(classifier, source, dispatcher, LoopSettings())
        daemon.run(max_frames=frames)
        assert daemon.capture_stopped  # the capture thread has let go of the source
    finally:
        dispatcher.close()
        source.close()
    return daemon


def test_daemon_memory_is_flat_across_runs_of_different_length(
    tiny_model: Path, tiny_labels: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    """The whole loop (capture thread, slot, sinks, rotation, metrics) holds no per-frame state.

    Two complete runs of the real Daemon, 500 and 2500 frames, each kept alive afterwards:
    anything remembered per frame would make the longer run hold ~2000 x more.
    """
    model = load_model(tiny_model, labels=str(tiny_labels), num_threads=1)
    classifier = Classifier(model, top_k=3)
    paths = list(photos.values())
    from pi_daemon.metrics import Metrics  # the metrics extra is part of the test install

    metrics = Metrics()  # serving is the endpoint's (pi_daemon/endpoint.py), not needed here
    extra: list = [metrics.sink]
    tracemalloc.start()
    try:
        # Warm every code path (imports, caches, rotation) before measuring.
        _run_daemon(classifier, paths, tmp_path / "warm.jsonl", WARMUP, extra)
        baseline = _traced_after_gc()
        short = _run_daemon(classifier, paths, tmp_path / "short.jsonl", 500, extra)
        after_short = _traced_after_gc()
        long = _run_daemon(classifier, paths, tmp_path / "long.jsonl", 500 + FRAMES, extra)
        after_long = _traced_after_gc()
    finally:
        tracemalloc.stop()
    assert short.counters.frames == 500 and long.counters.frames == 500 + FRAMES
    held_short = after_short - baseline
    held_long = after_long - after_short
    assert held_long - held_short < MAX_GROWTH_BYTES, (held_short, held_long)
    # The per-label counters were really updated, once per frame of the three runs.
    counted = sum(s.value for s in metrics.labels.collect()[0].samples if s.name.endswith("_total"))
    assert counted == WARMUP + 500 + 500 + FRAMES


@pytest.mark.parametrize("crop", ["center", "letterbox", "stretch"])
@pytest.mark.parametrize("model_name", ["tiny_uint8", "tiny_int8", "tiny_float32"])
def test_frames_prepared_on_the_capture_thread_give_the_same_input(
    tiny_labels: Path, camera_frames: list[np.ndarray], crop: str, model_name: str
) -> None:
    """Moving crop/resize to the capture thread changes where the work runs, not the input.

    tiny_uint8 takes pixels as they are (no table); tiny_int8 (zero point -128) and
    tiny_float32 map every pixel through the input table, on the prepared path too.
    """
    model = load_model(TEST_MODELS / f"{model_name}.tflite", labels=str(tiny_labels))
    classifier = Classifier(model, top_k=3, crop=crop)  # type: ignore[arg-type]
    width, height = model.input_size
    preparer = FramePreparer(width, height, crop)  # type: ignore[arg-type]
    for number, pixels in enumerate(camera_frames):
        raw = Frame(pixels, "BGR", number, time.time(), time.monotonic())
        classifier.write_input(raw)
        direct = np.array(classifier._input_tensor(), copy=True)
        prepared = preparer(raw)
        assert prepared.fmt == "RGB" and prepared.size == (width, height)
        classifier._input_tensor().fill(0)
        classifier.write_input(prepared)
        assert np.array_equal(classifier._input_tensor(), direct)
        # And it is the model's own mapping of the prepared RGB picture, value by value.
        inp = model.input
        if inp.dtype == np.int8:
            expected = (prepared.pixels.astype(np.int16) + inp.zero_point).astype(np.int8)
        elif inp.dtype == np.float32:
            expected = prepared.pixels.astype(np.float32)  # range 0..255: real pixel values
        else:
            expected = prepared.pixels
        assert direct.dtype == inp.dtype
        assert np.array_equal(direct[0], expected), model_name


def test_preparer_never_reuses_a_buffer_a_frame_still_holds(
    camera_frames: list[np.ndarray],
) -> None:
    preparer = FramePreparer(32, 32, "center")

    def prepare(number: int) -> Frame:
        raw = Frame(camera_frames[number % 3], "BGR", number, 0.0, 0.0)
        return preparer(raw)

    held = prepare(0)  # the loop holds this one
    in_slot = prepare(1)  # this one waits in the slot
    writing = prepare(2)
    buffers = {id(held.pixels), id(in_slot.pixels), id(writing.pixels)}
    assert len(buffers) == 3
    expected = np.array(held.pixels, copy=True)
    del writing  # taken and finished with: its buffer is free again
    again = prepare(3)
    assert id(again.pixels) in buffers and again.pixels is not held.pixels
    assert again.pixels is not in_slot.pixels
    assert np.array_equal(held.pixels, expected)  # never written while held
    # More frames held than the pool has: fresh buffers, still never a shared one.
    extra = [prepare(n) for n in range(4, 10)]
    ids = [id(f.pixels) for f in [held, in_slot, again, *extra]]
    assert len(set(ids)) == len(ids)
