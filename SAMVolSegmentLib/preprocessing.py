"""From a user's volume to the model's input and back.

* :func:`load_volume` validates an image once (bad input raises :class:`InvalidImageError` naming the fix);
* :func:`resample_to_model_grid` builds the 1.5 mm RAS model grid once per volume (linear, 0 outside);
* :func:`crop_roi` / :func:`extract_roi` cut a cubic ROI (zero padding) and z-normalise it as the reference;
* :func:`paste_back_logits` interpolates the ROI's *logits* at the original voxel centres and thresholds
  them, returning the changed box as a :class:`MaskUpdate`. Resampling logits rather than a binarised 1.5 mm
  mask keeps small structures that the reference's nearest-neighbour round trip loses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InvalidImageError
from .geometry import ModelGrid, RoiWindow, VolumeGeometry, lps_to_ras
from .mask_update import MaskUpdate

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Volume:
    """A validated volume: float32 voxels in (k, j, i) order, its geometry and a content fingerprint."""

    array_kji: np.ndarray
    geometry: VolumeGeometry
    fingerprint: str


@dataclass(frozen=True)
class ModelVolume:
    """The volume resampled to its model grid: float32, tensor order (R, A, S), 0 outside the volume."""

    array_model: np.ndarray
    grid: ModelGrid


def read_image(path: Union[str, Path]) -> sitk.Image:
    """Read an image file with SimpleITK, with an error that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"Image file {path} not found; check the path.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InvalidImageError(
            f"Cannot read {path} as an image ({str(exc).strip().splitlines()[-1]}); give a NIfTI, NRRD or MHA file."
        ) from exc


