"""The click simulator's ROI placement (the rest of :mod:`SAMVolSegmentLib.engine.clicks` is tested with the
evaluation protocol in test_evaluation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from SAMVolSegmentLib.engine import clicks
from SAMVolSegmentLib.engine.clicks import deepest_point_roi
from SAMVolSegmentLib.engine.geometry import RoiWindow
from SAMVolSegmentLib.tools import evaluation, training


def test_one_click_simulator_for_evaluation_and_training():
    # evaluation re-exports the clicks module's functions (no second copy), and training's episode clicks
    # come from it: a simulated click on the low-res grid is the evaluation's next_click there.
    assert evaluation.next_click is clicks.next_click and evaluation.deepest_point is clicks.deepest_point
    target = np.zeros((8, 8, 8), np.float32)
    target[1:7, 1:7, 1:7] = 1.0
    prediction = np.zeros((8, 8, 8), bool)
    prediction[1:7, 1:7, 1:4] = True
    rng = np.random.default_rng(0)
    point, label = training.simulate_click(target, prediction, rng, image_size=64)
    index, positive = clicks.next_click(target > 0.5, prediction, (1.0, 1.0, 1.0))
    assert label == int(positive) == 1
    expected = (np.asarray(index) + 0.5) * 8 - 0.5  # low-res voxel centre in ROI voxels
    assert np.all(np.abs(point - expected) <= 4.0)  # training jitters by up to half a low-res voxel


def test_deepest_point_roi_is_the_low_res_centre_in_roi_voxels():
    mask_low = np.zeros((32, 32, 32), bool)
    mask_low[10:15, 20:25, 0:5] = True  # a 5³ cube: its deepest voxel is its centre (12, 22, 2)
    point = deepest_point_roi(mask_low, 128)
    # Low-res sample c covers ROI voxels 4c..4c+3, centred at 4c + 1.5 (align_corners=False).
    np.testing.assert_allclose(point, [12 * 4 + 1.5, 22 * 4 + 1.5, 2 * 4 + 1.5])
    assert deepest_point_roi(np.zeros((32, 32, 32), bool), 128) is None


@pytest.mark.parametrize("low", [16, 32])
def test_deepest_point_roi_agrees_with_the_roi_low_res_affine(low):
    roi = RoiWindow((3, -4, 5), 128, (1.0, 2.0, 3.0), 1.5)
    mask_low = np.zeros((low,) * 3, bool)
    mask_low[low // 2, 1, low - 2] = True
    point_roi = deepest_point_roi(mask_low, roi.size)
    expected_ras = roi.lowres_geometry(low).ijk_to_ras_points([[low // 2, 1, low - 2]])
    np.testing.assert_allclose(roi.roi_to_ras(point_roi), expected_ras, atol=1e-9)
