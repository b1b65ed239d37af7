"""Preprocessing: reproduces the reference pipeline, keeps more in the round trip, and rejects bad volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SAMVolSegmentLib.engine.geometry import ModelGrid, RoiWindow, VolumeGeometry
from SAMVolSegmentLib.engine.preprocessing import (
    NORMALIZATION_ROBUST_INSIDE,
    ModelVolume,
    crop_roi,
    crop_roi_with_inside,
    extract_roi,
    load_volume,
    normalize_roi,
    paste_back_logits,
    read_image,
    resample_to_model_grid,
)
from SAMVolSegmentLib.errors import InvalidImageError

FIXTURE_CASES = ["ct_ibsi_sts003_sarcoma", "mr_msd_hippocampus_003", "mr_sct_t2_spinalcord"]


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_roi_reproduces_reference_preprocessing(case, shared_data_dir, fixtures_dir):
    reference = np.load(fixtures_dir / "reference_preprocessing.npz")
    meta = json.loads((fixtures_dir / "reference_preprocessing.json").read_text())[case]
    model_volume = resample_to_model_grid(load_volume(read_image(shared_data_dir / case / "image.nii.gz")))
    assert list(model_volume.grid.shape_model) == meta["canonical_shape"]
    roi_image, roi = extract_roi(model_volume, meta["roi_centre_ras"])
    np.testing.assert_allclose(roi.affine_ras, meta["roi_affine_ras"], atol=1e-3)
    expected = reference[f"{case}__roi_image"]
    assert np.corrcoef(roi_image.ravel(), expected.ravel())[0, 1] >= 0.99
    # Axis mistakes are caught: the same crop with dim0/dim1 swapped (~0.5), or R flipped as in LPS (0.64-0.89:
    # brain and cord are nearly left-right symmetric), fails the 0.99 bound clearly.
    assert np.corrcoef(roi_image.transpose(1, 0, 2).ravel(), expected.ravel())[0, 1] < 0.9
    assert np.corrcoef(roi_image[::-1].ravel(), expected.ravel())[0, 1] < 0.95


def test_normalize_roi_is_the_reference_rule():
    roi = np.zeros((4, 4, 4), np.float32)
    roi[:2] = np.arange(32, dtype=np.float32).reshape(2, 4, 4) + 1
    out = normalize_roi(roi)
    fg = roi[roi > 0]
    np.testing.assert_allclose(out, (roi - fg.mean()) / fg.std(), rtol=1e-5)
    assert np.all(np.isfinite(normalize_roi(np.zeros((4, 4, 4)))))
    assert np.all(np.isfinite(normalize_roi(np.full((4, 4, 4), 7.0))))


@pytest.mark.parametrize("shift, scale", [(-1000.0, 1.0), (500.0, 1.0), (-300.0, 0.5), (0.0, 4.0)])
def test_robust_normalisation_ignores_an_intensity_shift_and_scale(shift, scale):
    rng = np.random.default_rng(0)
    roi = rng.normal(-100.0, 30.0, (16, 16, 16)).astype(np.float32)
    roi[4:10, 4:10, 4:10] += 160.0
    roi[0, 0, 0] = 3000.0  # an outlier (metal): clipped, so it moves neither the mean nor the spread much
    inside = np.ones(roi.shape, bool)
    inside[:, :, 12:] = False  # padding beyond the volume
    roi[~inside] = 0.0
    reference = normalize_roi(roi, NORMALIZATION_ROBUST_INSIDE, inside)
    moved = np.where(inside, roi * scale + shift, 0.0)
    np.testing.assert_allclose(normalize_roi(moved, NORMALIZATION_ROBUST_INSIDE, inside), reference, atol=2e-4)
    values = reference[inside]
    assert abs(values.mean()) < 0.05 and 0.9 < values.std() < 1.1
    assert np.all(reference[~inside] == values.min())  # the padding reads as the darkest clipped value
    if shift:  # the reference rule is not: a shift moves voxels across 0 and changes its statistics
        assert not np.allclose(normalize_roi(moved), normalize_roi(roi), atol=1e-2)


def test_padding_outside_the_volume_stays_out_of_the_robust_statistics():
    """A ROI overhanging the volume and an oblique volume's covering grid: only voxels inside the image count."""
    rng = np.random.default_rng(1)
    array = rng.normal(-500.0, 100.0, (20, 20, 20)).astype(np.float32)
    grid = ModelGrid(origin_ras=(0.0, 0.0, 0.0), shape_model=(20, 20, 20))
    roi = RoiWindow((-6, 0, 0), 16, grid.origin_ras, grid.spacing)
    raw, inside = crop_roi_with_inside(ModelVolume(array, grid), roi)
    assert inside[6:].all() and not inside[:6].any()
    out = crop_roi(ModelVolume(array, grid), roi, normalization=NORMALIZATION_ROBUST_INSIDE)
    expected = normalize_roi(raw[6:], NORMALIZATION_ROBUST_INSIDE)
    np.testing.assert_allclose(out[6:], expected, atol=1e-5)
    # Oblique volume: the covering model grid has voxels outside the image, which resampling marks.
    angle = np.deg2rad(30)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    ramp = np.linspace(-900.0, -700.0, 30, dtype=np.float32)[None, None, :].repeat(10, 0).repeat(30, 1)
    model_volume = resample_to_model_grid(load_volume(ramp, ijk_to_ras))
    assert model_volume.inside_model is not None and 0.3 < model_volume.inside_model.mean() < 0.95
    assert np.all(model_volume.array_model[~model_volume.inside_model] == 0.0)
    inside_values = model_volume.array_model[model_volume.inside_model]
    assert inside_values.min() >= -900.001 and inside_values.max() <= -699.999


