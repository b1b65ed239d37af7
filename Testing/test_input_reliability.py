"""Image headers and voxel values that used to give wrong masks or misleading messages (issue 14: 6, 14)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from SAMVolSegmentLib.engine.geometry import VolumeGeometry
from SAMVolSegmentLib.engine.preprocessing import load_volume, read_image
from SAMVolSegmentLib.errors import InvalidImageError


def image_with(direction=None, spacing=(1.0, 1.0, 1.0), array=None) -> sitk.Image:
    if array is None:
        array = np.random.default_rng(0).normal(0, 1, (6, 7, 8)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -4.0, 5.0))
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return image


# ---------------------------------------------------------------- 6: non-unit direction columns
@pytest.mark.parametrize("direction", [(2, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, 0.5, 0, 0, 0, 1),
                                       (1, 0, 0, 0, 1, 0, 0, 0, 1.01)])
def test_a_direction_with_non_unit_columns_is_refused(direction):
    image = image_with(direction)
    with pytest.raises(InvalidImageError, match="direction"):
        VolumeGeometry.from_sitk(image)
    with pytest.raises(InvalidImageError, match="direction"):
        load_volume(image)


@settings(max_examples=40, deadline=None)
@given(
    quaternion=st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1),
    spacing=st.lists(st.floats(0.05, 20.0), min_size=3, max_size=3),
    flip=st.sampled_from([1.0, -1.0]),
)
def test_the_mask_header_is_the_input_header(quaternion, spacing, flip):
    """Any orthonormal direction (rotations and reflections) and spacing survives image → geometry → image."""
    direction = Rotation.from_quat(quaternion).as_matrix() @ np.diag([1.0, 1.0, flip])
    image = image_with(direction, tuple(spacing))
    out = VolumeGeometry.from_sitk(image).to_sitk_image(np.zeros((6, 7, 8), np.uint8))
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-9)


# ---------------------------------------------------------------- 14: values float32 cannot hold
def test_a_finite_huge_voxel_is_not_called_nan():
    array = np.zeros((6, 7, 8), np.float64)
    array[1, 2, 3] = 1e300
    with pytest.raises(InvalidImageError) as info:
        load_volume(image_with(array=array))
    message = str(info.value)
    assert "NaN" not in message and "1e+300" in message and "float32" in message


def test_values_that_differ_only_beyond_float32_precision_are_not_called_constant():
    array = np.full((6, 7, 8), 1e9, np.float64)
    array[0, 0, 0] = 1e9 + 1
    with pytest.raises(InvalidImageError) as info:
        load_volume(image_with(array=array))
    message = str(info.value)
    assert "constant" not in message and "precision" in message


def test_real_nan_and_constant_messages_are_unchanged():
    array = np.zeros((6, 7, 8), np.float32)
    array[0, 0, 0] = np.nan
    with pytest.raises(InvalidImageError, match="1 NaN/inf voxels"):
        load_volume(image_with(array=array))
    with pytest.raises(InvalidImageError, match="constant"):
        load_volume(image_with(array=np.full((6, 7, 8), 7.0, np.float32)))


# ---------------------------------------------------------------- 14: a folder given as the image
def test_a_folder_without_dicom_is_one_message_and_no_itk_warning(tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(InvalidImageError, match="is a folder without DICOM series"):
        read_image(tmp_path)
    assert "WARNING" not in capfd.readouterr().err  # GDCM's "No Series were found" (C++ stderr) is not shown
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # ITK's warnings are back on for everything else
