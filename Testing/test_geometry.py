"""Property tests for the coordinate chain RAS ↔ ijk ↔ kji ↔ model ↔ ROI and for paste-back on any geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from SAMVolSegmentLib.errors import InvalidImageError
from SAMVolSegmentLib.geometry import ModelGrid, RoiWindow, VolumeGeometry, lps_to_ras, ras_to_lps
from SAMVolSegmentLib.preprocessing import paste_back_logits, roi_footprint_bbox_kji


def rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@st.composite
def geometries(draw):
    shape_kji = tuple(draw(st.integers(2, 40)) for _ in range(3))
    spacing = np.array([draw(st.floats(0.3, 5.0)) for _ in range(3)])
    kind = draw(st.sampled_from(["oblique", "lps_identity", "ras_identity", "flipped", "permuted"]))
    if kind == "oblique":
        direction = rotation([draw(st.floats(-np.pi, np.pi)) for _ in range(3)])
    elif kind == "lps_identity":
        direction = np.diag([-1.0, -1.0, 1.0])  # identity in LPS, as ITK writes by default
    elif kind == "ras_identity":
        direction = np.eye(3)
    elif kind == "flipped":
        direction = np.diag([1.0, -1.0, -1.0])  # negative determinant
    else:
        direction = np.eye(3)[list(draw(st.permutations([0, 1, 2])))]
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing
    matrix[:3, 3] = [draw(st.floats(-300, 300)) for _ in range(3)]
    return VolumeGeometry.from_matrix(matrix, shape_kji)


points = st.lists(st.tuples(*(st.floats(-200, 200) for _ in range(3))), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(geometries(), points)
def test_ras_ijk_round_trip(geometry, pts):
    ras = np.array(pts)
    np.testing.assert_allclose(geometry.ijk_to_ras_points(geometry.ras_to_ijk(ras)), ras, atol=1e-6)


@settings(max_examples=150, deadline=None)
@given(geometries(), points, st.sampled_from([32, 64, 128]))
def test_model_and_roi_round_trips(geometry, pts, size):
    ras = np.array(pts)
    grid = ModelGrid.covering(geometry)
    np.testing.assert_allclose(grid.model_to_ras(grid.ras_to_model(ras)), ras, atol=1e-6)
    roi = RoiWindow.centred_at(grid, ras[0], size)
    np.testing.assert_allclose(roi.roi_to_ras(roi.ras_to_roi(ras)), ras, atol=1e-6)
    np.testing.assert_allclose(roi.roi_to_model(roi.ras_to_roi(ras)), grid.ras_to_model(ras), atol=1e-6)
    # The centre click lands within half a model voxel of the ROI's centre voxel.
    assert np.all(np.abs(roi.ras_to_roi(ras[:1])[0] - size // 2) <= 0.5 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(geometries())
def test_model_grid_covers_every_voxel_centre(geometry):
    grid = ModelGrid.covering(geometry)
    corners = grid.ras_to_model(geometry.corners_ras())
    # The corner-preserving grid reaches within one model voxel of every original corner.
    assert np.all(corners >= -1 - 1e-6) and np.all(corners <= np.array(grid.shape_model) + 1e-6)


@settings(max_examples=80, deadline=None)
@given(geometries(), st.tuples(*(st.floats(-400, 400) for _ in range(3))))
def test_paste_back_never_raises_and_stays_inside(geometry, centre):
    grid = ModelGrid.covering(geometry)
    roi = RoiWindow.centred_at(grid, centre, 32)
    logits = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    update = paste_back_logits(logits, roi, geometry)
    for (lo, hi), n in zip(update.bbox_kji, geometry.shape_kji):
        assert 0 <= lo <= hi <= n
    if roi_footprint_bbox_kji(roi, geometry) is None:
        assert update.is_empty_box


@settings(max_examples=60, deadline=None)
@given(geometries())
def test_sitk_round_trip_of_geometry(geometry):
    array = np.zeros(geometry.shape_kji, np.uint8)
    back = VolumeGeometry.from_sitk(geometry.to_sitk_image(array))
    np.testing.assert_allclose(back.ijk_to_ras, geometry.ijk_to_ras, atol=1e-9)
    assert back.shape_kji == geometry.shape_kji


def test_from_sitk_uses_lps_header():
    image = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    image.SetOrigin((10.0, 20.0, 30.0))
    image.SetSpacing((1.0, 2.0, 3.0))
    geometry = VolumeGeometry.from_sitk(image)
    np.testing.assert_allclose(geometry.ijk_to_ras_points([[0, 0, 0], [1, 1, 1]]), [[-10, -20, 30], [-11, -22, 33]])
    np.testing.assert_allclose(lps_to_ras(ras_to_lps([[1.0, 2.0, 3.0]])), [[1.0, 2.0, 3.0]])
    assert geometry.shape_kji == (6, 5, 4)


def test_separable_and_general_paste_back_agree():
    """Axis-aligned volumes take a separable fast path; a 1e-7 rad tilt forces the general one."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8, 8, 8)).astype(np.float32)
    base = np.diag([0.8, 0.9, 2.0, 1.0])
    base[:3, 3] = [5, -3, 7]
    straight = VolumeGeometry.from_matrix(base, (20, 40, 30))
    tilted_matrix = base.copy()
    tilted_matrix[:3, :3] = rotation([0.0, 0.0, 1e-7]) @ base[:3, :3] + 1e-12
    tilted = VolumeGeometry.from_matrix(tilted_matrix, (20, 40, 30))
    grid = ModelGrid.covering(straight)
    roi = RoiWindow.centred_at(grid, straight.ijk_to_ras_points([[15, 20, 10]])[0], 32)
    a = paste_back_logits(logits, roi, straight)
    b = paste_back_logits(logits, roi, tilted)
    assert a.bbox_kji == b.bbox_kji
    assert (a.mask != b.mask).mean() < 1e-3


def test_zero_spacing_is_rejected():
    with pytest.raises(InvalidImageError, match="spacing"):
        VolumeGeometry.from_matrix(np.diag([1.0, 0.0, 1.0, 1.0]), (3, 3, 3))


def test_singular_direction_is_rejected():
    matrix = np.eye(4)
    matrix[:3, 1] = [1.0, 0.0, 0.0]  # two voxel axes along the same world direction
    with pytest.raises(InvalidImageError, match="direction"):
        VolumeGeometry.from_matrix(matrix, (3, 3, 3))


def test_non_finite_matrix_is_rejected():
    matrix = np.eye(4)
    matrix[0, 3] = np.nan
    with pytest.raises(InvalidImageError, match="finite"):
        VolumeGeometry.from_matrix(matrix, (3, 3, 3))
