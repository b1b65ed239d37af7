"""The demo's CT phantom: deterministic, scanner-like geometry, CT intensities, a hard but fair target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SAMVolSegmentLib.tools.phantom import (
    BODY_CENTRE_LPS,
    DEFAULT_SPACING,
    FIELD_OF_VIEW_MM,
    PHANTOM_LABELS,
    make_phantom,
    write_phantom,
)

COARSE = (2.0, 2.0, 5.0)  # same anatomy, 6x fewer voxels than the demo's 0.8 mm


@pytest.fixture(scope="module")
def coarse():
    return make_phantom(COARSE)


def arrays(phantom):
    return sitk.GetArrayFromImage(phantom.image), sitk.GetArrayFromImage(phantom.label)


def test_same_seed_same_phantom_other_seed_other_phantom(coarse):
    again = make_phantom(COARSE)
    for first, second in zip(arrays(coarse), arrays(again)):
        assert np.array_equal(first, second)
    other_image, other_label = arrays(make_phantom(COARSE, seed=1))
    image, label = arrays(coarse)
    assert not np.array_equal(image, other_image)
    spleen, other_spleen = label == 1, other_label == 1
    assert not np.array_equal(spleen, other_spleen)  # the surface deformation follows the seed
    assert (spleen & other_spleen).sum() / spleen.sum() > 0.8  # ... but the organ stays where it is


def test_geometry_is_a_scanners(coarse):
    image, label = coarse.image, coarse.label
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, COARSE))
    np.testing.assert_allclose(image.GetSpacing(), COARSE)
    assert np.linalg.norm(image.GetOrigin()) > 100  # a table position, not (0, 0, 0)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    np.testing.assert_allclose(centre, BODY_CENTRE_LPS, atol=1e-6)
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(image, get)() == getattr(label, get)()


def test_default_spacing_is_anisotropic_ct():
    assert DEFAULT_SPACING[0] == DEFAULT_SPACING[1] < DEFAULT_SPACING[2]


def test_intensities_are_portal_venous_ct(coarse):
    image, label = arrays(coarse)
    median = {name: float(np.median(image[label == value])) for name, value in PHANTOM_LABELS.items()}
    assert 105 <= median["spleen"] <= 135
    assert 95 <= median["liver"] <= 115 and median["liver"] < median["spleen"]
    assert 150 <= median["aorta"] <= 185
    assert median["vertebra"] > 150
    assert image[0, :3, :3].mean() < -950  # air in the corner of the field of view
    body = ndimage.binary_fill_holes(image > -500, structure=np.ones((1, 3, 3)))
    fat = (image > -150) & (image < -50) & body
    assert fat.sum() > 0.15 * body.sum()  # subcutaneous and visceral fat
    noise = image[0, :20, :20].std()
    assert 8 <= noise <= 20  # the default 14 HU of noise (air is flat, so this is the noise alone)


def test_target_is_one_realistic_organ_touching_look_alikes(coarse):
    image, label = arrays(coarse)
    spleen = label == PHANTOM_LABELS["spleen"]
    volume_ml = spleen.sum() * np.prod(COARSE) / 1000
    assert 120 <= volume_ml <= 300  # inside the slab; an adult spleen is ~150-250 mL
    _, components = ndimage.label(spleen, structure=np.ones((3, 3, 3)))
    assert components == 1
    touching = ndimage.binary_dilation(spleen, structure=np.ones((1, 3, 3)), iterations=2) & ~spleen
    assert (label[touching] == PHANTOM_LABELS["left_kidney"]).sum() > 20  # a similar-intensity neighbour
    assert (image[touching] > 350).sum() > 5  # a rib
    assert (image[touching] > 140).sum() > 30  # kidney cortex / splenic vein: a leak path for region growing


def test_anatomy_does_not_depend_on_the_voxel_size(coarse):
    finer = make_phantom((1.0, 1.0, 5.0), noise_hu=0.0)
    for name in ("spleen", "liver", "left_kidney"):
        value = PHANTOM_LABELS[name]
        coarse_ml = (arrays(coarse)[1] == value).sum() * np.prod(COARSE)
        fine_ml = (arrays(finer)[1] == value).sum() * 5.0
        assert fine_ml == pytest.approx(coarse_ml, rel=0.03), name


def test_boundaries_have_partial_volume():
    image, label = arrays(make_phantom(COARSE, noise_hu=0.0))
    spleen = label == PHANTOM_LABELS["spleen"]
    edge = spleen & ~ndimage.binary_erosion(spleen, structure=np.ones((1, 3, 3)))
    inner = ndimage.binary_erosion(spleen, structure=np.ones((3, 3, 3)), iterations=2)
    # Without noise the interior is ~120 HU; boundary voxels mix with fat (-90) or brighter neighbours.
    assert np.abs(image[inner] - 120).max() < 25
    assert np.mean(np.abs(image[edge] - 120) > 25) > 0.3


def test_write_phantom_is_an_evaluation_case(tmp_path):
    from SAMVolSegmentLib.engine.preprocessing import read_image_label
    from SAMVolSegmentLib.tools.evaluation import discover_cases

    image_path, label_path = write_phantom(tmp_path / "phantom", spacing=(4.0, 4.0, 5.0))
    image, label = read_image_label(image_path, label_path)
    assert image.GetSize() == (90, 70, 32) and set(np.unique(label)) == {0, *PHANTOM_LABELS.values()}
    names = json.loads((tmp_path / "phantom" / "labels.json").read_text())
    assert names == {str(v): k for k, v in PHANTOM_LABELS.items()}
    assert [case.name for case in discover_cases(tmp_path)] == ["phantom"]


@pytest.mark.parametrize("kwargs", [{"spacing": (1, 1)}, {"spacing": (1, 0, 1)}, {"noise_hu": -1.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_phantom(**kwargs)