def load_volume(image: Union[sitk.Image, np.ndarray], ijk_to_ras: Optional[np.ndarray] = None) -> Volume:
    """Validate a volume and wrap it with its geometry.

    Args:
        image: a 3D scalar ``SimpleITK.Image``, or a numpy array in (k, j, i) order.
        ijk_to_ras: 4×4 voxel-index → RAS matrix, required with a numpy array (Slicer's ``GetIJKToRASMatrix``).
    Raises:
        InvalidImageError: not 3D/scalar, empty, constant, NaN/inf voxels, degenerate spacing or direction.
    """
    if isinstance(image, sitk.Image):
        if image.GetDimension() != 3:
            raise InvalidImageError(f"Expected a 3D volume, got a {image.GetDimension()}D image; give one 3D volume.")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidImageError(
                f"Expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components per voxel "
                "(vector/RGB or 4D series); extract one channel or time point first."
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
            raise InvalidImageError("A numpy volume needs its 4×4 ijk_to_ras matrix (Slicer: GetIJKToRASMatrix).")
        geometry = VolumeGeometry.from_matrix(ijk_to_ras, array.shape)
    if array.size == 0 or min(array.shape) == 0:
        raise InvalidImageError(f"The volume is empty (shape {array.shape}); load an image with voxels.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InvalidImageError(f"Voxel type {array.dtype} is not a real scalar; convert the image to a number type.")
    # Always a copy: a SimpleITK array view dies with its image, which the caller may drop.
    data = np.array(array, dtype=np.float32, order="C", copy=True)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InvalidImageError(
            f"The volume has {bad} NaN/inf voxels; replace them (e.g. with the background value) before segmenting."
        )
    if float(data.min()) == float(data.max()):
        raise InvalidImageError(f"The volume is constant (every voxel = {float(data.min())}); nothing to segment.")
    data.setflags(write=False)
    return Volume(data, geometry, _fingerprint(data, geometry))


def _fingerprint(array_kji: np.ndarray, geometry: VolumeGeometry) -> str:
    """Content + geometry hash. Hashes every byte: ~0.3 s per GB, paid once per volume; a sampled hash
    would let an edited volume reuse stale embeddings."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(geometry.shape_kji, np.int64).tobytes())
    digest.update(np.round(geometry.ijk_to_ras, 6).tobytes())
    digest.update(memoryview(array_kji).cast("B"))
    return digest.hexdigest()


def resample_to_model_grid(volume: Volume, grid: Optional[ModelGrid] = None) -> ModelVolume:
    """Linear resampling onto the (default: covering) model grid; voxels outside the volume are 0."""
    grid = grid or ModelGrid.covering(volume.geometry)
    source = volume.geometry.to_sitk_image(volume.array_kji)
    # A RAS-aligned grid in SimpleITK's LPS world: index i runs along -x (=R), j along -y (=A), k along z (=S).
    origin_lps = lps_to_ras(np.asarray(grid.origin_ras)[None])[0]
    resampled = sitk.Resample(
        source,
        [int(v) for v in grid.shape_model],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in origin_lps],
        [grid.spacing] * 3,
        [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
        0.0,
        sitk.sitkFloat32,
    )
    array_model = np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))
    return ModelVolume(array_model, grid)


def resample_label_to_model_grid(label_kji: np.ndarray, geometry: VolumeGeometry, grid: ModelGrid) -> np.ndarray:
    """Nearest-neighbour resampling of a label array onto the model grid (R, A, S order), 0 outside."""
    source = geometry.to_sitk_image(np.asarray(label_kji, dtype=np.uint8))
    origin_lps = lps_to_ras(np.asarray(grid.origin_ras)[None])[0]
    resampled = sitk.Resample(
        source, [int(v) for v in grid.shape_model], sitk.Transform(), sitk.sitkNearestNeighbor,
        [float(v) for v in origin_lps], [grid.spacing] * 3, [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
        0, sitk.sitkUInt8,
    )
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))


def normalize_roi(roi: np.ndarray) -> np.ndarray:
    """The reference normalisation: z-score with mean/std of the voxels > 0 of the crop, applied to all voxels.

    With no voxel > 0 (or zero spread) the crop is only centred, so the output stays finite.
    """
    roi = np.asarray(roi, dtype=np.float32)
    foreground = roi[roi > 0]
    if foreground.size == 0:
        return roi - roi.mean(dtype=np.float64).astype(np.float32)
    mean = foreground.mean(dtype=np.float64)
    std = foreground.std(dtype=np.float64)
    if not np.isfinite(std) or std <= 0:
        return (roi - mean).astype(np.float32)
    return ((roi - mean) / std).astype(np.float32)


def crop_roi(model_volume: ModelVolume, roi: RoiWindow, normalize: bool = True) -> np.ndarray:
    """(S, S, S) float32 crop of the model grid in (R, A, S) order, zero-padded outside, normalised."""
    out = np.zeros((roi.size,) * 3, dtype=np.float32)
    src, dst = [], []
    for start, n in zip(roi.start_model, model_volume.array_model.shape):
        lo, hi = max(start, 0), min(start + roi.size, n)
        if hi <= lo:
            return normalize_roi(out) if normalize else out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = model_volume.array_model[tuple(src)]
    return normalize_roi(out) if normalize else out


def extract_roi(model_volume: ModelVolume, centre_ras, size: int = 128) -> Tuple[np.ndarray, RoiWindow]:
    """The normalised ROI centred at ``centre_ras`` and its window."""
    roi = RoiWindow.centred_at(model_volume.grid, centre_ras, size)
    return crop_roi(model_volume, roi), roi


def roi_footprint_bbox_kji(roi: RoiWindow, geometry: VolumeGeometry):
    """Half-open original-grid box holding every voxel whose centre lies in the ROI, or None."""
    edges = np.array([-0.5, roi.size - 0.5])
    corners_roi = np.array([[a, b, c] for a in edges for b in edges for c in edges])
    ijk = geometry.ras_to_ijk(roi.roi_to_ras(corners_roi))
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(geometry.shape_kji[::-1]))
    if np.any(hi <= lo):
        return None
    return tuple((int(lo[a]), int(hi[a])) for a in (2, 1, 0))


def paste_back_logits(
    logits_roi: ArrayLike,
    roi: RoiWindow,
    geometry: VolumeGeometry,
    base_label_kji: Optional[np.ndarray] = None,
    threshold: float = 0.0,
) -> MaskUpdate:
    """Threshold the ROI's logits at the original voxel centres it covers.

    Args:
        logits_roi: (L, L, L) logits on the ROI, tensor order (R, A, S); L may be the low-res size (32) or
            the ROI size. Values between samples follow the reference's trilinear upsampling
            (``align_corners=False``), continued trilinearly.
        roi: the window the logits belong to.
        geometry: the original volume's grid.
        base_label_kji: current full label; voxels of the returned box outside the ROI keep its values
            (otherwise they are 0).
    Returns:
        the changed box of the original grid and its new uint8 content.
    """
    bbox = roi_footprint_bbox_kji(roi, geometry)
    if bbox is None:
        return MaskUpdate.empty()
    logits = torch.as_tensor(logits_roi).detach().float().cpu()
    (k0, k1), (j0, j1), (i0, i1) = bbox
    ranges_ijk = [np.arange(i0, i1), np.arange(j0, j1), np.arange(k0, k1)]
    # ROI continuous coordinates are an affine function of (i, j, k).
    ijk_to_roi = np.linalg.inv(roi.affine_ras) @ geometry.ijk_to_ras
    linear = ijk_to_roi[:3, :3]
    scale = np.abs(linear).max()
    if all(np.count_nonzero(np.abs(row) > 1e-9 * scale) == 1 for row in linear):
        values, inside = _sample_separable(logits, roi.size, ijk_to_roi, ranges_ijk)
    else:
        values, inside = _sample_general(logits, roi.size, ijk_to_roi, ranges_ijk)
    mask = (values > threshold) & inside
    if base_label_kji is not None:
        outside_values = base_label_kji[k0:k1, j0:j1, i0:i1]
        mask = np.where(inside, mask, outside_values > 0)
    return MaskUpdate(bbox, mask.astype(np.uint8))


def _low_res_coordinate(x_roi: np.ndarray, size: int, low: int) -> np.ndarray:
    """ROI voxel coordinate → index on an L-sample grid spanning the ROI (align_corners=False)."""
    return (x_roi + 0.5) * low / size - 0.5


def _sample_separable(logits: torch.Tensor, size: int, ijk_to_roi: np.ndarray, ranges_ijk):
    """Trilinear sampling when every ROI axis follows one voxel axis (axis-aligned volumes): three small
    interpolation matrices instead of a gather per voxel."""
    low = logits.shape[0]
    weights, valid, ijk_axis = [], [], []
    for r in range(3):
        axis = int(np.argmax(np.abs(ijk_to_roi[r, :3])))
        x = ijk_to_roi[r, axis] * ranges_ijk[axis] + ijk_to_roi[r, 3]
        c = np.clip(_low_res_coordinate(x, size, low), 0, low - 1)
        f = np.floor(c).astype(int)
        frac = c - f
        w = np.zeros((len(x), low), dtype=np.float32)
        w[np.arange(len(x)), f] = 1 - frac
        upper = np.minimum(f + 1, low - 1)
        w[np.arange(len(x)), upper] += frac
        weights.append(torch.from_numpy(w))
        valid.append((x >= -0.5) & (x <= size - 0.5))
        ijk_axis.append(axis)
    out = torch.einsum("xa,abc->xbc", weights[0], logits)
    out = torch.einsum("yb,xbc->xyc", weights[1], out)
    out = torch.einsum("zc,xyc->xyz", weights[2], out)
    inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    # Axis r of `out` runs along voxel axis ijk_axis[r]; reorder to (k, j, i) = voxel axes (2, 1, 0).
    order = [ijk_axis.index(a) for a in (2, 1, 0)]
    return out.permute(*order).numpy(), np.transpose(inside, order)


def _sample_general(logits: torch.Tensor, size: int, ijk_to_roi: np.ndarray, ranges_ijk, chunk: int = 1 << 21):
    """Trilinear sampling for oblique volumes with ``grid_sample`` (processed in chunks to bound memory)."""
    i, j, k = ranges_ijk
    shape = (len(k), len(j), len(i))
    kk, jj, ii = np.meshgrid(k, j, i, indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    values = np.empty(len(ijk), dtype=np.float32)
    inside = np.empty(len(ijk), dtype=bool)
    volume = logits[None, None]
    for start in range(0, len(ijk), chunk):
        roi_xyz = ijk[start : start + chunk] @ ijk_to_roi[:3, :3].T + ijk_to_roi[:3, 3]
        inside[start : start + chunk] = np.all((roi_xyz >= -0.5) & (roi_xyz <= size - 0.5), axis=1)
        # grid_sample's last dim is (x, y, z) = (dim2, dim1, dim0) of the (R, A, S) tensor.
        normalised = (2 * roi_xyz + 1) / size - 1
        grid = torch.from_numpy(normalised[:, ::-1].astype(np.float32).copy()).view(1, -1, 1, 1, 3)
        sampled = torch.nn.functional.grid_sample(volume, grid, mode="bilinear", padding_mode="border",
                                                  align_corners=False)
        values[start : start + chunk] = sampled.view(-1).numpy()
    return values.reshape(shape), inside.reshape(shape)
