"""The server-side lasso: the browser's projection and even-odd rule, over every point of a map."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.maps.lasso import inside_polygon, lasso_select, screen_positions


def _look_at_origin(distance: float = 3.0, fov_deg: float = 50.0, aspect: float = 1.0) -> list[float]:
    """A perspective camera on the +z axis looking at the origin: projection x view, column-major (three.js)."""
    f = 1 / np.tan(np.radians(fov_deg) / 2)
    near, far = 0.1, 100.0
    projection = np.array([
        [f / aspect, 0, 0, 0],
        [0, f, 0, 0],
        [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
        [0, 0, -1, 0],
    ])
    view = np.eye(4)
    view[2, 3] = -distance
    return list((projection @ view).T.ravel())  # column-major, as Matrix4.elements


def test_the_centre_projects_to_the_middle_and_points_behind_the_camera_to_nothing():
    matrix = _look_at_origin()
    xy = screen_positions(np.array([[0, 0, 0], [0, 0, 5.0], [1, 0, 0]], np.float32), matrix, 400, 300)
    assert np.allclose(xy[0], [200, 150])
    assert np.isnan(xy[1]).all()  # behind the camera (z = 5 > 3)
    assert xy[2, 0] > 200 and np.isclose(xy[2, 1], 150)  # +x is to the right; y on screen grows downwards


def test_a_square_lasso_selects_through_depth_and_the_even_odd_rule_holds():
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, size=(10_000, 3)).astype(np.float32)
    matrix = _look_at_origin()
    xy = screen_positions(points, matrix, 500, 500)
    square = [(150, 150), (350, 150), (350, 350), (150, 350)]
    selected = lasso_select(points, matrix, 500, 500, square)
    expected = np.flatnonzero((xy[:, 0] > 150) & (xy[:, 0] < 350) & (xy[:, 1] > 150) & (xy[:, 1] < 350))
    assert np.array_equal(selected, expected) and len(selected) > 1000
    # Through depth: points far behind others on the same line of sight are caught too.
    depths = points[selected, 2]
    assert depths.min() < -0.9 and depths.max() > 0.9
    # A self-crossing "bow tie": its two lobes are inside, the crossing region's even-odd parity holds.
    bow = [(100, 100), (400, 400), (400, 100), (100, 400)]
    inside = inside_polygon(np.array([[390, 250], [110, 250], [250, 110], [250, 390]], np.float32), bow)
    assert inside.tolist() == [True, True, False, False]


def test_nothing_everything_and_a_mask_at_a_million_points_answer_quickly():
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 1, size=(1_000_000, 3)).astype(np.float32)
    matrix = _look_at_origin()
    assert len(lasso_select(points, matrix, 800, 600, [(-500, -500), (-400, -500), (-400, -400)])) == 0  # where no point projects
    everything = lasso_select(points, matrix, 800, 600, [(-1e4, -1e4), (1e4, -1e4), (1e4, 1e4), (-1e4, 1e4)])
    assert len(everything) == len(points)
    mask = np.zeros(len(points), bool)
    mask[::2] = True
    assert np.array_equal(lasso_select(points, matrix, 800, 600, [(-1e4, -1e4), (1e4, -1e4), (1e4, 1e4), (-1e4, 1e4)], mask), np.flatnonzero(mask))
    assert len(lasso_select(points, matrix, 800, 600, [(1, 1), (2, 2)])) == 0  # two points are not a polygon


def test_a_bad_camera_matrix_is_refused():
    with pytest.raises(ValueError, match="16 finite numbers"):
        screen_positions(np.zeros((3, 3), np.float32), [1.0] * 15, 100, 100)
    with pytest.raises(ValueError, match="16 finite numbers"):
        screen_positions(np.zeros((3, 3), np.float32), [float("nan")] * 16, 100, 100)
