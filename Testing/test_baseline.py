"""The region-growing baseline: seeds, negative cuts, hole filling, determinism, bad clicks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SAMVolSegmentLib.errors import InvalidPromptError
from SAMVolSegmentLib.tools.baseline import RegionGrowing, region_grow
from SAMVolSegmentLib.tools.evaluation import dice


def make_image(array_kji: np.ndarray, spacing=(1.0, 1.0, 2.0), noise=5.0) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((array_kji + rng.normal(0, noise, array_kji.shape)).astype(np.float32))
    image.SetSpacing(spacing)
    return image


def two_boxes():
    """Box A (value 200) and box B (value 100) apart, in a 0 background: (array, mask A, mask B)."""
    array = np.zeros((20, 40, 60), np.float32)
    a = np.zeros(array.shape, bool)
    b = np.zeros(array.shape, bool)
    a[4:16, 8:32, 6:26] = True
    b[4:16, 8:32, 34:54] = True
    array[a], array[b] = 200, 100
    return array, a, b


def test_grows_the_clicked_structure_only():
    array, a, b = two_boxes()
    mask = region_grow(make_image(array), [((10, 20, 16), True)])
    assert mask.dtype == np.uint8 and mask.shape == array.shape
    assert dice(mask, a) > 0.85
    assert not (mask.astype(bool) & b).any()


def test_no_positive_click_gives_an_empty_mask():
    array, _, _ = two_boxes()
    assert not region_grow(make_image(array), [((10, 20, 16), False)]).any()
    assert not region_grow(make_image(array), []).any()


def test_negative_click_cuts_a_leak():
    array, a, b = two_boxes()
    array[4:16, 8:32, 26:34] = 200  # a thick bridge: A and B(now 200) grow together
    array[b] = 200
    image = make_image(array)
    grower = RegionGrowing(image)
    leaked = grower.segment([((10, 20, 16), True)])
    assert leaked[10, 20, 44]  # the positive click took B as well
    cut = grower.segment([((10, 20, 16), True), ((10, 20, 50), False)])
    assert not cut[10, 20, 50] and cut[10, 20, 16]
    assert (cut.astype(bool) & b).sum() < 0.5 * b.sum()
    assert cut.sum() < leaked.sum()


def test_holes_are_filled():
    array = np.zeros((24, 40, 40), np.float32)
    k, j, i = np.indices(array.shape)
    radius = np.sqrt(((k - 12) * 2.0) ** 2 + (j - 20) ** 2 + (i - 20) ** 2)
    array[radius <= 15] = 200
    array[radius <= 5] = 0  # a dark core inside the bright ball
    mask = region_grow(make_image(array), [((12, 20, 31), True)])
    assert mask[12, 20, 20] == 1  # the core is filled


def test_deterministic_and_independent_of_click_order():
    array, a, b = two_boxes()
    image = make_image(array)
    clicks = [((10, 20, 16), True), ((10, 20, 44), True), ((5, 10, 30), False)]
    first = region_grow(image, clicks)
    assert np.array_equal(first, region_grow(image, clicks[::-1]))
    assert np.array_equal(first, RegionGrowing(image).segment(clicks))


def test_click_outside_the_volume_is_refused():
    array, _, _ = two_boxes()
    with pytest.raises(InvalidPromptError, match="outside"):
        region_grow(make_image(array), [((10, 20, 60), True)])


def test_phantom_spleen_one_click(tmp_path):
    from SAMVolSegmentLib.tools.evaluation import Case, first_click, load_target
    from SAMVolSegmentLib.tools.phantom import PHANTOM_LABELS, write_phantom

    image_path, label_path = write_phantom(tmp_path, spacing=(1.6, 1.6, 5.0))
    image, target = load_target(Case("spleen", image_path, label_path, PHANTOM_LABELS["spleen"]))
    spacing_kji = image.GetSpacing()[::-1]
    mask = region_grow(image, [first_click(target, spacing_kji)])
    # The spleen is homogeneous, so growing finds nearly all of it; its splenic vein and kidney have similar
    # intensities and touch it, so growing also leaks (that is what the demo's phantom is built to show).
    assert (mask & (target > 0)).sum() / target.sum() > 0.9
    assert dice(mask, target) < 0.8
