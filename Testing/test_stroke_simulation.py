"""Simulated lassos and scribbles (tools/stroke_simulation.py): geometry checked through the engine's own
stroke rasterisation (engine/strokes.py), on random blobs with anisotropic spacing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from SAMVolSegmentLib.engine.clicks import deepest_point
from SAMVolSegmentLib.engine.geometry import VolumeGeometry
from SAMVolSegmentLib.engine.metrics import dice
from SAMVolSegmentLib.engine.strokes import lasso_prompt, scribble_prompt
from SAMVolSegmentLib.errors import InvalidPromptError
from SAMVolSegmentLib.tools.stroke_simulation import (
    correction_scribble,
    largest_cross_section,
    outer_contour,
    simulate_lasso,
    simulate_scribble,
)

SPACINGS = st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 2.0, 3.0])] * 3)


def geometry_of(shape_kji, spacing_ijk, origin_ras=(-20.0, 13.0, 4.0)) -> VolumeGeometry:
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(spacing_ijk) @ np.diag([-1.0, -1.0, 1.0])  # an LPS-like image seen in RAS
    matrix[:3, 3] = origin_ras
    return VolumeGeometry(tuple(shape_kji), matrix)


def blob(seed: int, shape=(10, 40, 48), fraction=0.75) -> np.ndarray:
    """Random smooth blobs (several components, holes and concavities)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), (1.0, 3.0, 3.0))
    return field > np.quantile(field, fraction)


def drawn(geometry: VolumeGeometry, prompt) -> np.ndarray:
    full = np.zeros(geometry.shape_kji, bool)
    full[tuple(slice(a, b) for a, b in prompt.bbox_kji)] = prompt.voxels_kji
    return full


def section_of(region: np.ndarray, k: int) -> np.ndarray:
    labels, _ = ndimage.label(region[k], ndimage.generate_binary_structure(2, 1))
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ndimage.binary_fill_holes(labels == largest)


# ------------------------------------------------------------------ lasso
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS, st.sampled_from([0.6, 0.8, 0.9]))
def test_lasso_fills_the_largest_cross_section(seed, spacing, fraction):
    region = blob(seed, fraction=fraction)
    geometry = geometry_of(region.shape, spacing)
    lasso = simulate_lasso(region, geometry)
    assert lasso.kind == "lasso" and lasso.positive and len(lasso.points_ras) <= 64
    k = largest_cross_section(region)
    assert lasso.anchor_kji[0] == k
    filled = drawn(geometry, lasso_prompt(geometry, lasso.points_ras, True))
    assert not filled[np.arange(region.shape[0]) != k].any()  # one slice, the lasso's
    assert dice(filled[k], section_of(region, k)) >= 0.9


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS)
def test_unsimplified_lasso_outline_is_exact(seed, spacing):
    region = blob(seed, fraction=0.8)
    geometry = geometry_of(region.shape, spacing)
    lasso = simulate_lasso(region, geometry, max_vertices=100_000)
    filled = drawn(geometry, lasso_prompt(geometry, lasso.points_ras, True))
    k = lasso.anchor_kji[0]
    assert np.array_equal(filled[k], section_of(region, k))


def test_outline_goes_around_diagonal_contacts():
    section = np.zeros((7, 7), bool)
    section[1:3, 1:3] = True
    section[3:5, 3:5] = True  # touches the first square at one corner only (not 4-connected)
    section[1:5, 5] = True
    section[1, 3:5] = True  # ...but joined to it around the top right: one 4-connected region with a pocket
    # (the pocket reaches the outside diagonally: the outline goes into it, around one corner at a time)
    polygon = outer_contour(section)
    geometry = geometry_of((1, 7, 7), (1.0, 1.0, 1.0))
    points = np.stack([polygon[:, 1], polygon[:, 0], np.zeros(len(polygon))], axis=1)
    filled = drawn(geometry, lasso_prompt(geometry, geometry.ijk_to_ras_points(points), True))
    assert np.array_equal(filled[0], section)


def test_lasso_margin_and_jitter_are_flags_and_seeded():
    region = blob(3, fraction=0.8)
    geometry = geometry_of(region.shape, (0.8, 0.8, 3.0))
    exact = drawn(geometry, lasso_prompt(geometry, simulate_lasso(region, geometry).points_ras, True)).sum()
    wider = drawn(geometry, lasso_prompt(geometry, simulate_lasso(region, geometry, margin_voxels=1).points_ras,
                                         True)).sum()
    narrower = drawn(geometry, lasso_prompt(geometry, simulate_lasso(region, geometry, margin_voxels=-1).points_ras,
                                            True)).sum()
    assert narrower < exact < wider
    a = simulate_lasso(region, geometry, jitter_mm=1.0, seed=5).points_ras
    b = simulate_lasso(region, geometry, jitter_mm=1.0, seed=5).points_ras
    c = simulate_lasso(region, geometry, jitter_mm=1.0, seed=6).points_ras
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_lasso_of_an_empty_target_is_refused_with_the_fix():
    with pytest.raises(InvalidPromptError, match="check the label"):
        simulate_lasso(np.zeros((3, 5, 5), bool), geometry_of((3, 5, 5), (1.0, 1.0, 1.0)))


