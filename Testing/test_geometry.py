"""Property tests for the coordinate chain RAS ↔ ijk ↔ kji ↔ model ↔ ROI and for paste-back on any geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from SAMVolSegmentLib.engine.geometry import (
    ModelGrid,
    RoiWindow,
    VolumeGeometry,
    bbox_around,
    bbox_is_empty,
    bbox_shape,
    bbox_slices,
    box_centre,
    box_corners,
    clip_bbox,
    index_in_shape,
    lps_to_ras,
    mask_bbox,
    ordered_box,
    ras_to_lps,
    union_bbox,
)
from SAMVolSegmentLib.engine.preprocessing import paste_back_logits, roi_footprint_bbox_kji
from SAMVolSegmentLib.errors import InvalidImageError


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


@pytest.mark.parametrize("flip", [False, True], ids=["straight", "flipped-axes"])
def test_sparse_foreground_paste_back_equals_the_general_path(flip):
    """The separable path interpolates only the sub-box whose taps reach a foreground low-res plane; the rest of
    the box must still come back 0 (clearing an earlier mask) and match the general path everywhere."""
    rng = np.random.default_rng(5)
    logits = np.full((16, 16, 16), -5.0, np.float32)
    logits[7:10, 6:9, 7:9] = rng.uniform(-1, 4, (3, 3, 2))  # near the ROI centre, off-centre per axis
    base = np.diag([0.8, 0.9, 2.0, 1.0])
    if flip:
        base[:3, :3] = np.diag([-0.8, 0.9, -2.0])
    base[:3, 3] = [5, -3, 7]
    straight = VolumeGeometry.from_matrix(base, (20, 40, 30))
    tilted_matrix = base.copy()
    tilted_matrix[:3, :3] = rotation([0.0, 0.0, 1e-7]) @ base[:3, :3] + 1e-12
    tilted = VolumeGeometry.from_matrix(tilted_matrix, (20, 40, 30))
    roi = RoiWindow.centred_at(ModelGrid.covering(straight), straight.ijk_to_ras_points([[10, 20, 15]])[0], 32)
    def full(update):
        volume = np.zeros(straight.shape_kji, np.uint8)
        volume[tuple(slice(lo, hi) for lo, hi in update.bbox_kji)] = update.mask
        return volume

    a = paste_back_logits(logits, roi, straight)
    b = paste_back_logits(logits, roi, tilted)
    assert a.mask.any()
    assert (full(a) != full(b)).sum() <= 2  # the general path's 1e-7 rad tilt may flip a voxel on the threshold
    empty = paste_back_logits(np.full((16, 16, 16), -1.0, np.float32), roi, straight)
    assert empty.bbox_kji == a.bbox_kji and not empty.mask.any()


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


# ---------------------------------------------------------------- conventions checked against SimpleITK / torch


@settings(max_examples=80, deadline=None)
@given(geometries(), points)
def test_ras_to_ijk_agrees_with_simpleitk(geometry, pts):
    """Our RAS → continuous index equals ITK's LPS physical point → continuous index on the same image, and
    the (k, j, i) array element of index (i, j, k) is the one SimpleITK reads at that index."""
    image = geometry.to_sitk_image(np.arange(np.prod(geometry.shape_kji), dtype=np.float32).reshape(geometry.shape_kji))
    ras = np.array(pts)
    ours = geometry.ras_to_ijk(ras)
    theirs = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in ras_to_lps(ras)])
    np.testing.assert_allclose(ours, theirs, atol=1e-6 * (1 + np.abs(theirs).max()))
    i, j, k = (n - 1 for n in geometry.shape_kji[::-1])
    assert image.GetPixel(i, j, k) == sitk.GetArrayViewFromImage(image)[k, j, i]


@settings(max_examples=80, deadline=None)
@given(geometries(), st.tuples(*(st.floats(-300, 300) for _ in range(3))), st.tuples(*(st.floats(1, 200) for _ in range(3))))
def test_box_mask_matches_voxel_centres(geometry, corner, extent):
    min_ras = np.array(corner)
    max_ras = min_ras + np.array(extent)
    bbox = tuple((0, n) for n in geometry.shape_kji)
    mask = geometry.box_mask_kji(bbox, min_ras, max_ras)
    kji = np.indices(geometry.shape_kji).reshape(3, -1).T
    ras = geometry.ijk_to_ras_points(kji[:, ::-1].astype(float))
    expected = np.all((ras >= min_ras) & (ras <= max_ras), axis=1).reshape(geometry.shape_kji)
    assert mask.shape == geometry.shape_kji
    # Ties on a box face may round either way; nothing else may differ.
    assert np.count_nonzero(mask != expected) <= np.count_nonzero(
        np.any(np.isclose(ras, min_ras) | np.isclose(ras, max_ras), axis=1)
    )


@settings(max_examples=80, deadline=None)
@given(geometries())
def test_contains_ras_is_the_voxel_extent(geometry):
    shape_ijk = np.array(geometry.shape_kji[::-1], dtype=float)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    inner = corners * (shape_ijk - 1)  # extreme voxel centres
    outer = corners * (shape_ijk + 0.2) - 0.6  # 0.1 voxel beyond the half-voxel border on every axis
    assert geometry.contains_ras(geometry.ijk_to_ras_points(inner)).all()
    assert not geometry.contains_ras(geometry.ijk_to_ras_points(outer)).any()


@pytest.mark.parametrize("tilt", [0.0, 1e-7], ids=["separable", "general"])
@pytest.mark.parametrize("low", [8, 32])
def test_paste_back_is_the_reference_upsampling_at_roi_voxels(low, tilt):
    """On a volume whose voxels are the ROI's voxels, paste-back equals ``F.interpolate(size=S, trilinear,
    align_corners=False) > 0`` of the low-res logits, for both the separable and the general (oblique) path."""
    import torch

    size = 32
    grid = ModelGrid((10.0, -20.0, 30.0), (40, 40, 40))
    roi = RoiWindow.centred_at(grid, grid.model_to_ras([[20, 20, 20]])[0], size)
    matrix = roi.affine_ras.copy()
    matrix[:3, :3] = rotation([0.0, 0.0, tilt]) @ matrix[:3, :3]
    geometry = VolumeGeometry.from_matrix(matrix, (size, size, size))  # (i, j, k) = (R, A, S) of the ROI
    logits = torch.from_numpy(np.random.default_rng(low).normal(size=(low,) * 3).astype(np.float32))
    upsampled = torch.nn.functional.interpolate(logits[None, None], size=size, mode="trilinear", align_corners=False)
    expected = (upsampled[0, 0].numpy() > 0).transpose(2, 1, 0)  # (R, A, S) → (k, j, i)
    update = paste_back_logits(logits, roi, geometry)
    assert update.bbox_kji == ((0, size),) * 3
    near_zero = np.abs(upsampled[0, 0].numpy().transpose(2, 1, 0)) < 1e-4
    assert np.array_equal(update.mask.astype(bool)[~near_zero], expected[~near_zero])


def test_paste_back_of_a_roi_outside_the_volume_is_empty():
    geometry = VolumeGeometry.from_matrix(np.diag([0.8, 0.8, 2.0, 1.0]), (10, 20, 20))
    grid = ModelGrid.covering(geometry)
    roi = RoiWindow((500, 500, 500), 32, grid.origin_ras, grid.spacing)
    assert paste_back_logits(np.ones((8, 8, 8), np.float32), roi, geometry).is_empty_box


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(*(st.integers(1, 12) for _ in range(3))),
    st.tuples(*(st.integers(-20, 20) for _ in range(3))),
    st.sampled_from([4, 8, 16]),
)
def test_crop_roi_at_borders_and_outside(shape_model, start, size):
    from SAMVolSegmentLib.engine.preprocessing import ModelVolume, crop_roi

    array = np.arange(1, np.prod(shape_model) + 1, dtype=np.float32).reshape(shape_model)
    grid = ModelGrid((0.0, 0.0, 0.0), shape_model)
    roi = RoiWindow(start, size, grid.origin_ras, grid.spacing)
    crop = crop_roi(ModelVolume(array, grid), roi, normalize=False)
    assert crop.shape == (size,) * 3 and crop.dtype == np.float32
    index = np.indices((size,) * 3).reshape(3, -1).T + np.array(start)
    inside = np.all((index >= 0) & (index < np.array(shape_model)), axis=1)
    expected = np.zeros(len(index), np.float32)
    expected[inside] = array[tuple(index[inside].T)]
    np.testing.assert_array_equal(crop.ravel(), expected)
    assert np.all(np.isfinite(crop_roi(ModelVolume(array, grid), roi)))


def test_lowres_grid_faces_are_the_roi_faces():
    roi = RoiWindow((3, -4, 5), 128, (1.0, 2.0, 3.0), 1.5)
    low = roi.lowres_geometry(32)
    np.testing.assert_allclose(low.ijk_to_ras_points([[-0.5] * 3, [31.5] * 3]), roi.roi_to_ras([[-0.5] * 3, [127.5] * 3]))
    np.testing.assert_allclose(low.spacing, [6.0] * 3)


@settings(max_examples=80, deadline=None)
@given(geometries(), points, st.floats(0.0, 3.0))
def test_bounds_and_margin(geometry, pts, margin):
    ijk = geometry.ras_to_ijk(np.array(pts))
    lo, hi = geometry.bounds_ras()
    centres = geometry.corners_ras()
    assert np.all(centres >= lo - 1e-9) and np.all(centres <= hi + 1e-9)
    # A margin of m voxels accepts exactly the points within m of the extreme voxel centres (index space).
    upper = np.array(geometry.shape_kji[::-1]) - 1.0
    expected = np.all((ijk >= -margin - 1e-9) & (ijk <= upper + margin + 1e-9), axis=1)
    strict = np.all((ijk >= -margin + 1e-9) & (ijk <= upper + margin - 1e-9), axis=1)
    got = geometry.contains_ras(np.array(pts), margin_voxels=margin)
    assert np.all(got <= expected) and np.all(got >= strict)


@settings(max_examples=80, deadline=None)
@given(st.tuples(*(st.integers(1, 30) for _ in range(3))), st.tuples(*(st.integers(-50, 50) for _ in range(3))))
def test_bbox_model_clipped_is_the_overlap(shape_model, start):
    grid = ModelGrid((0.0, 0.0, 0.0), shape_model)
    roi = RoiWindow(start, 16, grid.origin_ras, grid.spacing)
    assert roi.bbox_model() == tuple((s, s + 16) for s in start)
    for (lo, hi), s, n in zip(roi.bbox_model(clip_to=grid), start, shape_model):
        assert 0 <= lo <= hi <= n
        assert hi - lo == len(set(range(s, s + 16)) & set(range(n)))


# ---------------------------------------------------------------- box helpers
@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(*(st.floats(-1e3, 1e3) for _ in range(3))), min_size=2, max_size=8))
def test_ordered_box_holds_every_point_and_touches_each_face(pts):
    lo, hi = ordered_box(pts)
    array = np.array(pts)
    assert np.all(lo <= hi) and np.all(array >= lo) and np.all(array <= hi)
    np.testing.assert_array_equal(lo, array.min(axis=0))  # tight: a face through an extreme point
    np.testing.assert_array_equal(box_centre((lo, hi)), (lo + hi) / 2)
    corners = box_corners(lo, hi)
    assert corners.shape == (8, 3)
    assert {tuple(c) for c in corners} == {(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])}
    lo2, hi2 = ordered_box(corners)
    np.testing.assert_array_equal(lo2, lo)
    np.testing.assert_array_equal(hi2, hi)


def test_ordered_box_swaps_corners_given_in_any_order():
    lo, hi = ordered_box([[5.0, -1.0, 3.0], [-2.0, 4.0, 3.5]])
    np.testing.assert_array_equal(lo, [-2.0, -1.0, 3.0])
    np.testing.assert_array_equal(hi, [5.0, 4.0, 3.5])


@settings(max_examples=100, deadline=None)
@given(st.tuples(*(st.integers(1, 12) for _ in range(3))), st.integers(0, 3), st.data())
def test_mask_bbox_is_the_padded_clipped_extent_of_the_voxels(shape, pad, data):
    mask = np.zeros(shape, bool)
    voxels = data.draw(st.lists(st.tuples(*(st.integers(0, n - 1) for n in shape)), max_size=5))
    for v in voxels:
        mask[v] = True
    box = mask_bbox(mask, pad)
    if not voxels:
        assert box is None
        return
    assert mask[bbox_slices(box)].sum() == mask.sum()  # holds every voxel
    for axis, (lo, hi) in enumerate(box):
        coords = [v[axis] for v in voxels]
        assert lo == max(min(coords) - pad, 0) and hi == min(max(coords) + 1 + pad, shape[axis])
    assert bbox_shape(box) == mask[bbox_slices(box)].shape and not bbox_is_empty(box)


def test_mask_bbox_pads_each_axis_on_its_own():
    mask = np.zeros((10, 10, 10), bool)
    mask[5, 5, 5] = True
    assert mask_bbox(mask, [0, 1, 3]) == ((5, 6), (4, 7), (2, 9))


@settings(max_examples=100, deadline=None)
@given(st.tuples(*(st.tuples(st.integers(-20, 20), st.integers(-20, 20)) for _ in range(3))),
       st.tuples(*(st.integers(0, 15) for _ in range(3))))
def test_clip_bbox_is_the_overlap_with_the_array(box, shape):
    clipped = clip_bbox(box, shape)
    for (lo, hi), (clo, chi), n in zip(box, clipped, shape):
        assert 0 <= clo <= chi <= n
        assert chi - clo == len(set(range(lo, hi)) & set(range(n)))
    assert bbox_is_empty(clipped) == (np.zeros(shape)[bbox_slices(clipped)].size == 0)


def test_bbox_around_and_index_in_shape():
    assert bbox_around((0, 5, 9), (1, 2, 3), (10, 10, 10)) == ((0, 2), (3, 8), (6, 10))
    assert index_in_shape((0, 9, 3), (1, 10, 4)) and not index_in_shape((1, 0, 0), (1, 10, 4))
    assert not index_in_shape((0, -1, 0), (1, 10, 4))


def test_union_bbox_ignores_boxes_without_voxels():
    a, b = ((2, 4), (0, 3), (5, 6)), ((1, 2), (4, 8), (0, 1))
    assert union_bbox(a, b) == ((1, 4), (0, 8), (0, 6))
    flat = ((7, 7), (0, 100), (0, 100))  # empty along k: no voxel, so it must not grow the union
    assert union_bbox(a, flat) == a and union_bbox(flat, b) == b


@settings(max_examples=60, deadline=None)
@given(geometries(), st.data())
def test_voxel_index_and_ras_round_trip(geometry, data):
    index = tuple(data.draw(st.integers(0, n - 1)) for n in geometry.shape_kji)
    point = geometry.index_to_ras(index)
    assert geometry.nearest_index_kji(point) == index
    # Far outside: clamped onto the volume's nearest voxel along each index axis.
    ijk_far = np.array(index[::-1], float) + np.array([-1e3, 1e3, 0.0])
    far = geometry.nearest_index_kji(geometry.ijk_to_ras_points(ijk_far)[0])
    assert far == (index[0], geometry.shape_kji[1] - 1, 0)


def test_lps_to_ras_takes_one_simpleitk_point_as_the_readme_does():
    image = sitk.Image(40, 30, 20, sitk.sitkInt16)
    image.SetOrigin((12.5, -171.0, -418.0))
    image.SetSpacing((0.8, 0.8, 5.0))
    point_lps = image.TransformContinuousIndexToPhysicalPoint((7, 11, 13))  # a tuple, as SimpleITK returns
    point_ras = lps_to_ras(point_lps)
    assert point_ras.shape == (3,) and point_ras[2] == point_lps[2] and point_ras[0] == -point_lps[0]
    np.testing.assert_allclose(VolumeGeometry.from_sitk(image).ras_to_ijk(point_ras)[0], [7, 11, 13], atol=1e-9)
    np.testing.assert_array_equal(ras_to_lps(point_ras), point_lps)
