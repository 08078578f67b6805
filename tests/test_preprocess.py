import tracemalloc

import cv2
import numpy as np
import pytest

from pi_daemon.frame import Frame, FrameShapeError, check_frame
from pi_daemon.preprocess import (
    Preprocessor,
    _interpolation,
    center_crop_box,
    input_lut,
    letterbox_box,
)


def frame(pixels, fmt="RGB"):
    return Frame(pixels, fmt, 1, 0.0, 0.0)


@pytest.mark.parametrize(
    ("size", "target", "box"),
    [
        ((640, 480), (224, 224), (80, 0, 480, 480)),
        ((480, 640), (224, 224), (0, 80, 480, 480)),
        ((224, 224), (224, 224), (0, 0, 224, 224)),
        ((641, 480), (224, 224), (80, 0, 480, 480)),
        ((1, 1000), (224, 224), (0, 499, 1, 1)),
        ((1000, 1), (224, 224), (499, 0, 1, 1)),
        ((1000, 100), (200, 100), (400, 0, 200, 100)),  # 10:1 into 2:1: crop the width
        ((100, 1000), (100, 200), (0, 400, 100, 200)),  # 1:10 into 1:2: crop the height
    ],
)
def test_center_crop_box(size, target, box):
    assert center_crop_box(*size, *target) == box


@pytest.mark.parametrize(
    ("size", "target", "box"),
    [
        ((640, 480), (224, 224), (0, 28, 224, 168)),
        ((480, 640), (224, 224), (28, 0, 168, 224)),
        ((100, 100), (224, 224), (0, 0, 224, 224)),
        ((1, 1000), (224, 224), (111, 0, 1, 224)),  # never narrower than one pixel
        ((1000, 1), (224, 224), (0, 111, 224, 1)),
    ],
)
def test_letterbox_box(size, target, box):
    assert letterbox_box(*size, *target) == box


def test_center_crop_keeps_the_middle():
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, 100:200] = (255, 0, 0)  # the centred square is pure red
    out = np.empty((32, 32, 3), np.uint8)
    Preprocessor(32, 32, "center")(frame(pixels), out)
    assert (out == (255, 0, 0)).all()


def test_letterbox_adds_bars_and_stretch_fills():
    pixels = np.full((100, 200, 3), 200, np.uint8)
    out = np.empty((32, 32, 3), np.uint8)
    Preprocessor(32, 32, "letterbox")(frame(pixels), out)
    assert (out[:8] == 0).all() and (out[-8:] == 0).all() and (out[10:22] == 200).all()
    Preprocessor(32, 32, "stretch")(frame(pixels), out)
    assert (out == 200).all()


def test_bgr_is_converted_to_rgb():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 0] = 255  # blue in BGR
    out = np.empty((16, 16, 3), np.uint8)
    Preprocessor(16, 16)(frame(pixels, "BGR"), out)
    assert (out[..., 2] == 255).all() and (out[..., 0] == 0).all()


def test_yuv420_is_converted_at_small_size():
    rgb = np.zeros((224, 224, 3), np.uint8)
    rgb[:, :112] = (250, 30, 30)
    rgb[:, 112:] = (30, 30, 250)
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    out = np.empty((224, 224, 3), np.uint8)
    Preprocessor(224, 224)(frame(yuv, "YUV420"), out)
    assert np.abs(out.astype(int) - rgb).mean() < 6


def test_writes_into_the_given_buffer_without_reallocating():
    out = np.empty((224, 224, 3), np.uint8)
    address = out.__array_interface__["data"][0]
    pre = Preprocessor(224, 224)
    for size in ((480, 640), (1080, 1920), (224, 224)):
        pre(frame(np.full((*size, 3), 7, np.uint8), "BGR"), out)
        assert out.__array_interface__["data"][0] == address
        assert (out == 7).all()


@pytest.mark.parametrize(
    ("pixels", "fmt", "message"),
    [
        (np.zeros((10, 10), np.uint8), "RGB", "expected HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "BGR", "expected HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "RGB", "dtype float32"),
        (np.zeros((10, 10, 3), np.uint8), "YUV420", "not planar YUV420"),
        (np.zeros((10, 10), np.uint8), "YUV420", "not planar YUV420"),
        (np.zeros((0, 10), np.uint8), "YUV420", "not planar YUV420"),  # no rows
        (np.zeros((6, 1), np.uint8), "YUV420", "not planar YUV420"),  # one column
        (np.zeros((0, 5, 3), np.uint8), "RGB", "expected HxWx3"),
        (np.zeros((5, 0, 3), np.uint8), "BGR", "expected HxWx3"),
    ],
)
def test_bad_frames_are_rejected(pixels, fmt, message):
    with pytest.raises(FrameShapeError, match=message):
        check_frame(frame(pixels, fmt))


