"""Region-of-interest geometry: fractions to pixel boxes, polygons to cell masks."""

from __future__ import annotations

import numpy as np
import pytest

from pi_daemon.roi import points_in_polygon, rasterise_mask, roi_box, watched_share


@pytest.mark.parametrize(
    ("roi", "size", "box"),
    [
        ((0.0, 0.0, 1.0, 1.0), (640, 480), (0, 0, 640, 480)),
        ((0.25, 0.0, 0.5, 1.0), (640, 480), (160, 0, 320, 480)),
        ((0.0, 0.5, 1.0, 0.5), (640, 480), (0, 240, 640, 240)),
        # 0.7 + 0.3 is 1.0000000000000002 in binary: still the last pixel, no further.
        ((0.7, 0.0, 0.3, 1.0), (640, 480), (448, 0, 192, 480)),
        # Edges round to the nearest pixel on odd sizes.
        ((0.1, 0.1, 0.8, 0.8), (225, 223), (22, 22, 180, 179)),
        # Narrower than a pixel: still one pixel.
        ((0.5, 0.5, 0.0001, 0.0001), (224, 224), (112, 112, 1, 1)),
        # A region starting at the far edge keeps its last pixel.
        ((0.999, 0.0, 0.001, 1.0), (100, 10), (99, 0, 1, 10)),
        ((0.0, 0.0, 1.0, 1.0), (1, 1), (0, 0, 1, 1)),
    ],
)
def test_roi_box(roi, size, box) -> None:
    assert roi_box(roi, *size) == box
    x, y, w, h = box
    assert x >= 0 and y >= 0 and w >= 1 and h >= 1
    assert x + w <= size[0] and y + h <= size[1]


def test_roi_box_needs_a_frame() -> None:
    with pytest.raises(ValueError):
        roi_box((0.0, 0.0, 1.0, 1.0), 0, 10)


SQUARE = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
# A "C" shape: the notch (0.5-1.0 x 0.4-0.6) is outside.
CONCAVE = [
    (0.0, 0.0),
    (1.0, 0.0),
    (1.0, 0.4),
    (0.5, 0.4),
    (0.5, 0.6),
    (1.0, 0.6),
    (1.0, 1.0),
    (0.0, 1.0),
]
# A bow tie: two triangles meeting at the centre.
BOW_TIE = [(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)]


@pytest.mark.parametrize(
    ("polygon", "point", "inside"),
    [
        (SQUARE, (0.5, 0.5), True),
        (SQUARE, (0.1, 0.5), False),
        (SQUARE, (0.5, 0.9), False),
        (SQUARE, (0.74, 0.26), True),
        (CONCAVE, (0.25, 0.5), True),
        (CONCAVE, (0.75, 0.5), False),  # in the notch
        (CONCAVE, (0.75, 0.2), True),
        (BOW_TIE, (0.5, 0.2), False),  # between the two triangles (even-odd)
        (BOW_TIE, (0.1, 0.5), True),
        (BOW_TIE, (0.5, 0.9), False),
        (BOW_TIE, (0.9, 0.5), True),
        ([(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)], (0.2, 0.2), True),
        ([(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)], (0.6, 0.6), False),
    ],
)
def test_points_in_polygon(polygon, point, inside) -> None:
    xs, ys = np.array([point[0]]), np.array([point[1]])
    assert bool(points_in_polygon(xs, ys, polygon)[0]) is inside


def test_rasterised_square_covers_its_cells() -> None:
    centres = (np.arange(8) + 0.5) / 8
    mask = rasterise_mask([SQUARE], centres, centres)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    assert np.array_equal(mask, expected)


def test_several_polygons_add_up_and_nothing_means_nothing() -> None:
    centres = (np.arange(4) + 0.5) / 4
    left = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    right = [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]
    assert rasterise_mask([left, right], centres, centres).all()
    assert not rasterise_mask([], centres, centres).any()


@pytest.mark.parametrize(
    ("roi", "polygons", "share"),
    [
        ((0.0, 0.0, 1.0, 1.0), [], 1.0),
        ((0.0, 0.0, 1.0, 1.0), [SQUARE], 0.75),
        # The square covers the whole of this region ...
        ((0.3, 0.3, 0.4, 0.4), [SQUARE], 0.0),
        # ... and none of this one.
        ((0.0, 0.0, 0.2, 0.2), [SQUARE], 1.0),
    ],
)
def test_watched_share(roi, polygons, share) -> None:
    assert watched_share(roi, polygons) == pytest.approx(share, abs=0.02)
