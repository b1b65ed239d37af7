"""Coordinate helpers of the Slicer module: parent transforms, oblique volumes, ROI boxes (no Slicer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SAMVolSegment"))

from SAMVolSegmentSlicerLib import coordinates as co


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [n for n in range(3) if n != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def oblique_ijk_to_ras(spacing=(0.8, 0.9, 2.5), origin=(-100.0, 20.0, 5.0), degrees=30.0) -> np.ndarray:
    m = rotation(2, degrees) @ rotation(0, degrees / 2)
    m[:3, :3] = m[:3, :3] @ np.diag(spacing)
    m[:3, 3] = origin
    return m


angles = st.floats(-180, 180, allow_nan=False)
shifts = st.floats(-200, 200, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(angles, angles, shifts, shifts, shifts, st.floats(-1, 40), st.floats(-1, 30), st.floats(-1, 20))
def test_world_to_ijk_inverts_parent_transform_and_obliquity(a1, a2, tx, ty, tz, i, j, k):
    ijk_to_ras = oblique_ijk_to_ras(degrees=a1)
    parent = rotation(1, a2)
    parent[:3, 3] = (tx, ty, tz)
    world = co.transform_points(co.ijk_to_world(ijk_to_ras, parent), (i, j, k))
    # The same point computed by hand: local RAS first, then the parent transform.
    local = ijk_to_ras @ np.array([i, j, k, 1.0])
    assert np.allclose(world, (parent @ local)[:3])
    assert np.allclose(co.world_to_ijk(world, ijk_to_ras, parent), (i, j, k), atol=1e-6)


def test_identity_parent_equals_no_parent():
    m = oblique_ijk_to_ras()
    assert np.array_equal(co.ijk_to_world(m, None), co.ijk_to_world(m, np.eye(4)))


def test_inside_volume_uses_half_voxel_margin():
    shape_kji = (10, 20, 30)
    assert co.is_inside_volume((29.4, 19.4, 9.4), shape_kji)
    assert co.is_inside_volume((-0.5, 0, 0), shape_kji)
    assert not co.is_inside_volume((29.6, 0, 0), shape_kji)
    assert not co.is_inside_volume((0, 0, -0.6), shape_kji)


def test_segmentation_local_frame_under_its_own_transform():
    ijk_to_ras = oblique_ijk_to_ras()
    vol_parent = rotation(2, 15)
    vol_parent[:3, 3] = (5, -3, 2)
    seg_parent = rotation(0, -10)
    m = co.ijk_to_segmentation_local(ijk_to_ras, vol_parent, seg_parent)
    # Voxel (3, 4, 5) through the segmentation's frame back to world lands where the volume puts it.
    p_seg = co.transform_points(m, (3, 4, 5))
    assert np.allclose(co.transform_points(seg_parent, p_seg), co.transform_points(vol_parent @ ijk_to_ras, (3, 4, 5)))
    # Same parent for both: the segmentation grid is the volume's own IJK->RAS.
    assert co.same_grid(co.ijk_to_segmentation_local(ijk_to_ras, vol_parent, vol_parent), ijk_to_ras)


def test_as_matrix_rejects_non_affine_and_accepts_flat():
    assert np.array_equal(co.as_matrix(list(range(12)) + [0, 0, 0, 1]).ravel(), list(range(12)) + [0, 0, 0, 1])
    with pytest.raises(ValueError, match="affine"):
        co.as_matrix(np.ones((4, 4)))
    with pytest.raises(ValueError):
        co.as_matrix(np.eye(3))


def test_roi_box_axis_aligned_and_rotated():
    lo, hi = co.roi_box_world((10, 20, 30), (4, 6, 8))
    assert np.allclose(lo, (8, 17, 26)) and np.allclose(hi, (12, 23, 34))
    # 90 degrees about S swaps the R and A extents; a parent translation moves the box.
    parent = np.eye(4)
    parent[:3, 3] = (1, 2, 3)
    lo, hi = co.roi_box_world((0, 0, 0), (4, 6, 8), rotation(2, 90), parent)
    assert np.allclose(lo, (-3 + 1, -2 + 2, -4 + 3)) and np.allclose(hi, (3 + 1, 2 + 2, 4 + 3))
    with pytest.raises(ValueError, match="positive size"):
        co.roi_box_world((0, 0, 0), (0, 1, 1))


@settings(max_examples=40, deadline=None)
@given(angles, st.floats(1, 50), st.floats(1, 50), st.floats(1, 50))
def test_rotated_roi_box_contains_all_corners(angle, sx, sy, sz):
    rot = rotation(1, angle) @ rotation(2, angle / 3)
    lo, hi = co.roi_box_world((5, 6, 7), (sx, sy, sz), rot)
    half = np.array([sx, sy, sz]) / 2
    for corner in ([-1, -1, -1], [1, 1, 1], [1, -1, 1], [-1, 1, -1]):
        p = np.array([5, 6, 7]) + rot[:3, :3] @ (np.array(corner) * half)
        assert np.all(p >= lo - 1e-9) and np.all(p <= hi + 1e-9)
    # The box is tight: its size never exceeds the ROI's diagonal.
    assert np.all(hi - lo <= np.linalg.norm([sx, sy, sz]) + 1e-9)
