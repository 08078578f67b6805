import numpy as np
import pytest

from pi_daemon.postprocess import OutputSpec, TopK, looks_like_probabilities

U8_SOFTMAX = OutputSpec(np.dtype(np.uint8), 1 / 256, 0, 6)
I8_LOGITS = OutputSpec(np.dtype(np.int8), 0.5, -10, 6)
F32 = OutputSpec(np.dtype(np.float32), 0.0, 0, 6)


@pytest.mark.parametrize(
    ("spec", "kind", "raw", "k", "expected_indices"),
    [
        # plain ordering
        (U8_SOFTMAX, "probabilities", [0, 10, 200, 30, 5, 11], 3, [2, 3, 5]),
        # exact ties are broken by the lower index, wherever they sit
        (U8_SOFTMAX, "probabilities", [50, 50, 50, 0, 50, 0], 2, [0, 1]),
        (U8_SOFTMAX, "probabilities", [0, 9, 7, 9, 7, 7], 3, [1, 3, 2]),
        # a tie straddling the k boundary picks the lowest indices
        (U8_SOFTMAX, "probabilities", [1, 5, 3, 3, 3, 0], 2, [1, 2]),
        # float near-ties below the resolution count as ties
        (F32, "probabilities", [0.1, 0.3 + 1e-9, 0.3, 0.2, 0.1, 0.0], 2, [1, 2]),
        (F32, "probabilities", [0.1, 0.3, 0.3 + 1e-9, 0.2, 0.1, 0.0], 2, [1, 2]),
        # k larger than the class count returns them all
        (U8_SOFTMAX, "probabilities", [1, 2, 3, 4, 5, 6], 10, [5, 4, 3, 2, 1, 0]),
        # quantized logits with a negative zero point
        (I8_LOGITS, "logits", [-10, 20, -128, 127, 0, 20], 3, [3, 1, 5]),
    ],
)
def test_topk_ordering(spec, kind, raw, k, expected_indices):
    top = TopK(spec, kind, k)(np.array(raw, dtype=spec.dtype))
    assert [i for i, _ in top] == expected_indices


def test_quantized_probabilities_are_dequantized():
    top = TopK(U8_SOFTMAX, "probabilities", 1)(np.array([0, 0, 128, 0, 0, 0], np.uint8))
    assert top == [(2, 0.5)]


def test_logits_become_a_softmax_over_all_classes():
    raw = np.array([1.0, 2.0, 3.0, 0.0, -1.0, 0.5], np.float32)
    top = TopK(F32, "logits", 6)(raw)
    expected = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    assert [i for i, _ in top] == list(np.argsort(-expected))
    assert sum(s for _, s in top) == pytest.approx(1.0)
    assert top[0][1] == pytest.approx(expected.max())


def test_int8_logits_dequantize_with_zero_point():
    raw = np.array([-10, -10, -8, -10, -10, -10], np.int8)  # class 2 is +1.0 above the rest
    (index, score), *_ = TopK(I8_LOGITS, "logits", 1)(raw)
    assert index == 2
    assert score == pytest.approx(np.e / (np.e + 5))


def test_wrong_length_output_is_rejected():
    with pytest.raises(ValueError, match="expected 6"):
        TopK(U8_SOFTMAX, "probabilities", 1)(np.zeros(7, np.uint8))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.25, 0.25, 0.5], True),
        ([0.25, 0.25, 0.49], True),  # uint8 rounding leaves the sum a little off
        ([0.3, 0.3, 0.3], False),
        ([1.5, -0.5, 0.0], False),
        ([2.0, 3.0, 1.0], False),
        ([], False),
    ],
)
def test_probability_detection(values, expected):
    assert looks_like_probabilities(np.array(values)) is expected
