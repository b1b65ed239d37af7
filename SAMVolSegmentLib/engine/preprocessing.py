"""From a user's volume to the model's input and back.

* :func:`load_volume` validates an image once (bad input raises :class:`InvalidImageError` naming the fix);
* :func:`resample_to_model_grid` builds the 1.5 mm RAS model grid once per volume (linear, 0 outside);
* :func:`crop_roi` / :func:`extract_roi` cut a cubic ROI (zero padding) and normalise it with the model's rule
  (:func:`normalize_roi`: the reference's z-score over voxels > 0 for SAM-Med3D and the v1/v2 default models, a
  robust z-score over the voxels inside the image for models that declare it, see :data:`NORMALIZATIONS`);
* :func:`paste_back_logits` interpolates the ROI's *logits* at the original voxel centres and thresholds
  them, returning the changed box as a :class:`MaskUpdate`. Resampling logits rather than a binarised 1.5 mm
  mask keeps small structures that the reference's nearest-neighbour round trip loses.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InvalidImageError
from .geometry import ModelGrid, RoiWindow, VolumeGeometry, kji_to_model_order
from .mask_update import BBoxKJI, MaskUpdate

if TYPE_CHECKING:  # torch is imported where logits are pasted: reading an image needs no torch (the client)
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]


@dataclass(frozen=True)
class Volume:
    """A validated volume: float32 voxels in (k, j, i) order, its geometry and a content fingerprint."""

    array_kji: np.ndarray
    geometry: VolumeGeometry
    fingerprint: str


@dataclass(frozen=True)
class ModelVolume:
    """The volume resampled to its model grid: float32, tensor order (R, A, S), 0 outside the volume.

    ``inside_model``: bool (R, A, S), True where the model voxel lies inside the original volume (the padding of
    the covering grid is False); None means every voxel is inside (label maps, tests).
    """

    array_model: np.ndarray
    grid: ModelGrid
    inside_model: Optional[np.ndarray] = None


def read_image(path: Union[str, Path], series_uid: Optional[str] = None) -> sitk.Image:
    """Read an image file, or a folder holding a DICOM series, with errors that say what is wrong.

    Args:
        path: an image file SimpleITK reads (NIfTI, NRRD, MHA, a single DICOM file...) or a folder of DICOM files.
        series_uid: for a folder holding several series, the Series Instance UID to read.
    Raises:
        InvalidImageError: missing path, unreadable file, a folder without DICOM series, or a folder with several
            series and no (or an unknown) ``series_uid`` (the message lists the series).
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path, series_uid)
    if not path.is_file():
        raise InvalidImageError(f"Image file {path} not found; check the path.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InvalidImageError(
            f"Cannot read {path} as an image ({str(exc).strip().splitlines()[-1]}); give a NIfTI, NRRD or MHA file "
            "or a DICOM series folder."
        ) from exc


#: How far a label's grid may differ from its image's and still count as the same grid.
_GRID_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-4


def read_image_label(image_path: Union[str, Path], label_path: Union[str, Path]) -> Tuple[sitk.Image, np.ndarray]:
    """Read an image and its label map, checked to share one voxel grid.

    Returns:
        The image, and the label as an integer numpy array (k, j, i) on the image's grid.
    Raises:
        InvalidImageError: a file is missing/unreadable, or the label's size, spacing, origin or direction
            differ from the image's (the message says which).
    """
    image, label = read_image(image_path), read_image(label_path)
    if label.GetNumberOfComponentsPerPixel() != 1 or label.GetDimension() != image.GetDimension():
        raise InvalidImageError(f"Label {label_path} must be a scalar {image.GetDimension()}D label map.")
    checks = (
        ("size", image.GetSize(), label.GetSize(), 0.0),
        ("spacing", image.GetSpacing(), label.GetSpacing(), _GRID_ATOL_MM),
        ("origin", image.GetOrigin(), label.GetOrigin(), _GRID_ATOL_MM),
        ("direction", image.GetDirection(), label.GetDirection(), _DIRECTION_ATOL),
    )
    for what, expected, got, atol in checks:
        if not np.allclose(np.asarray(expected, float), np.asarray(got, float), rtol=0, atol=atol):
            raise InvalidImageError(
                f"Label {label_path} has {what} {tuple(round(float(v), 4) for v in got)} but image {image_path} "
                f"has {tuple(round(float(v), 4) for v in expected)}; resample the label onto the image's grid."
            )
    array = sitk.GetArrayFromImage(label)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InvalidImageError(f"Label {label_path} holds non-integer values; give an integer label map.")
        array = array.astype(np.int64)
    return image, array