@pytest.mark.parametrize(
    ("pixels", "fmt"),
    [
        (np.zeros((3, 2), np.uint8), "YUV420"),  # the smallest planar I420: 2x2
        (np.zeros((6, 4), np.uint8), "YUV420"),
        (np.zeros((12, 8), np.uint8), "YUV420"),
        (np.zeros((1, 1, 3), np.uint8), "RGB"),
    ],
)
def test_smallest_valid_frames_are_accepted(pixels, fmt):
    check_frame(frame(pixels, fmt))


@pytest.mark.parametrize(
    ("src", "dst", "filter_"),
    [
        ((640, 480), (224, 224), cv2.INTER_AREA),  # shrinking: area averaging
        ((224, 224), (224, 224), cv2.INTER_AREA),
        ((100, 100), (224, 224), cv2.INTER_LINEAR),  # enlarging: bilinear
        ((300, 100), (224, 224), cv2.INTER_LINEAR),  # enlarging in one direction is enlarging
        ((100, 300), (224, 224), cv2.INTER_LINEAR),
        ((225, 224), (224, 224), cv2.INTER_AREA),
    ],
)
def test_resize_filter_choice(src, dst, filter_):
    assert _interpolation(*src, *dst) == filter_


@pytest.mark.parametrize(
    ("shape", "size", "crop"),
    [
        ((48, 64), (16, 16), "stretch"),  # shrink
        ((8, 6), (32, 32), "stretch"),  # enlarge
        ((100, 200), (32, 31), "letterbox"),  # shrink, odd height: bars of 7 and 8 rows
        ((10, 20), (64, 63), "letterbox"),  # enlarge
    ],
)
def test_resizes_are_exactly_opencvs_with_the_chosen_filter(shape, size, crop):
    """Pixel for pixel what cv2.resize gives with the filter _interpolation picks."""
    pixels = np.random.default_rng(5).integers(0, 256, (*shape, 3), dtype=np.uint8)
    width, height = size
    out = np.empty((height, width, 3), np.uint8)
    Preprocessor(width, height, crop)(frame(pixels), out)
    if crop == "stretch":
        expected = cv2.resize(pixels, size, interpolation=_interpolation(*shape[::-1], *size))
    else:
        x, y, nw, nh = letterbox_box(shape[1], shape[0], width, height)
        expected = np.zeros_like(out)
        expected[y : y + nh, x : x + nw] = cv2.resize(
            pixels, (nw, nh), interpolation=_interpolation(shape[1], shape[0], nw, nh)
        )
    np.testing.assert_array_equal(out, expected)


def test_yuv_frames_of_changing_size_are_each_converted_right():
    pre = Preprocessor(16, 16, "stretch")
    out = np.empty((16, 16, 3), np.uint8)
    for h, w, value in ((32, 32, (200, 40, 40)), (48, 64, (40, 200, 40)), (32, 32, (40, 40, 200))):
        rgb = np.full((h, w, 3), value, np.uint8)
        pre(frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), "YUV420"), out)
        assert np.abs(out.astype(int) - value).max() <= 3, (h, w, out[0, 0])


