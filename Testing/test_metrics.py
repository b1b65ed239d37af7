"""Metrics: NSD on the corner grid (hand-computed cases, brute force, properties, the challenge's values), AUC."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import cumulative_trapezoid
from scipy.spatial.distance import cdist

from SAMVolSegmentLib.engine.metrics import corner_surface, interaction_auc, nsd

SPACINGS = st.tuples(*[st.sampled_from([0.4, 1.0, 2.5])] * 3)


def _voxel(shape, index):
    mask = np.zeros(shape, bool)
    mask[index] = True
    return mask


# ------------------------------------------------------------------ hand-computed
def test_nsd_of_two_single_voxels():
    # Each voxel's 8 corners carry 3 quarter faces each. Shifted by 3 voxels along i, the far corners (i = 0
    # for the first voxel) are 3 voxels from the other's nearest corners, the near ones 2.
    a, b = _voxel((3, 3, 8), (1, 1, 0)), _voxel((3, 3, 8), (1, 1, 3))
    assert nsd(a, b, (1.0, 1.0, 1.0)) == pytest.approx(0.5)  # 3 mm fails, 2 mm passes: half of each surface
    assert nsd(a, b, (1.0, 1.0, 0.6)) == pytest.approx(1.0)  # 1.8 mm passes too
    assert nsd(a, b, (1.0, 1.0, 1.0), tolerance_mm=1.9) == pytest.approx(0.0)
    assert nsd(a, _voxel((3, 3, 8), (1, 1, 2)), (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    # Exactly at the tolerance counts as within, whatever the rounding: the far corners are 3 x 0.2 mm apart,
    # which the distance transform returns as 0.6000000000000001.
    c, d = _voxel((3, 9, 3), (1, 0, 1)), _voxel((3, 9, 3), (1, 3, 1))
    assert nsd(c, d, (1.0, 0.2, 1.0), tolerance_mm=0.6) == 1.0
    assert nsd(c, d, (1.0, 0.2, 1.0), tolerance_mm=0.59) == pytest.approx(0.5)
    # Two slices apart along k at 5 mm: the nearest corners are 5 mm apart.
    assert nsd(_voxel((4, 3, 3), (0, 1, 1)), _voxel((4, 3, 3), (2, 1, 1)), (5.0, 1.0, 1.0)) == 0.0


def test_nsd_of_two_shifted_cubes():
    a = np.zeros((9, 9, 12), bool)
    a[3:6, 3:6, 1:4] = True
    b = np.roll(a, 3, axis=2)  # touching face to face
    # Unit voxels: the cube's 54 mm² of faces; the corners on the far face (i = 1) are 3 mm from the other
    # cube's surface and carry that face's 9 mm² plus half of the 12 side faces next to it: 15 mm².
    assert nsd(a, b, (1.0, 1.0, 1.0)) == pytest.approx(39 / 54)
    # 0.9 mm along i: faces normal to j and k shrink to 0.9 mm² (area 50.4 mm²); the far face's corners are
    # 2.7 mm away and carry 9 + 12 * 0.9 / 2 = 14.4 mm²; the next layer (1.8 mm) passes.
    assert nsd(a, b, (1.0, 1.0, 0.9)) == pytest.approx(36 / 50.4)
    assert nsd(a, b, (1.0, 1.0, 0.6)) == pytest.approx(1.0)


def test_nsd_empty_and_identical():
    a = np.zeros((6, 6, 6), bool)
    b = a.copy()
    b[1:4, 2:5, 1:3] = True
    assert nsd(a, a, (1, 1, 1)) == 1.0
    assert nsd(a, b, (1, 1, 1)) == 0.0 and nsd(b, a, (1, 1, 1)) == 0.0
    assert nsd(b, b, (3.0, 0.5, 0.5)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        nsd(b, b[:-1], (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(b, b, (1, 1, 1), tolerance_mm=-1)


@pytest.mark.parametrize(("spacing", "challenge"), [
    ((2.5, 0.8, 0.8), 0.8571), ((1.0, 1.0, 1.0), 0.8331), ((3.0, 3.0, 3.0), 0.3293),
])
def test_nsd_is_close_to_the_challenges_surface_dice(spacing, challenge):
    # Reference values: the challenge's SurfaceDice.py (compute_surface_dice_at_tolerance, 2 mm) on these
    # two balls, run outside this repository. Its marching-cubes area weights differ from our face areas on
    # slanted surfaces; the metrics module documents a difference of at most ~0.02.
    k, j, i = np.indices((24, 40, 40))

    def ball(ck, cj, ci, radius):
        return ((k - ck) * spacing[0]) ** 2 + ((j - cj) * spacing[1]) ** 2 + ((i - ci) * spacing[2]) ** 2 <= radius**2

    assert nsd(ball(12, 20, 20, 10), ball(12, 22, 21, 9), spacing) == pytest.approx(challenge, abs=0.015)


# ------------------------------------------------------------------ brute force and properties
def _brute_force_surface(mask, spacing):
    """Corner points (mm) and areas from an explicit walk over every voxel face between inside and outside."""
    padded = np.pad(mask, 1)
    face_mm2 = (spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1])
    weights = {}
    for axis in range(3):
        lo = [slice(None, -1) if a == axis else slice(None) for a in range(3)]
        hi = [slice(1, None) if a == axis else slice(None) for a in range(3)]
        for voxel in np.argwhere(padded[tuple(lo)] != padded[tuple(hi)]):  # face between voxel and voxel+axis
            others = [a for a in range(3) if a != axis]
            for du in (0, 1):
                for dv in (0, 1):
                    corner = voxel.copy()  # corner index c sits between padded voxels c and c + 1 ...
                    corner[others[0]] += du
                    corner[others[1]] += dv
                    corner[axis] += 1  # ... and this face lies between padded voxels v and v + 1 along axis
                    key = tuple(int(c) - 1 for c in corner)  # corner grid of the unpadded mask
                    weights[key] = weights.get(key, 0.0) + face_mm2[axis] / 4
    keys = sorted(weights)
    return np.array(keys, dtype=np.float64) * spacing, np.array([weights[k] for k in keys])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS, st.sampled_from([0.5, 2.0, 4.0]))
def test_nsd_matches_brute_force(seed, spacing, tolerance):
    rng = np.random.default_rng(seed)
    a, b = rng.random((2, 5, 6, 7)) > 0.7
    if not a.any() or not b.any():
        return
    points_a, area_a = _brute_force_surface(a, spacing)
    points_b, area_b = _brute_force_surface(b, spacing)
    distances = cdist(points_a, points_b)
    limit = tolerance + 1e-9  # exact ties (5 x 0.4 mm = 2 mm) count as within, whatever the rounding
    within = area_a[distances.min(axis=1) <= limit].sum() + area_b[distances.min(axis=0) <= limit].sum()
    expected = within / (area_a.sum() + area_b.sum())
    assert nsd(a, b, spacing, tolerance) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS)
def test_corner_surface_area_is_the_face_area(seed, spacing):
    mask = np.random.default_rng(seed).random((4, 5, 6)) > 0.5
    on_surface, area = corner_surface(mask, spacing)
    padded = np.pad(mask, 1)
    face_mm2 = (spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1])
    faces = sum(int(np.count_nonzero(np.diff(padded, axis=axis))) * face_mm2[axis] for axis in range(3))
    assert area.sum() == pytest.approx(faces)
    assert np.array_equal(on_surface, area > 0)
    assert on_surface.shape == tuple(n + 1 for n in mask.shape)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), SPACINGS)
def test_nsd_properties(seed, spacing):
    rng = np.random.default_rng(seed)
    a, b = rng.random((2, 6, 6, 6)) > 0.6
    if not a.any() or not b.any():
        return
    value = nsd(a, b, spacing)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(nsd(b, a, spacing), abs=1e-12)
    assert nsd(a, a, spacing) == 1.0
    assert nsd(a, b, spacing, 0.5) <= nsd(a, b, spacing, 1.5) + 1e-12 <= nsd(a, b, spacing, 3.0) + 2e-12
    # Scaling spacing and tolerance together changes nothing.
    assert nsd(a, b, tuple(2 * s for s in spacing), 4.0) == pytest.approx(nsd(a, b, spacing, 2.0), abs=1e-12)


def test_nsd_of_a_mask_in_a_large_volume_uses_only_its_box():
    a = np.zeros((60, 200, 200), bool)
    a[30:33, 100:110, 50:58] = True
    b = np.roll(a, 1, axis=1)
    small = nsd(a[25:40, 95:120, 45:65], b[25:40, 95:120, 45:65], (2.0, 0.7, 0.7))
    assert nsd(a, b, (2.0, 0.7, 0.7)) == pytest.approx(small, abs=1e-12)


# ------------------------------------------------------------------ AUC
def test_interaction_auc_is_the_challenges_trapezoid_over_the_click_steps():
    scores = [0.2, 0.5, 0.6, 0.65, 0.7, 0.9]  # box, then 5 clicks
    # The challenge: integrate.cumulative_trapezoid(np.array(dscs[-n_clicks:]), np.arange(n_clicks))[-1]
    expected = cumulative_trapezoid(np.array(scores[-5:]), np.arange(5))[-1]
    assert interaction_auc(scores, 5) == pytest.approx(expected)
    assert interaction_auc(scores, 5) == pytest.approx(0.55 + 0.625 + 0.675 + 0.8)
    assert interaction_auc([0.0] + [1.0] * 5, 5) == 4.0  # perfect clicks: 4, the box step does not count
    assert interaction_auc([1.0, 0.5], 1) == 0.0
    with pytest.raises(ValueError, match="num_steps"):
        interaction_auc([0.5] * 3, 4)
