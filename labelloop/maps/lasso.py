"""The map's lasso, on the server: which points a polygon drawn in the browser encloses.

The browser draws at most a point budget of a large map, but a lasso must
select among all of its points. So the browser sends what it saw (the
polygon in canvas pixels, the camera's view-projection matrix and the
canvas size) and the server projects every point with the same arithmetic
as ``components/scatter3d.js`` (``screenPositions`` and ``insidePolygon``):
float32 positions, float64 arithmetic, the pixel coordinates rounded to
float32 as the browser stores them, and the same even-odd rule. Through
depth: a point behind another is selected too; a point behind the camera
never is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BLOCK = 262_144  # points projected at a time: bounded memory at millions of points


def screen_positions(points: np.ndarray, matrix: Sequence[float], width: float, height: float) -> np.ndarray:
    """(n, 2) canvas pixels of ``points`` (n, 3) under ``matrix`` (16 numbers, column-major, as
    three.js's ``Matrix4.elements``); NaN for points behind the camera."""
    e = np.asarray(matrix, dtype=np.float64)
    if e.shape != (16,) or not np.isfinite(e).all():
        raise ValueError("the camera matrix must be 16 finite numbers")
    out = np.empty((len(points), 2), dtype=np.float32)
    for start in range(0, len(points), _BLOCK):
        p = np.asarray(points[start : start + _BLOCK], dtype=np.float32).astype(np.float64)
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        w = e[3] * x + e[7] * y + e[11] * z + e[15]
        with np.errstate(divide="ignore", invalid="ignore"):
            sx = ((e[0] * x + e[4] * y + e[8] * z + e[12]) / w * 0.5 + 0.5) * width
            sy = (1 - ((e[1] * x + e[5] * y + e[9] * z + e[13]) / w * 0.5 + 0.5)) * height
        behind = w <= 0
        sx[behind] = np.nan
        sy[behind] = np.nan
        out[start : start + _BLOCK, 0] = sx
        out[start : start + _BLOCK, 1] = sy
    return out


def inside_polygon(xy: np.ndarray, polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """Even-odd rule, edge by edge, exactly as the browser's ``insidePolygon`` decides it."""
    shape = np.asarray(polygon, dtype=np.float64)
    x = xy[:, 0].astype(np.float64)
    y = xy[:, 1].astype(np.float64)
    inside = np.zeros(len(xy), dtype=bool)
    if len(shape) < 3:
        return inside
    # The browser first keeps points inside the polygon's bounding box; the same here (and it is most of the speed).
    candidates = np.flatnonzero(
        (x >= shape[:, 0].min()) & (x <= shape[:, 0].max()) & (y >= shape[:, 1].min()) & (y <= shape[:, 1].max())
    )
    cx, cy = x[candidates], y[candidates]
    flips = np.zeros(len(candidates), dtype=bool)
    for i in range(len(shape)):
        xi, yi = shape[i]
        xj, yj = shape[i - 1]  # i = 0 pairs with the last vertex, as the browser's j = length - 1 does
        crosses = (yi > cy) != (yj > cy)
        with np.errstate(divide="ignore", invalid="ignore"):
            flips ^= crosses & (cx < (xj - xi) * (cy - yi) / (yj - yi) + xi)
    inside[candidates] = flips
    return inside


def lasso_select(points: np.ndarray, matrix: Sequence[float], width: float, height: float, polygon: Sequence[Sequence[float]], selectable: np.ndarray | None = None) -> np.ndarray:
    """Indices of the points the polygon encloses on screen (``selectable``: a mask of points that may be
    selected at all, e.g. not hidden by the legend)."""
    xy = screen_positions(points, matrix, width, height)
    chosen = inside_polygon(xy, polygon) & np.isfinite(xy).all(axis=1)
    if selectable is not None:
        chosen &= selectable
    return np.flatnonzero(chosen)