@pytest.mark.parametrize(("crop", "fmt"), [("letterbox", "RGB"), ("center", "BGR")])
def test_steady_state_allocates_no_picture_buffers(crop, fmt):
    """Scratch buffers are made for the first frame of a size and reused after that."""
    pre = Preprocessor(224, 224, crop)
    out = np.empty((224, 224, 3), np.uint8)
    pixels = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    yuv = cv2.cvtColor(pixels, cv2.COLOR_RGB2YUV_I420)
    for _ in range(2):  # warm up: every scratch buffer exists now
        pre(frame(pixels, fmt), out)
        pre(frame(yuv, "YUV420"), out)
    tracemalloc.start()
    try:
        for _ in range(5):
            pre(frame(pixels, fmt), out)
            pre(frame(yuv, "YUV420"), out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024, peak  # one 224x168 letterbox picture would be 110 KB


@pytest.mark.parametrize(
    ("scale", "real_range"), [(1.0, (0, 255)), (1 / 255, (0, 1)), (2.0, (0, 510))]
)
def test_input_lut_is_identity_when_quantization_undoes_the_range(scale, real_range):
    assert input_lut(np.dtype(np.uint8), scale, 0, real_range) is None


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point", "real_range", "expect"),
    [
        (np.int8, 1.0, -128, (0, 255), {0: -128, 255: 127, 128: 0, 1: -127}),
        (np.uint8, 1 / 255, 0, (0, 2), {0: 0, 255: 255, 51: 102, 1: 2}),
        (np.int8, 2 / 255, 0, (-1, 1), {0: -128, 255: 127}),  # p - 127.5: halves, even
        (np.uint8, 0.5, 10, (0, 255), {0: 10, 1: 12, 122: 254, 123: 255, 255: 255}),  # clips
        (np.uint8, 1.0, -10, (0, 255), {0: 0, 9: 0, 10: 0, 11: 1, 255: 245}),  # clips at 0
        (np.int8, 4.0, 0, (-255, 255), {0: -64, 255: 64, 127: -0.0, 64: -32}),
        (np.float32, 0.0, 0, (0, 255), {0: 0.0, 1: 1.0, 128: 128.0, 255: 255.0}),
        (np.float32, 0.0, 0, (-1, 1), {0: -1.0, 255: 1.0, 51: -0.6, 204: 0.6}),
    ],
)
def test_input_lut_uses_the_model_quantization(dtype, scale, zero_point, real_range, expect):
    lut = input_lut(np.dtype(dtype), scale, zero_point, real_range)
    assert lut is not None and lut.dtype == np.dtype(dtype) and lut.shape == (256,)
    for pixel, value in expect.items():
        assert lut[pixel] == pytest.approx(value, abs=1e-6), (pixel, lut[pixel], value)


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point", "real_range"),
    [
        (np.float32, 0.0, 0, (-1.0, 1.0)),
        (np.float32, 0.0, 0, (0.0, 1.0)),
        (np.int8, 1.0, -128, (0.0, 255.0)),
        (np.int8, 1 / 100, 3, (-1.0, 1.0)),  # scale finer than a pixel step, zero point off 0
        (np.uint8, 1 / 255, 0, (0.0, 2.0)),
    ],
)
def test_input_lut_is_the_affine_map_for_every_pixel(dtype, scale, zero_point, real_range):
    """The whole table, not a few entries: pixel p maps to low + p * (high - low) / 255,
    then (for integers) to round(real / scale) + zero_point, clipped to the dtype."""
    lut = input_lut(np.dtype(dtype), scale, zero_point, real_range)
    assert lut is not None
    low, high = real_range
    real = low + np.arange(256) * (high - low) / 255
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(lut, real, rtol=0, atol=1e-6)
    else:
        info = np.iinfo(dtype)
        expected = np.clip(np.round(real / scale) + zero_point, info.min, info.max)
        np.testing.assert_array_equal(lut.astype(np.int64), expected.astype(np.int64))
    assert np.all(np.diff(lut.astype(np.float64)) >= 0)  # monotonic: brighter never maps lower
    assert lut[0] != lut[255]


def test_input_lut_rejects_a_non_positive_scale():
    for scale in (0.0, -1.0):
        with pytest.raises(ValueError, match="non-positive scale"):
            input_lut(np.dtype(np.int8), scale, 0)


@pytest.mark.parametrize("crop", ["center", "letterbox", "stretch"])
@pytest.mark.parametrize("size", [(600, 400), (451, 300), (400, 640), (224, 224), (100, 80)])
def test_prescaled_stills_need_no_resize_and_match_a_per_frame_resize(crop, size):
    width, height = size
    rng = np.random.default_rng(width)
    # A smooth real-looking picture: box filters of different libraries agree on it.
    small = rng.integers(0, 256, (height // 20 + 2, width // 20 + 2, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    pre = Preprocessor(224, 224, crop)
    scaled = pre.prescale(rgb)
    sw, sh = scaled.shape[1], scaled.shape[0]
    if crop == "center":
        assert min(sw - 224, sh - 224) == 0 or (sw, sh) == (width, height)
    elif crop == "letterbox":
        assert max(sw, sh) == 224 or (sw, sh) == (width, height)
    else:
        assert (sw, sh) == (224, 224) or (sw, sh) == (width, height)
    direct, prescaled = np.empty((224, 224, 3), np.uint8), np.empty((224, 224, 3), np.uint8)
    pre(frame(rgb), direct)
    pre(frame(scaled), prescaled)
    # The same picture whichever way it was scaled (Pillow's box vs OpenCV's area filter).
    assert np.abs(direct.astype(int) - prescaled).mean() < 2.0


def test_still_images_never_import_opencv(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from pi_daemon.frame import Frame\n"
        "from pi_daemon.preprocess import Preprocessor\n"
        "pre = Preprocessor(224, 224, 'center')\n"
        "rgb = pre.prescale(np.zeros((480, 640, 3), np.uint8))\n"
        "out = np.empty((224, 224, 3), np.uint8)\n"
        "pre(Frame(rgb, 'RGB', 1, 0.0, 0.0), out)\n"
        "assert 'cv2' not in sys.modules, 'cv2 was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
