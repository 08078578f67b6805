"""Model output → top-k (class index, probability), deterministically.

Pure numpy. The output's dtype and quantization come from the model; whether it is
already a probability distribution or raw logits is decided once, at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

OutputKind = Literal["probabilities", "logits"]

# Float scores closer than this are treated as tied, so that run-to-run jitter in
# the last bits (thread count, backend) never reorders near-equal classes.
FLOAT_TIE_RESOLUTION = 1e-6

# Up to this k, quantized probabilities use repeated argmax (cheaper than partition+sort).
FAST_TOP_K_LIMIT = 8
_BELOW_QUANTIZED = np.iinfo(np.int16).min  # below every uint8/int8 value


@dataclass(frozen=True)
class OutputSpec:
    dtype: np.dtype
    scale: float
    zero_point: int
    num_classes: int

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype).kind in "iu" and self.scale > 0


def looks_like_probabilities(values: np.ndarray, tolerance: float = 0.05) -> bool:
    """True when dequantized `values` are in [0, 1] and sum to 1 within `tolerance`.

    A uint8 softmax at 1/256 resolution sums to 1 only approximately, hence the
    tolerance; logits almost never satisfy both conditions.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or values.min() < -1e-6 or values.max() > 1 + 1e-6:
        return False
    return abs(float(values.sum()) - 1.0) <= tolerance


class TopK:
    """Selects the k best classes from a raw output vector.

    Ties (exactly equal quantized values, or floats within FLOAT_TIE_RESOLUTION)
    are broken by the lower class index, so the answer never depends on
    argpartition's internal order.
    """

    def __init__(self, spec: OutputSpec, kind: OutputKind, k: int) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.spec = spec
        self.kind = kind
        self.k = min(k, spec.num_classes)
        # Logits need the whole vector for the softmax denominator: reuse one buffer.
        self._probs = np.empty(spec.num_classes, np.float64) if kind == "logits" else None
        # Quantized probabilities (the bundled model) take a shorter path; see _top_quantized.
        fast = kind == "probabilities" and spec.quantized and self.k <= FAST_TOP_K_LIMIT
        self._scratch = np.empty(spec.num_classes, np.int16) if fast else None

    def __call__(self, raw: np.ndarray) -> list[tuple[int, float]]:
        raw = raw.reshape(-1)
        if raw.shape[0] != self.spec.num_classes:
            raise ValueError(f"output has {raw.shape[0]} values, expected {self.spec.num_classes}")
        if self._scratch is not None:
            return self._top_quantized(raw)
        if self._probs is not None:
            # Order by the logits themselves: the softmax keeps their order, but
            # tiny probabilities would all round to the same tie.
            ordering = raw if self.spec.quantized else self._rounded(raw)
            key = self._softmax(raw)
        elif self.spec.quantized:
            key = raw
            ordering = raw
        else:
            key = raw
            ordering = self._rounded(raw)
        n, k = ordering.shape[0], self.k
        # The k-th best value; every class at least that good is a candidate, so a
        # tie straddling the boundary is resolved by index, not by partition order.
        kth = np.partition(ordering, n - k)[n - k]
        candidates = np.flatnonzero(ordering >= kth)
        order = np.lexsort((candidates, -ordering[candidates].astype(np.float64)))[:k]
        best = candidates[order]
        return [(int(i), self._score(key, int(i))) for i in best]

    def _top_quantized(self, raw: np.ndarray) -> list[tuple[int, float]]:
        """Repeated argmax on a scratch copy: same answer, far fewer numpy calls.

        argmax returns the first (lowest-index) maximum, which is exactly the tie rule.
        This runs right after invoke(), when the CPU caches are cold and every numpy
        call costs several microseconds: 1 + 2k calls instead of about a dozen.
        """
        scratch = self._scratch
        assert scratch is not None
        np.copyto(scratch, raw, casting="unsafe")  # int16 holds any uint8/int8 value
        zero_point, scale = self.spec.zero_point, self.spec.scale
        best = []
        for _ in range(self.k):
            index = int(scratch.argmax())
            best.append((index, (int(raw[index]) - zero_point) * scale))
            scratch[index] = _BELOW_QUANTIZED
        return best

    @staticmethod
    def _rounded(raw: np.ndarray) -> np.ndarray:
        return np.round(raw.astype(np.float64) / FLOAT_TIE_RESOLUTION)

    def _softmax(self, raw: np.ndarray) -> np.ndarray:
        probs = self._probs
        assert probs is not None
        np.copyto(probs, raw, casting="unsafe")
        if self.spec.quantized:
            probs -= self.spec.zero_point
            probs *= self.spec.scale
        probs -= probs.max()
        np.exp(probs, out=probs)
        probs /= probs.sum()
        return probs

    def _score(self, key: np.ndarray, index: int) -> float:
        value = float(key[index])
        if self._probs is None and self.spec.quantized:
            value = (value - self.spec.zero_point) * self.spec.scale
        return value