# ------------------------------------------------------------------ scribbles
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS, st.sampled_from([0.5, 0.75, 0.9, 0.97]))
def test_scribble_stays_inside_the_region_through_its_deepest_point(seed, spacing, fraction):
    region = blob(seed, fraction=fraction)
    geometry = geometry_of(region.shape, spacing)
    scribble = simulate_scribble(region, geometry, positive=False)
    assert scribble.kind == "scribble" and not scribble.positive
    assert scribble.anchor_kji == deepest_point(region, tuple(geometry.spacing[::-1]))
    index_kji = np.rint(geometry.ras_to_ijk(scribble.points_ras)[:, ::-1]).astype(int)
    assert region[tuple(index_kji.T)].all()  # every point in the region
    assert (index_kji[:, 0] == scribble.anchor_kji[0]).all()  # on the axial slice of the deepest point
    assert np.abs(index_kji - np.array(scribble.anchor_kji)).sum(axis=1).min() == 0  # through the deepest point
    voxels = drawn(geometry, scribble_prompt(geometry, scribble.points_ras, False))
    assert voxels.any() and not (voxels & ~region).any()  # it decides no voxel outside the region


def test_scribble_follows_the_long_axis_of_an_elongated_region():
    region = np.zeros((5, 40, 60), bool)
    region[1:4, 15:25, 5:55] = True  # 10 x 50 voxels in plane
    geometry = geometry_of(region.shape, (1.0, 1.0, 2.0))
    scribble = simulate_scribble(region, geometry)
    ijk = geometry.ras_to_ijk(scribble.points_ras)
    assert np.ptp(ijk[:, 0]) >= 40 and np.ptp(ijk[:, 1]) <= 2  # along i, one voxel inside the ends
    assert ijk[:, 0].min() >= 5.5 and ijk[:, 0].max() <= 53.5


def test_correction_scribble_sign_and_region():
    target = np.zeros((8, 30, 30), bool)
    target[2:6, 5:25, 5:25] = True
    geometry = geometry_of(target.shape, (1.0, 1.0, 2.5))
    assert correction_scribble(target, target, geometry) is None
    miss = target.copy()
    miss[2:6, 5:25, 5:12] = False  # 4 x 20 x 7 missed
    miss[0:2, 0:3, 0:3] = True  # small false positive
    scribble = correction_scribble(target, miss, geometry)
    assert scribble is not None and scribble.positive
    voxels = drawn(geometry, scribble_prompt(geometry, scribble.points_ras, True))
    assert voxels.any() and not (voxels & ~(target & ~miss)).any()
    over = target.copy()
    over[2:6, 25:30, 0:30] = True  # false positive 4 x 5 x 30
    scribble = correction_scribble(target, over, geometry)
    assert scribble is not None and not scribble.positive
    voxels = drawn(geometry, scribble_prompt(geometry, scribble.points_ras, False))
    assert voxels.any() and not (voxels & target).any()


def test_a_thin_region_gets_a_scribble_inside_it():
    region = np.zeros((3, 20, 20), bool)
    region[1, 10, 3:17] = True  # one voxel thick
    geometry = geometry_of(region.shape, (1.0, 1.0, 1.0))
    scribble = simulate_scribble(region, geometry)
    voxels = drawn(geometry, scribble_prompt(geometry, scribble.points_ras, True))
    assert voxels.any() and not (voxels & ~region).any()


def test_lasso_and_scribble_on_an_oblique_volume():
    region = blob(11, fraction=0.8)
    angle = np.radians(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotation = rotation @ np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    geometry = VolumeGeometry(region.shape, matrix)
    lasso = simulate_lasso(region, geometry)
    k = lasso.anchor_kji[0]
    filled = drawn(geometry, lasso_prompt(geometry, lasso.points_ras, True))
    assert dice(filled[k], section_of(region, k)) >= 0.9 and filled.sum() == filled[k].sum()
    scribble = simulate_scribble(region, geometry)
    voxels = drawn(geometry, scribble_prompt(geometry, scribble.points_ras, True))
    assert voxels.any() and not (voxels & ~region).any()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS)
def test_correction_scribble_lies_in_the_largest_error_with_its_sign(seed, spacing):
    from SAMVolSegmentLib.engine.clicks import largest_error

    target = blob(seed, fraction=0.8)
    prediction = blob(seed + 1, fraction=0.8)  # another random prediction: misses and false positives
    geometry = geometry_of(target.shape, spacing)
    scribble = correction_scribble(target, prediction, geometry)
    if np.array_equal(target, prediction):
        assert scribble is None
        return
    component, box = largest_error(target, prediction)
    error = np.zeros(target.shape, bool)
    error[box] = component
    assert scribble.positive == bool(target[error].all()) and scribble.positive != bool(prediction[error].any())
    index_kji = np.rint(geometry.ras_to_ijk(scribble.points_ras)[:, ::-1]).astype(int)
    assert error[tuple(index_kji.T)].all()
    voxels = drawn(geometry, scribble_prompt(geometry, scribble.points_ras, scribble.positive))
    assert voxels.any() and not (voxels & ~error).any()
