"""One model, one input buffer: frame in, top-k labels out, with stage timings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pi_daemon.errors import ModelError
from pi_daemon.frame import Frame
from pi_daemon.model import Model
from pi_daemon.postprocess import OutputKind, OutputSpec, TopK, looks_like_probabilities
from pi_daemon.prediction import Classification, Prediction
from pi_daemon.preprocess import CropMode, Preprocessor, input_lut
from pi_daemon.roi import FULL_FRAME, Roi

log = logging.getLogger(__name__)


# Ops that pass values through unchanged in order: look behind them for the producer.
_PASS_THROUGH_OPS = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "IDENTITY"}


def _softmax_op_feeds_output(interpreter: Any, output_index: int) -> bool | None:
    """Ask the graph whether the output tensor comes from SOFTMAX (None: unknown).

    A uint8 model typically ends SOFTMAX → QUANTIZE (int8 → uint8), so requantize
    and reshape ops are looked through. Delegate nodes are ignored: they hide the
    real ops but the interpreter still lists the originals.
    """
    try:
        ops = interpreter._get_ops_details()  # no public way to walk the graph
    except Exception:
        return None
    producers = {
        int(tensor): op
        for op in ops
        if op.get("op_name") != "DELEGATE"
        for tensor in op.get("outputs", [])
    }
    tensor = output_index
    for _ in range(len(producers) + 1):
        op = producers.get(tensor)
        if op is None:
            return None
        if op.get("op_name") not in _PASS_THROUGH_OPS:
            return op.get("op_name") == "SOFTMAX"
        tensor = int(op["inputs"][0])
    return None


class Classifier:
    """Runs a loaded model on frames.

    Preprocessing writes into the interpreter's own input tensor (through a
    scratch buffer only when the input needs a value mapping), and postprocessing
    reads only what top-k needs.
    """

    def __init__(
        self, model: Model, top_k: int = 3, crop: CropMode = "center", roi: Roi = FULL_FRAME
    ) -> None:
        self.model = model
        self.interpreter = model.interpreter
        width, height = model.input_size
        self.preprocess = Preprocessor(width, height, crop, roi)
        inp, out = model.input, model.output
        self._lut = input_lut(inp.dtype, inp.scale, inp.zero_point, model.input_range)
        self._rgb = np.empty((height, width, 3), np.uint8) if self._lut is not None else None
        self._input_tensor = self.interpreter.tensor(inp.index)
        self._output_tensor = self.interpreter.tensor(out.index)
        self.output_kind = self._detect_output_kind()
        spec = OutputSpec(out.dtype, out.scale, out.zero_point, len(model.labels))
        self.top_k = TopK(spec, self.output_kind, top_k)
        log.debug("output of %s is %s", model.name, self.output_kind)

    def _detect_output_kind(self) -> OutputKind:
        declared = self.model.declared_activation
        if declared in ("softmax", "probabilities"):
            return "probabilities"
        if declared in ("none", "logits", "linear"):
            return "logits"
        from_graph = _softmax_op_feeds_output(self.interpreter, self.model.output.index)
        if from_graph is not None:
            return "probabilities" if from_graph else "logits"
        # Last resort: run a mid-grey frame and look at the numbers.
        self._input_tensor()[...] = 0 if self._lut is None else self._lut[128]
        self._invoke()
        out = self.model.output
        values = self._output_tensor().astype(np.float64).reshape(-1)
        if out.dtype.kind in "iu":
            values = (values - out.zero_point) * out.scale
        return "probabilities" if looks_like_probabilities(values) else "logits"

    def _invoke(self) -> None:
        """invoke(); a runtime error is the model's fault: a one-line ModelError (exit 78)."""
        try:
            self.interpreter.invoke()
        except Exception as error:
            message = " ".join(str(error).split()) or type(error).__name__
            raise ModelError(f"{self.model.path}: invoke failed: {message}") from None

    def write_input(self, frame: Frame) -> None:
        """Preprocess `frame` straight into the interpreter's input tensor."""
        tensor = self._input_tensor()[0]
        if frame.prepared and frame.pixels.shape == tensor.shape:
            # The capture thread fitted it to this model: a single copy or LUT pass
            # straight into the tensor, without the crop/resize bookkeeping.
            if self._lut is None:
                np.copyto(tensor, frame.pixels)
            else:
                np.take(self._lut, frame.pixels, out=tensor)
            return
        if self._lut is None:
            self.preprocess(frame, tensor)
        else:
            assert self._rgb is not None
            self.preprocess(frame, self._rgb)
            np.take(self._lut, self._rgb, out=tensor)

    def input_copy(self) -> np.ndarray:
        """A copy of the input tensor as it is now, e.g. after `write_input()`."""
        return np.array(self._input_tensor(), copy=True)

    def read_output(self) -> list[Prediction]:
        labels = self.model.labels
        return [Prediction(i, labels[i], s) for i, s in self.top_k(self._output_tensor())]

    def classify(
        self, frame: Frame, before_invoke: Callable[[], None] | None = None
    ) -> Classification:
        """Classify one frame; `before_invoke` runs once the input tensor is written."""
        t0 = time.perf_counter()
        self.write_input(frame)
        if before_invoke is not None:
            before_invoke()
        t1 = time.perf_counter()
        self._invoke()
        t2 = time.perf_counter()
        top = self.read_output()
        t3 = time.perf_counter()
        return Classification(top, t1 - t0, t2 - t1, t3 - t2)
