"""Region-of-interest geometry: frame fractions → pixel boxes, polygons → cell masks.

`[preprocess] roi = [x, y, w, h]` and `[motion] mask` are given in fractions of the
frame so that one config fits every frame size (a 224-wide lores stream, a 640-wide
webcam, a 1080p video). These pure functions turn them into pixels for a given frame;
motion gating and classification both use `roi_box`, so they look at the same region.

Standard library and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Roi = tuple[float, float, float, float]
Box = tuple[int, int, int, int]
Polygon = Sequence[Sequence[float]]

FULL_FRAME: Roi = (0.0, 0.0, 1.0, 1.0)


def _span(start: float, size: float, pixels: int) -> tuple[int, int]:
    """[first, end) pixel indices covering [start, start + size) of `pixels`, never empty."""
    first = min(pixels - 1, max(0, round(start * pixels)))
    end = min(pixels, max(first + 1, round((start + size) * pixels)))
    return first, end


def roi_box(roi: Roi, width: int, height: int) -> Box:
    """The region as a pixel box (x, y, w, h) inside a `width` x `height` frame.

    Edges round to the nearest pixel, so [0.25, 0, 0.5, 1] of a 640-wide frame is
    x 160..479 exactly. A region narrower than a pixel still gets one pixel, so a
    valid config (validated by `PreprocessSection`) never yields an empty box.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size {width}x{height} has no pixels")
    x, y, w, h = roi
    x0, x1 = _span(x, w, width)
    y0, y1 = _span(y, h, height)
    return x0, y0, x1 - x0, y1 - y0


def points_in_polygon(xs: np.ndarray, ys: np.ndarray, polygon: Polygon) -> np.ndarray:
    """Boolean array: which points (xs[i], ys[i]) lie inside `polygon` (even-odd rule).

    A ray cast to +x from each point crosses the edges an odd number of times when the
    point is inside; self-intersecting polygons follow the same rule.
    """
    inside = np.zeros(np.broadcast(xs, ys).shape, bool)
    count = len(polygon)
    for index in range(count):
        (ax, ay), (bx, by) = polygon[index], polygon[(index + 1) % count]
        if ay == by:
            continue  # a horizontal edge is never crossed by a horizontal ray
        straddles = (ay > ys) != (by > ys)
        crossing_x = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= straddles & (xs < crossing_x)
    return inside


def rasterise_mask(
    polygons: Sequence[Polygon], centres_x: np.ndarray, centres_y: np.ndarray
) -> np.ndarray:
    """True for the grid cells whose centre lies inside any polygon.

    `centres_x` (columns) and `centres_y` (rows) are cell centres in frame fractions;
    the result has shape (len(centres_y), len(centres_x)).
    """
    xs, ys = np.meshgrid(centres_x, centres_y)
    masked = np.zeros(xs.shape, bool)
    for polygon in polygons:
        masked |= points_in_polygon(xs, ys, polygon)
    return masked


def watched_share(roi: Roi, polygons: Sequence[Polygon], samples: int = 64) -> float:
    """The share of the region a mask leaves watched, sampled on a `samples`² grid."""
    x, y, w, h = roi
    steps = (np.arange(samples) + 0.5) / samples
    masked = rasterise_mask(polygons, x + steps * w, y + steps * h)
    return float(1.0 - masked.mean())