def _read_dicom_series(folder: Path, series_uid: Optional[str]) -> sitk.Image:
    """One DICOM series of ``folder`` as a 3D image (slices sorted by position by GDCM)."""
    # GDCM warns "No Series were found" on stderr (three lines) for a folder without DICOM; the error below
    # says it in one line.
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if not series:
        raise InvalidImageError(
            f"{folder} is a folder without DICOM series; give an image file, or the folder that holds the .dcm files."
        )
    if series_uid is None and len(series) > 1:
        listing = "; ".join(f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)"
                            for uid in series)
        raise InvalidImageError(
            f"{folder} holds {len(series)} DICOM series: {listing}. Choose one (CLI: --series UID)."
        )
    uid = series[0] if series_uid is None else series_uid
    if uid not in series:
        raise InvalidImageError(f"{folder} has no DICOM series {uid!r}; its series are {', '.join(series)}.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InvalidImageError(
            f"Cannot read DICOM series {uid} in {folder} ({str(exc).strip().splitlines()[-1]}); check that the "
            "series is complete and uncompressed or in a transfer syntax GDCM reads."
        ) from exc


#: Most voxels a volume's model grid (1.5 mm) may have: ~640 MB as float32 (≈1.5 GB at the peak of the
#: resampling). A 500 mm × 500 mm × 2 m whole-body CT needs 148 M; a coarse volume with a huge field of view
#: (48³ voxels of 20 mm: a 640³ grid, 2.4 GB and 11 s) would exhaust memory instead.
MAX_MODEL_GRID_VOXELS = 160_000_000


def check_model_grid(geometry: VolumeGeometry) -> ModelGrid:
    """The volume's covering model grid, refused when it exceeds :data:`MAX_MODEL_GRID_VOXELS`.

    Raises:
        InvalidImageError: the grid is too large (the message gives its size, the limit and the fix).
    """
    grid = ModelGrid.covering(geometry)
    voxels = int(np.prod(np.asarray(grid.shape_model, dtype=np.float64)))
    if voxels > MAX_MODEL_GRID_VOXELS:
        extent = np.asarray(grid.shape_model, dtype=np.float64) * grid.spacing
        raise InvalidImageError(
            f"The volume spans {' x '.join(f'{v:.0f}' for v in extent)} mm, a model grid of "
            f"{' x '.join(str(v) for v in grid.shape_model)} voxels at {grid.spacing} mm ({voxels / 1e6:.0f} M), "
            f"more than the limit of {MAX_MODEL_GRID_VOXELS / 1e6:.0f} M voxels; crop the volume to the region "
            "to segment (or check its voxel spacing in the header)."
        )
    return grid


