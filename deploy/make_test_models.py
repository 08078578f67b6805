#!/usr/bin/env python3
"""Build the tiny TFLite models the test-suite uses (tests/data/models/), a few KB each.

    python deploy/make_test_models.py [--out-dir tests/data/models]

Needs the same TensorFlow venv as deploy/build_model.py (deploy/requirements.txt); CI only reads
the committed outputs. Every model is Rescaling(1/255) -> 3x3 conv (8 filters, stride 2, valid,
ReLU) -> global average pool -> dense over NUM_CLASSES -> optional softmax, converted from a
SavedModel like the real model. The weights are fixed, not trained, so tests can predict answers:

* conv filters 0..C-1 average input channel c (C = 3 for RGB, 1 for grey); the other filters and
  the rest of the dense layer have small seeded random weights;
* class_0, class_1 and class_2 score 8*mean(own channel) - 4*mean(each other channel), so a solid
  red image is class_0, solid green class_1 and solid blue class_2, each with softmax above 0.9.

Quantized models are calibrated on seeded random images plus solid colours, black and white, so
their uint8/int8 input covers 0..255 (uint8: scale 1, zero point 0; int8: scale 1, zero point
-128). Same TensorFlow version, same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from build_model import convert, export_saved_model, make_interpreter

SEED = 1234
NUM_CLASSES = 10
SIZE = 32
FILTERS = 8
COLOUR_LOGIT = 8.0  # a class's weight on its own channel mean (others get -COLOUR_LOGIT / 2)
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "models"
LABELS_FILE = "tiny_labels.txt"


@dataclass(frozen=True)
class TinySpec:
    name: str
    io_dtype: str  # "uint8", "int8" or "float32"
    softmax: bool
    channels: int = 3
    nchw: bool = False

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        if self.nchw:
            return (1, self.channels, SIZE, SIZE)
        return (1, SIZE, SIZE, self.channels)


SPECS = (
    TinySpec("tiny_uint8", "uint8", softmax=True),
    TinySpec("tiny_int8", "int8", softmax=False),
    TinySpec("tiny_float32", "float32", softmax=True),
    TinySpec("tiny_float32_logits", "float32", softmax=False),
    # Both below are valid uint8 softmax models whose only fault is the input layout.
    TinySpec("tiny_nchw", "uint8", softmax=True, nchw=True),
    TinySpec("tiny_gray", "uint8", softmax=True, channels=1),
)


def tiny_weights(channels: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Conv and dense weights: channel-mean detectors plus small seeded noise."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0.0, 0.1, (3, 3, channels, FILTERS)).astype(np.float32)
    conv_bias = np.zeros(FILTERS, np.float32)
    kernel[:, :, :, :channels] = 0.0
    for c in range(channels):
        kernel[:, :, c, c] = 1.0 / 9.0
    dense = rng.normal(0.0, 0.3, (FILTERS, NUM_CLASSES)).astype(np.float32)
    dense[:channels, :] = 0.0
    if channels == 3:
        for c in range(channels):
            dense[:channels, c] = -COLOUR_LOGIT / 2
            dense[c, c] = COLOUR_LOGIT
    else:
        dense[0, 0] = COLOUR_LOGIT
    dense_bias = np.zeros(NUM_CLASSES, np.float32)
    return [kernel, conv_bias], [dense, dense_bias]


def build_tiny(spec: TinySpec, seed: int) -> Any:
    import keras
    from keras import layers

    image = keras.Input(spec.input_shape[1:], batch_size=1, name="image")
    x = layers.Permute((2, 3, 1), name="nchw_to_nhwc")(image) if spec.nchw else image
    x = layers.Rescaling(1.0 / 255.0, name="to_unit")(x)
    conv = layers.Conv2D(FILTERS, 3, strides=2, padding="valid", activation="relu", name="conv")
    x = conv(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    dense = layers.Dense(NUM_CLASSES, name="logits")
    x = dense(x)
    conv_weights, dense_weights = tiny_weights(spec.channels, seed)
    conv.set_weights(conv_weights)
    dense.set_weights(dense_weights)
    if spec.softmax:
        x = layers.Softmax(name="softmax")(x)
    return keras.Model(image, x, name=spec.name)


def calibration_images(channels: int, seed: int) -> np.ndarray:
    """Solid colours, black and white, then seeded uniform noise: NHWC float32 0..255."""
    rng = np.random.default_rng(seed)
    solids = [np.eye(3)[c] * 255.0 for c in range(3)] + [np.zeros(3), np.full(3, 255.0)]
    images = [np.broadcast_to(colour, (SIZE, SIZE, 3)) for colour in solids]
    images += list(rng.integers(0, 256, (59, SIZE, SIZE, 3)).astype(np.float64))
    stacked = np.stack(images).astype(np.float32)
    return stacked[..., :channels]


def build_one(spec: TinySpec, index: int, out_dir: Path, work_dir: Path) -> Path:
    import tensorflow as tf

    seed = SEED + index
    model = build_tiny(spec, seed)
    saved_model = work_dir / spec.name
    export_saved_model(model, saved_model, spec.input_shape)
    images = calibration_images(spec.channels, seed)
    if spec.nchw:
        images = images.transpose(0, 3, 1, 2)

    def representative() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None]]

    if spec.io_dtype == "float32":
        data = convert(saved_model)
    else:
        data = convert(saved_model, representative, tf.as_dtype(spec.io_dtype))
    path = out_dir / f"{spec.name}.tflite"
    path.write_bytes(data)
    return path


def describe(path: Path) -> str:
    interpreter = make_interpreter(path, num_threads=1)
    parts = []
    for role, detail in (
        ("in", interpreter.get_input_details()[0]),
        ("out", interpreter.get_output_details()[0]),
    ):
        scale, zero_point = detail["quantization"]
        quant = f" q=({scale:.6g}, {zero_point})" if scale else ""
        shape = [int(d) for d in detail["shape"]]
        parts.append(f"{role} {np.dtype(detail['dtype']).name}{shape}{quant}")
    return f"{path.name}: {path.stat().st_size} bytes, " + ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build pi-daemon's tiny test TFLite models.")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    # Determinism and quiet logs; must be set before TensorFlow is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    import keras

    keras.utils.set_random_seed(SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for index, spec in enumerate(SPECS):
            path = build_one(spec, index, args.out_dir, Path(tmp))
            print(describe(path))
    labels = "".join(f"class_{i}\n" for i in range(NUM_CLASSES))
    (args.out_dir / LABELS_FILE).write_text(labels, encoding="utf-8")
    print(f"{LABELS_FILE}: {NUM_CLASSES} labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
