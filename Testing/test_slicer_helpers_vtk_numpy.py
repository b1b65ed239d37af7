"""vtkImageData <-> numpy region helpers of the Slicer module, with real VTK from PyPI (no Slicer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SAMVolSegment"))

pytest.importorskip("vtkmodules")
from SAMVolSegmentSlicerLib import vtk_numpy as vn


def test_extent_bbox_round_trip_and_empty_extent():
    bbox = ((2, 5), (3, 7), (4, 9))
    assert vn.extent_from_bbox(bbox) == (4, 8, 3, 6, 2, 4)
    assert vn.bbox_from_extent(vn.extent_from_bbox(bbox)) == bbox
    assert vn.bbox_is_empty(vn.bbox_from_extent((0, -1, 0, -1, 0, -1)))


def test_array_order_is_kji_with_i_fastest():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 3, size=(4, 5, 6), dtype=np.uint8)
    image = vn.image_from_array(array, origin_kji=(10, 20, 30))
    assert image.GetExtent() == (30, 35, 20, 24, 10, 13)
    assert image.GetDimensions() == (6, 5, 4)
    # VTK's own accessor takes (i, j, k) grid indices.
    assert image.GetScalarComponentAsDouble(30 + 5, 20 + 1, 10 + 2, 0) == array[2, 1, 5]
    assert np.array_equal(vn.array_from_image(image), array)


def test_read_region_zero_fills_outside_extent_and_selects_label():
    array = np.zeros((3, 3, 3), np.uint8)
    array[1, 1, 1] = 2
    array[0, 0, 0] = 5
    image = vn.image_from_array(array, origin_kji=(1, 1, 1))
    region = vn.read_region(image, ((0, 4), (0, 4), (0, 4)))
    assert region.shape == (4, 4, 4)
    assert region[2, 2, 2] == 2 and region[1, 1, 1] == 5 and region.sum() == 7
    as_label = vn.read_region(image, ((0, 4), (0, 4), (0, 4)), label_value=2)
    assert as_label.dtype == bool and as_label.sum() == 1 and as_label[2, 2, 2]
    # A box entirely outside reads as zeros.
    assert not vn.read_region(image, ((10, 12), (0, 1), (0, 1))).any()



def test_nonzero_bbox_with_origin():
    array = np.zeros((5, 6, 7), np.uint8)
    array[1:3, 2, 4:6] = 1
    assert vn.nonzero_bbox(array, (10, 0, 100)) == ((11, 13), (2, 3), (104, 106))
    assert vn.bbox_is_empty(vn.nonzero_bbox(np.zeros((2, 2, 2))))


def test_array_from_image_is_a_view():
    image = vn.image_from_array(np.zeros((2, 2, 2), np.uint8))
    vn.array_from_image(image)[1, 1, 1] = 9
    assert image.GetScalarComponentAsDouble(1, 1, 1, 0) == 9


def test_bbox_of_mask_is_the_tight_half_open_box():
    mask = np.zeros((6, 7, 8), np.uint8)
    assert vn.bbox_is_empty(vn.bbox_of_mask(mask))
    mask[1, 2, 3] = 1
    mask[4, 2, 7] = 2
    assert vn.bbox_of_mask(mask) == ((1, 5), (2, 3), (3, 8))
    box = vn.bbox_of_mask(mask)
    inside = mask[tuple(slice(lo, hi) for lo, hi in box)]
    assert np.count_nonzero(inside) == np.count_nonzero(mask)