def load_volume(image: Union[sitk.Image, np.ndarray], ijk_to_ras: Optional[np.ndarray] = None) -> Volume:
    """Validate a volume and wrap it with its geometry.

    Args:
        image: a 3D scalar ``SimpleITK.Image`` (any real pixel type), or a numpy array in (k, j, i) order.
        ijk_to_ras: 4×4 voxel-index → RAS matrix, required with a numpy array (Slicer's ``GetIJKToRASMatrix``).
    Returns:
        a :class:`Volume` holding a read-only float32 copy of the voxels.
    Raises:
        InvalidImageError: not 3D/scalar, empty, constant, NaN/inf voxels, degenerate spacing or direction,
            a model grid larger than :data:`MAX_MODEL_GRID_VOXELS`.
    """
    if isinstance(image, sitk.Image):
        if image.GetDimension() != 3:
            raise InvalidImageError(
                f"Expected a 3D volume, got a {image.GetDimension()}D image; give one 3D volume "
                "(for a 4D series, extract one time point first)."
            )
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidImageError(
                f"Expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components per voxel "
                "(vector/RGB image); extract one channel or convert to grey first."
            )
        geometry = VolumeGeometry.from_sitk(image)
        array = sitk.GetArrayViewFromImage(image)
    else:
        array = np.asarray(image)
        if array.ndim != 3:
            raise InvalidImageError(
                f"Expected a 3D array in (k, j, i) order, got shape {array.shape}; give one 3D scalar volume."
            )
        if ijk_to_ras is None:
            raise InvalidImageError(
                "A numpy volume needs its 4×4 ijk_to_ras matrix; pass ijk_to_ras (Slicer: GetIJKToRASMatrix)."
            )
        geometry = VolumeGeometry.from_matrix(ijk_to_ras, array.shape)
    check_model_grid(geometry)  # before the float32 copy: an oversized volume costs nothing
    if array.size == 0:
        raise InvalidImageError(f"The volume is empty (shape {array.shape}); load an image that has voxels.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InvalidImageError(
            f"Voxel type {array.dtype} is not a real scalar; convert the image to an integer or float type."
        )
    # Always a copy: a SimpleITK array view dies with its image, which the caller may drop.
    data = np.array(array, dtype=np.float32, order="C", copy=True)
    # One float64 sum finds NaN/inf (it propagates them) and feeds the fingerprint; counting is for errors only.
    total = float(data.sum(dtype=np.float64))
    if not np.isfinite(total):
        _raise_not_finite(array, data)
    low, high = float(data.min()), float(data.max())
    if low == high:
        # The float32 copy may have merged values the input tells apart (1e9 and 1e9 + 1).
        source_low, source_high = np.min(array), np.max(array)
        if source_low != source_high:
            raise InvalidImageError(
                f"The voxel values ({source_low:.10g} to {source_high:.10g}) differ by less than float32 precision "
                f"at their magnitude (they would all become one value); subtract an offset or rescale the intensities "
                "before segmenting."
            )
        raise InvalidImageError(
            f"The volume is constant (every voxel = {low}); load the intended image (nothing here to segment)."
        )
    data.setflags(write=False)
    return Volume(data, geometry, _fingerprint(data, geometry, total))


def _raise_not_finite(source: np.ndarray, data: np.ndarray) -> None:
    """Name why the float32 copy ``data`` of ``source`` holds NaN/inf: in the input, or too large for float32."""
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    source_finite = np.isfinite(source) if np.issubdtype(source.dtype, np.floating) else np.ones(source.shape, bool)
    not_finite = int(source.size - np.count_nonzero(source_finite))
    if not_finite:
        raise InvalidImageError(
            f"The volume has {not_finite} NaN/inf voxels; replace them (e.g. with the background value) before "
            "segmenting."
        )
    largest = float(np.max(np.abs(source)))
    raise InvalidImageError(
        f"The volume has {bad} voxels beyond the float32 range (up to {largest:.4g}, float32 ends at "
        f"{float(np.finfo(np.float32).max):.4g}); rescale the intensities or clip the outliers before segmenting."
    )