def _image(array) -> sitk.Image:
    return sitk.GetImageFromArray(np.asarray(array))


def _ramp() -> np.ndarray:
    return np.arange(27, dtype=np.float64).reshape(3, 3, 3)


def _matrix(column: int, value) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, column] = value
    return matrix


# (input maker, what the message must say is wrong, how it must say to fix it). SimpleITK itself refuses zero or
# negative spacing and singular directions, so those reach us only as a 4×4 matrix (Slicer's IJKToRAS).
BAD_INPUTS = {
    "2d": (lambda: (sitk.Image(4, 4, sitk.sitkFloat32), None), "2D", "give one 3D volume"),
    "4d": (lambda: (sitk.Image([3, 3, 3, 3], sitk.sitkFloat32), None), "4D", "extract one time point"),
    "vector": (lambda: (sitk.Image([3, 3, 3], sitk.sitkVectorFloat32, 3), None), "3 components", "extract one channel"),
    "array_2d": (lambda: (np.random.rand(3, 3), np.eye(4)), "shape", "give one 3D scalar volume"),
    "array_4d": (lambda: (np.random.rand(2, 3, 3, 3), np.eye(4)), "shape", "give one 3D scalar volume"),
    "no_matrix": (lambda: (_ramp(), None), "ijk_to_ras", "pass ijk_to_ras"),
    "nan": (lambda: (_image(np.where(_ramp() == 4, np.nan, _ramp())), None), "1 NaN/inf", "replace them"),
    "inf": (lambda: (_image(np.full((3, 3, 3), np.inf)), None), "27 NaN/inf", "replace them"),
    "empty": (lambda: (np.zeros((0, 3, 3)), np.eye(4)), "empty", "load an image"),
    "constant": (lambda: (_image(np.full((3, 3, 3), 5.0)), None), "constant", "load the intended image"),
    "complex": (lambda: (np.zeros((3, 3, 3), np.complex64), np.eye(4)), "complex64", "convert the image"),
    "zero_spacing": (lambda: (_ramp(), np.diag([1.0, 0.0, 1.0, 1.0])), "spacing", "fix the image header"),
    "singular_direction": (lambda: (_ramp(), _matrix(1, [1.0, 0.0, 0.0])), "direction", "fix the image header"),
    "non_finite_matrix": (lambda: (_ramp(), _matrix(0, [np.nan, 0.0, 0.0])), "finite", "check the image header"),
    "matrix_shape": (lambda: (_ramp(), np.eye(3)), "4×4", "check the image header"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_images_raise_errors_that_name_the_fix(name):
    make, problem, fix = BAD_INPUTS[name]
    image, matrix = make()
    with pytest.raises(InvalidImageError) as info:
        load_volume(image, matrix)
    message = str(info.value)
    assert problem in message and fix in message, message


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(InvalidImageError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(InvalidImageError, match="Cannot read"):
        read_image(bad)


def test_fingerprint_changes_with_content_and_geometry():
    array = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    a = load_volume(array, np.eye(4))
    edited = array.copy()
    edited[2, 2, 2] += 1
    assert load_volume(array, np.eye(4)).fingerprint == a.fingerprint
    assert load_volume(edited, np.eye(4)).fingerprint != a.fingerprint
    assert load_volume(array, np.diag([2.0, 1, 1, 1])).fingerprint != a.fingerprint


def _roi_as_volume(roi, flip_lps: bool) -> VolumeGeometry:
    """The ROI's own 1.5 mm grid as an original volume, stored RAS-style or LPS-style (i, j reversed)."""
    matrix = roi.affine_ras.copy()
    shape_kji = (roi.size,) * 3
    if flip_lps:
        matrix = matrix @ np.array([[-1, 0, 0, roi.size - 1], [0, -1, 0, roi.size - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    return VolumeGeometry.from_matrix(matrix, shape_kji)


@pytest.mark.parametrize("low", [32, 128])
@pytest.mark.parametrize("flip_lps", [False, True])
def test_paste_back_is_the_reference_upsampling_for_any_storage_order(low, flip_lps):
    """On the 128³ ROI's own grid, stored RAS-style or LPS-style, from 32³ or full-size logits, paste-back
    equals ``F.interpolate(size=128, trilinear, align_corners=False) > 0`` (the reference's final mask).
    (test_geometry covers the oblique path on small ROIs.)"""
    grid = ModelGrid((-90.0, 12.0, 40.5), (150, 140, 130))
    roi = RoiWindow.centred_at(grid, (5.0, 100.0, 120.0), 128)
    logits = torch.randn(1, 1, low, low, low, generator=torch.Generator().manual_seed(low))
    expected = F.interpolate(logits, size=128, mode="trilinear", align_corners=False)[0, 0].numpy() > 0
    geometry = _roi_as_volume(roi, flip_lps)
    update = paste_back_logits(logits[0, 0], roi, geometry)
    assert update.bbox_kji == ((0, 128), (0, 128), (0, 128))
    mask_model = update.mask.transpose(2, 1, 0)  # (k, j, i) → (i, j, k)
    if flip_lps:
        mask_model = mask_model[::-1, ::-1, :]
    assert np.array_equal(mask_model, expected)
