import cv2
import numpy as np
import pytest

from pi_daemon.preprocess import (
    Frame,
    FrameShapeError,
    Preprocessor,
    center_crop_box,
    check_frame,
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
    ],
)
def test_bad_frames_are_rejected(pixels, fmt, message):
    with pytest.raises(FrameShapeError, match=message):
        check_frame(frame(pixels, fmt))


@pytest.mark.parametrize(
    ("scale", "real_range"), [(1.0, (0, 255)), (1 / 255, (0, 1)), (2.0, (0, 510))]
)
def test_input_lut_is_identity_when_quantization_undoes_the_range(scale, real_range):
    assert input_lut(np.dtype(np.uint8), scale, 0, real_range) is None


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point", "real_range", "expect"),
    [
        (np.int8, 1.0, -128, (0, 255), {0: -128, 255: 127, 128: 0}),
        (np.uint8, 1 / 255, 0, (0, 2), {0: 0, 255: 255, 51: 102}),
        (np.int8, 2 / 255, 0, (-1, 1), {0: -128, 255: 127}),
        (np.float32, 0.0, 0, (0, 255), {0: 0.0, 255: 255.0}),
        (np.float32, 0.0, 0, (-1, 1), {0: -1.0, 255: 1.0}),
    ],
)
def test_input_lut_uses_the_model_quantization(dtype, scale, zero_point, real_range, expect):
    lut = input_lut(np.dtype(dtype), scale, zero_point, real_range)
    assert lut is not None and lut.dtype == np.dtype(dtype)
    for pixel, value in expect.items():
        assert lut[pixel] == pytest.approx(value, abs=1)