def _fingerprint(array_kji: np.ndarray, geometry: VolumeGeometry, total: float) -> str:
    """Content + geometry key of a volume (the embedding cache and ``set_volume`` reuse work on a match).

    Every voxel is read, by CRC-32 (~2.5 GB/s, ~50 ms for a 512×512×134 CT) plus the float64 sum: a sampled
    hash would be faster but would let a locally edited volume (a painted or cropped region) reuse stale
    embeddings. The combination is not cryptographic; it guards against accidents, not adversaries.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(geometry.shape_kji, np.int64).tobytes())
    digest.update(np.round(geometry.ijk_to_ras, 6).tobytes())
    digest.update(np.array([zlib.crc32(memoryview(array_kji).cast("B")), total], np.float64).tobytes())
    return digest.hexdigest()


def _resample(
    image: sitk.Image, target: VolumeGeometry, interpolator: int, default: float, pixel_type: int
) -> np.ndarray:
    """``image`` resampled onto the ``target`` grid (identity world transform); (k, j, i) array of target."""
    origin, spacing, direction = target.sitk_header()
    resampled = sitk.Resample(
        image, [int(v) for v in target.shape_kji[::-1]], sitk.Transform(), interpolator,
        origin, spacing, direction, default, pixel_type,
    )
    return sitk.GetArrayFromImage(resampled)


def resample_to_model_grid(volume: Volume, grid: Optional[ModelGrid] = None) -> ModelVolume:
    """Linear resampling onto the (default: covering) model grid; voxels outside the volume are 0.

    Returns:
        a :class:`ModelVolume` with a float32 array in model tensor order (R, A, S) and the mask of the model
        voxels inside the volume (``inside_model``; NaN is the resampler's outside value, the input is finite).
    """
    grid = grid or ModelGrid.covering(volume.geometry)
    source = volume.geometry.to_sitk_image(volume.array_kji)
    array_kji = _resample(source, grid.as_volume_geometry(), sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    outside = np.isnan(array_kji)
    array_kji[outside] = 0.0
    inside = None if not outside.any() else np.ascontiguousarray(kji_to_model_order(~outside))
    return ModelVolume(np.ascontiguousarray(kji_to_model_order(array_kji)), grid, inside)


def resample_label_to_model_grid(label_kji: np.ndarray, geometry: VolumeGeometry, grid: ModelGrid) -> np.ndarray:
    """Nearest-neighbour resampling of a (k, j, i) label onto the model grid: uint8 (R, A, S), 0 outside."""
    source = geometry.to_sitk_image(np.asarray(label_kji, dtype=np.uint8))
    array_kji = _resample(source, grid.as_volume_geometry(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return np.ascontiguousarray(kji_to_model_order(array_kji))


def soft_label_to_model_grid(label_kji: np.ndarray, geometry: VolumeGeometry, grid: ModelGrid) -> np.ndarray:
    """Partial-volume fraction of a binary (k, j, i) label in each model voxel: float32 (R, A, S) in [0, 1].

    What an ideal model would predict at 1.5 mm (a probability, not a binarised mask). The fraction of a
    model voxel covered by the label is a 1.5 mm box average; it is approximated by a Gaussian prefilter of
    the same second moment (σ² = (1.5² − s²) / 12 per axis of spacing s < 1.5 mm, the source voxel's own
    box already counted) followed by linear resampling. Without the prefilter, linear interpolation
    point-samples a fine label (e.g. 0.3 mm in-plane) at 1.5 mm and aliases its boundary.
    """
    from scipy import ndimage

    mask = np.asarray(label_kji) > 0
    if mask.shape != tuple(geometry.shape_kji):
        raise ValueError(f"label shape {mask.shape} differs from the volume's {geometry.shape_kji}")
    if not mask.any():
        return np.zeros(tuple(grid.shape_model), np.float32)
    spacing_kji = geometry.spacing[::-1]
    sigma_kji = np.sqrt(np.maximum(grid.spacing**2 - spacing_kji**2, 0.0) / 12.0) / spacing_kji
    # Only the label's neighbourhood is filtered: beyond 4σ (the truncation) the prefiltered label is 0.
    margin = np.ceil(4.0 * sigma_kji).astype(int) + 1
    nonzero = np.argwhere(mask)
    lo = np.maximum(nonzero.min(axis=0) - margin, 0)
    hi = np.minimum(nonzero.max(axis=0) + margin + 1, mask.shape)
    crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    if np.any(sigma_kji > 0):
        crop = ndimage.gaussian_filter(crop, sigma_kji, truncate=4.0)
    source = geometry.cropped(tuple(zip(lo.tolist(), hi.tolist()))).to_sitk_image(crop)  # type: ignore[arg-type]
    array_kji = _resample(source, grid.as_volume_geometry(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.ascontiguousarray(np.clip(kji_to_model_order(array_kji), 0.0, 1.0))


#: The reference rule (SAM-Med3D, and the ClickNet/ClickNet2 weights v1 and v2): z-score with the mean/std of
#: the ROI's voxels > 0, applied to all voxels (an MR habit: CT's negative tissues drop out of the statistics).
NORMALIZATION_POSITIVE_ZSCORE = "zscore_positive"
#: Robust, for CT and MR alike: over the ROI voxels inside the image (padding beyond the volume excluded), clip to
#: the [0.5, 99.5] percentiles, then z-score with the clipped voxels' mean/std; voxels outside the image take
#: the lower clip value. Invariant to a shift and a positive scale of the intensities.
NORMALIZATION_ROBUST_INSIDE = "robust_zscore_inside"
NORMALIZATIONS = (NORMALIZATION_POSITIVE_ZSCORE, NORMALIZATION_ROBUST_INSIDE)
#: Percentiles of the robust rule's clip.
ROBUST_CLIP_PERCENTILES = (0.5, 99.5)


def model_normalization(model) -> str:
    """The intensity normalisation a model was trained with: its config's ``normalization`` (saved with its
    weights), else the reference rule (SAM-Med3D checkpoints and the v1/v2 default weights carry none)."""
    rule = getattr(getattr(model, "config", None), "normalization", None) or NORMALIZATION_POSITIVE_ZSCORE
    if rule not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {rule!r}; known: {NORMALIZATIONS}")
    return rule


def normalize_roi(roi: np.ndarray, normalization: str = NORMALIZATION_POSITIVE_ZSCORE,
                  inside: Optional[np.ndarray] = None) -> np.ndarray:
    """The one place of the intensity normalisation rules (:data:`NORMALIZATIONS`).

    Args:
        roi: (S, S, S) raw intensities (any order; zero padding outside the image).
        normalization: :data:`NORMALIZATION_POSITIVE_ZSCORE` (the reference: z-score with mean/std of the voxels
            > 0, applied to all voxels; with no voxel > 0 or zero spread the crop is only centred) or
            :data:`NORMALIZATION_ROBUST_INSIDE` (see there).
        inside: bool, same shape: voxels inside the image (None: all); only the robust rule reads it.
    Returns:
        float32, same shape; always finite.
    """
    roi = np.asarray(roi, dtype=np.float32)
    if normalization == NORMALIZATION_ROBUST_INSIDE:
        return _normalize_robust(roi, inside)
    if normalization != NORMALIZATION_POSITIVE_ZSCORE:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    foreground = roi[roi > 0]
    if foreground.size == 0:
        return roi - roi.mean(dtype=np.float64).astype(np.float32)
    mean = foreground.mean(dtype=np.float64)
    std = foreground.std(dtype=np.float64)
    if not np.isfinite(std) or std <= 0:
        return (roi - mean).astype(np.float32)
    return ((roi - mean) / std).astype(np.float32)


def _normalize_robust(roi: np.ndarray, inside: Optional[np.ndarray]) -> np.ndarray:
    """:data:`NORMALIZATION_ROBUST_INSIDE` of a float32 ROI; ``inside`` None means every voxel."""
    values = roi if inside is None else roi[inside]
    if values.size == 0:  # the ROI misses the image: nothing to normalise
        return np.zeros(roi.shape, np.float32)
    values = values.astype(np.float64).ravel()
    low, high = np.percentile(values, ROBUST_CLIP_PERCENTILES)
    clipped = np.clip(values, low, high)
    mean, std = clipped.mean(), clipped.std()
    scale = 1.0 / std if np.isfinite(std) and std > 1e-6 * max(abs(high), abs(low), 1e-30) else 1.0
    out = ((np.clip(roi.astype(np.float64), low, high) - mean) * scale).astype(np.float32)
    if inside is not None:
        out[~inside] = np.float32((low - mean) * scale)
    return out


def crop_roi(model_volume: ModelVolume, roi: RoiWindow, normalize: bool = True,
             normalization: str = NORMALIZATION_POSITIVE_ZSCORE) -> np.ndarray:
    """(S, S, S) float32 crop of the model grid in (R, A, S) order, zero-padded outside, normalised with
    ``normalization`` (:func:`normalize_roi`) unless ``normalize`` is False."""
    out, inside = crop_roi_with_inside(model_volume, roi)
    return normalize_roi(out, normalization, inside) if normalize else out


def crop_roi_with_inside(model_volume: ModelVolume, roi: RoiWindow) -> Tuple[np.ndarray, np.ndarray]:
    """The raw (S, S, S) crop of :func:`crop_roi` (R, A, S; 0 outside) and its bool mask of voxels inside the
    image (beyond the model grid, or where ``model_volume.inside_model`` says so, False)."""
    out = np.zeros((roi.size,) * 3, dtype=np.float32)
    inside = np.zeros((roi.size,) * 3, dtype=bool)
    src, dst = [], []
    for start, n in zip(roi.start_model, model_volume.array_model.shape):
        lo, hi = max(start, 0), min(start + roi.size, n)
        if hi <= lo:
            return out, inside
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = model_volume.array_model[tuple(src)]
    inside[tuple(dst)] = True if model_volume.inside_model is None else model_volume.inside_model[tuple(src)]
    return out, inside


def extract_roi(model_volume: ModelVolume, centre_ras, size: int = 128,
                normalization: str = NORMALIZATION_POSITIVE_ZSCORE) -> Tuple[np.ndarray, RoiWindow]:
    """The normalised ROI centred at ``centre_ras`` and its window."""
    roi = RoiWindow.centred_at(model_volume.grid, centre_ras, size)
    return crop_roi(model_volume, roi, normalization=normalization), roi


def roi_footprint_bbox_kji(roi: RoiWindow, geometry: VolumeGeometry) -> Optional[BBoxKJI]:
    """Half-open original-grid (k, j, i) box holding every voxel whose centre lies in the ROI, or None."""
    edges = np.array([-0.5, roi.size - 0.5])
    corners_roi = np.array([[a, b, c] for a in edges for b in edges for c in edges])
    ijk = geometry.ras_to_ijk(roi.roi_to_ras(corners_roi))
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(geometry.shape_kji[::-1]))
    if np.any(hi <= lo):
        return None
    return tuple((int(lo[a]), int(hi[a])) for a in (2, 1, 0))  # type: ignore[return-value]


def paste_back_logits(
    logits_roi: ArrayLike,
    roi: RoiWindow,
    geometry: VolumeGeometry,
    base_label_kji: Optional[np.ndarray] = None,
    threshold: float = 0.0,
) -> MaskUpdate:
    """Threshold the ROI's logits at the original voxel centres it covers.

    The logits are interpolated, never a binarised mask: values follow the reference's trilinear upsampling
    ``F.interpolate(size=S, mode="trilinear", align_corners=False)`` exactly at ROI voxel centres and
    trilinearly on the ``L``-grid in between (clamped at its border, as ``F.interpolate``).

    Args:
        logits_roi: (L, L, L) logits (torch or numpy; leading singleton dims allowed), model tensor order
            (R, A, S); L divides the ROI size: the low-res size (32 for 128) or the ROI size itself.
        roi: the window the logits belong to.
        geometry: the original volume's grid.
        base_label_kji: current full (k, j, i) label; voxels of the returned box whose centres lie outside the
            ROI keep its values (otherwise they are 0). Only oblique volumes have such voxels.
        threshold: a voxel is foreground where the interpolated logit is > ``threshold``.
    Returns:
        the original-grid box of the ROI footprint clipped to the volume, with its new uint8 content
        (an empty update when the ROI misses the volume).
    """
    import torch

    logits = torch.as_tensor(logits_roi).detach().to(device="cpu", dtype=torch.float32)
    while logits.dim() > 3 and logits.shape[0] == 1:
        logits = logits[0]
    low = int(logits.shape[0])
    if logits.dim() != 3 or len(set(logits.shape)) != 1 or low < 1 or roi.size % low:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not fit a {roi.size}³ ROI; give (L, L, L) with L dividing "
            f"{roi.size}"
        )
    bbox = roi_footprint_bbox_kji(roi, geometry)
    if bbox is None:
        return MaskUpdate.empty()
    lowres_geometry = roi.lowres_geometry(low)
    # Continuous low-res index of each original voxel: an affine function of (i, j, k).
    ijk_to_low = lowres_geometry.ras_to_ijk_matrix @ geometry.ijk_to_ras
    linear = ijk_to_low[:3, :3]
    if all(np.count_nonzero(np.abs(row) > 1e-9 * np.abs(row).max()) == 1 for row in linear):
        return _paste_separable(logits, ijk_to_low, bbox, threshold)
    return _paste_general(logits, lowres_geometry, geometry, bbox, base_label_kji, threshold)


def _paste_separable(logits: torch.Tensor, ijk_to_low: np.ndarray, bbox: BBoxKJI, threshold: float) -> MaskUpdate:
    """Axis-aligned volumes (each low-res axis follows one voxel axis): three 2-tap linear interpolations.

    The box shrinks to the voxels whose centres lie in the ROI ([−0.5, L − 0.5) in low-res index, the same
    half-open rule as SimpleITK's linear interpolator in :func:`_paste_general`), so every voxel is inside.
    """
    low = logits.shape[0]
    ranges = [np.arange(lo, hi) for lo, hi in reversed(bbox)]  # voxel axes i, j, k
    axes_low, taps, new_bbox = [], [], []
    for axis in (2, 1, 0):  # voxel axes k, j, i: output (k, j, i) order
        r = int(np.argmax(np.abs(ijk_to_low[:3, axis])))
        x = ijk_to_low[r, axis] * ranges[axis] + ijk_to_low[r, 3]
        keep = np.nonzero((x >= -0.5) & (x < low - 0.5))[0]
        if keep.size == 0:
            return MaskUpdate.empty()
        # x is monotonic in the voxel index, so the kept voxels are one contiguous run.
        new_bbox.append((int(ranges[axis][keep[0]]), int(ranges[axis][keep[-1]]) + 1))
        c = np.clip(x[keep[0] : keep[-1] + 1], 0.0, low - 1.0)
        f = np.floor(c).astype(np.intp)
        taps.append((f, np.minimum(f + 1, low - 1), (c - f).astype(np.float32)))
        axes_low.append(r)
    # Only voxels whose interpolation taps reach a low-res plane holding a logit above the threshold can be
    # foreground (a linear interpolation never exceeds its largest tap): interpolate that sub-box only and
    # leave the rest of the (full) box 0. Exact, and most clicks touch a small part of the ROI.
    above = (logits > threshold).numpy().transpose(axes_low)
    mask = np.zeros(tuple(len(t[0]) for t in taps), dtype=np.uint8)
    if not above.any():
        return MaskUpdate(tuple(new_bbox), mask)  # type: ignore[arg-type]
    sub = []
    for dim in range(3):
        planes = np.nonzero(above.any(axis=tuple(a for a in range(3) if a != dim)))[0]
        f0, f1, w = taps[dim]
        touching = np.nonzero((f1 >= planes[0]) & (f0 <= planes[-1]))[0]  # contiguous: taps are monotonic
        sub.append(slice(int(touching[0]), int(touching[-1]) + 1))
        taps[dim] = (f0[sub[-1]], f1[sub[-1]], w[sub[-1]])
    values = logits.numpy().transpose(axes_low)  # dims follow voxel axes (k, j, i)
    for dim in (2, 1):
        f0, f1, w = taps[dim]
        shape = [1, 1, 1]
        shape[dim] = -1
        a = np.take(values, f0, axis=dim)
        values = a + (np.take(values, f1, axis=dim) - a) * w.reshape(shape)
    # The last axis (k: the largest output) slice by slice, in place: interpolation and threshold stay in
    # cache and no full-size float array is built (~10× faster than whole-volume operations on 2 cores).
    f0, f1, w = taps[0]
    inner = mask[tuple(sub)]  # a view: written in place
    work = np.empty(values.shape[1:], dtype=np.float32)
    for k in range(len(f0)):
        np.subtract(values[f1[k]], values[f0[k]], out=work)
        work *= w[k]
        work += values[f0[k]]
        np.greater(work, threshold, out=inner[k].view(np.bool_))
    return MaskUpdate(tuple(new_bbox), mask)  # type: ignore[arg-type]


def _paste_general(
    logits: torch.Tensor,
    lowres_geometry: VolumeGeometry,
    geometry: VolumeGeometry,
    bbox: BBoxKJI,
    base_label_kji: Optional[np.ndarray],
    threshold: float,
) -> MaskUpdate:
    """Oblique volumes: SimpleITK's linear interpolator on the L-grid (its border clamp and half-open inside
    rule match ``F.interpolate(align_corners=False)`` on the ROI); voxels outside the ROI get a sentinel."""
    sentinel = -3.0e38
    source = lowres_geometry.to_sitk_image(kji_to_model_order(logits.numpy()))
    values = _resample(source, geometry.cropped(bbox), sitk.sitkLinear, sentinel, sitk.sitkFloat32)
    mask = values > threshold
    if base_label_kji is not None:
        inside = values > sentinel / 2
        (k0, k1), (j0, j1), (i0, i1) = bbox
        mask = np.where(inside, mask, base_label_kji[k0:k1, j0:j1, i0:i1] > 0)
    return MaskUpdate(bbox, mask.view(np.uint8))
