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


# -- exact scores on every path (the fast quantized one, the general one, logits) ----------


def test_quantized_scores_subtract_the_zero_point_on_both_paths():
    spec = OutputSpec(np.dtype(np.uint8), 0.01, 10, 10)
    raw = np.array([110, 10, 60, 10, 10, 10, 10, 10, 10, 35], np.uint8)
    fast = TopK(spec, "probabilities", 3)(raw)  # k <= FAST_TOP_K_LIMIT: repeated argmax
    general = TopK(spec, "probabilities", 10)(raw)  # k > 8: partition and sort
    assert fast == [(0, pytest.approx(1.0)), (2, pytest.approx(0.5)), (9, pytest.approx(0.25))]
    assert general[:3] == fast
    assert [i for i, _ in general] == [0, 2, 9, 1, 3, 4, 5, 6, 7, 8]  # ties by index
    assert general[-1][1] == pytest.approx(0.0)


def test_float_probabilities_are_reported_as_they_are():
    raw = np.array([0.05, 0.7, 0.25, 0.0, 0.0, 0.0], np.float32)
    top = TopK(F32, "probabilities", 2)(raw)
    assert top == [(1, pytest.approx(0.7)), (2, pytest.approx(0.25))]  # no softmax on top


def test_float_logits_near_ties_are_broken_by_index_too():
    f64 = OutputSpec(np.dtype(np.float64), 0.0, 0, 6)
    raw = np.array([1.0, 1.0 + 1e-9, 0.5, -3.0, -3.0, -3.0], np.float64)
    assert [i for i, _ in TopK(f64, "logits", 2)(raw)] == [0, 1]


def test_large_logits_do_not_overflow_the_softmax():
    raw = np.array([500.0, 499.0, 0.0, 0.0, 0.0, 0.0], np.float64)
    top = TopK(OutputSpec(np.dtype(np.float64), 0.0, 0, 6), "logits", 2)(raw)
    e = np.exp(-1.0)
    assert top == [(0, pytest.approx(1 / (1 + e))), (1, pytest.approx(e / (1 + e)))]


def test_k_below_one_is_refused_and_the_kind_is_kept():
    with pytest.raises(ValueError, match=r"^k must be >= 1$"):
        TopK(F32, "logits", 0)
    assert TopK(F32, "logits", 1).kind == "logits"


@pytest.mark.parametrize(
    ("values", "tolerance", "expected"),
    [
        ([-1e-6, 1.0], 0.05, True),  # rounding noise just below 0 is still a probability
        ([0.0, 1.0], 0.05, True),
        ([-0.01, 0.51, 0.5], 0.05, False),  # a real negative: logits
        ([1.0 + 1e-6, 0.0], 0.05, True),  # noise just above 1
        ([1.02, 0.0], 0.05, False),  # above 1: logits, even though the sum is close
        ([0.5, 0.5], 0.0, True),  # the sum may equal 1 exactly at zero tolerance
        ([0.3, 0.3], 0.05, False),
        ([], 0.05, False),
    ],
)
def test_probability_detection_edges(values, tolerance, expected):
    assert looks_like_probabilities(np.array(values), tolerance) is expected
