"""``vtkImageData`` ↔ numpy for label regions, with extents handled explicitly.

VTK stores voxels with i fastest, so a scalar array reshaped to ``(nk, nj, ni)`` is the (k, j, i) view numpy
code expects. A ``vtkImageData`` (and Slicer's ``vtkOrientedImageData``, a subclass) may have an extent that
does not start at 0 — a segment's labelmap is shrunk to its "effective extent" — so voxel ``(k, j, i)`` of the
reference grid is at array index ``(k - k0, j - j0, i - i0)``. Extents are *inclusive* ``(i0, i1, j0, j1, k0,
k1)``; boxes here are half-open ``((k0, k1), (j0, j1), (i0, i1))`` like ``MaskUpdate.bbox_kji``.

Only ``vtkmodules`` is imported (Slicer's VTK and the PyPI wheel both provide it), and nothing is imported
from Slicer, so the functions take the image objects as arguments and are tested with real VTK.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR
from vtkmodules.vtkCommonDataModel import vtkImageData

from SAMVolSegmentLib.engine.mask_update import BBoxKJI

Extent = Tuple[int, int, int, int, int, int]


def bbox_from_extent(extent: Sequence[int]) -> BBoxKJI:
    """Inclusive VTK extent ``(i0, i1, j0, j1, k0, k1)`` → half-open ``((k0, k1), (j0, j1), (i0, i1))``.

    An invalid (empty) extent such as ``(0, -1, 0, -1, 0, -1)`` gives an empty box.
    """
    i0, i1, j0, j1, k0, k1 = (int(v) for v in extent)
    return ((k0, max(k0, k1 + 1)), (j0, max(j0, j1 + 1)), (i0, max(i0, i1 + 1)))


def extent_from_bbox(bbox_kji: BBoxKJI) -> Extent:
    """Half-open (k, j, i) box → inclusive VTK extent ``(i0, i1, j0, j1, k0, k1)``."""
    (k0, k1), (j0, j1), (i0, i1) = ((int(lo), int(hi)) for lo, hi in bbox_kji)
    return (i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)


def bbox_is_empty(bbox_kji: BBoxKJI) -> bool:
    """True when the box holds no voxel."""
    return any(int(hi) <= int(lo) for lo, hi in bbox_kji)


def bbox_intersection(a: BBoxKJI, b: BBoxKJI) -> BBoxKJI:
    """Overlap of two half-open boxes (possibly empty)."""
    out = []
    for (la, ha), (lb, hb) in zip(a, b):
        lo, hi = max(int(la), int(lb)), min(int(ha), int(hb))
        out.append((lo, max(lo, hi)))
    return tuple(out)  # type: ignore[return-value]


def bbox_of_mask(mask_kji: np.ndarray) -> BBoxKJI:
    """Smallest half-open (k, j, i) box holding every non-zero voxel; ``((0, 0), (0, 0), (0, 0))`` when none."""
    mask = np.asarray(mask_kji) != 0
    if not mask.any():
        return ((0, 0), (0, 0), (0, 0))
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def array_from_image(image: vtkImageData) -> np.ndarray:
    """A *view* (no copy) of a single-component image's voxels in (k, j, i) order; empty for an empty image."""
    bbox = bbox_from_extent(image.GetExtent())
    shape = tuple(hi - lo for lo, hi in bbox)
    scalars = image.GetPointData().GetScalars() if not bbox_is_empty(bbox) else None
    if scalars is None:
        return np.zeros(shape, dtype=np.uint8)
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError("Expected a single-component label image.")
    return numpy_support.vtk_to_numpy(scalars).reshape(shape)


def image_from_array(
    array_kji: np.ndarray,
    origin_kji: Sequence[int] = (0, 0, 0),
    image: Optional[vtkImageData] = None,
) -> vtkImageData:
    """Fill ``image`` (new ``vtkImageData`` if ``None``) with a deep copy of a (k, j, i) uint8 array.

    Args:
        array_kji: 3-D array; stored as unsigned char.
        origin_kji: grid index of ``array_kji[0, 0, 0]``; the image's extent starts there.
        image: pass a Slicer ``vtkOrientedImageData`` to get one (set its ImageToWorld matrix yourself).

    Only the extent and scalars are set: origin/spacing/directions stay as they are (identity by default),
    because the grid's geometry is the caller's business (``SetImageToWorldMatrix`` in Slicer).
    """
    array = np.ascontiguousarray(array_kji, dtype=np.uint8)
    if array.ndim != 3:
        raise ValueError(f"Expected a 3-D (k, j, i) array, got shape {array.shape}")
    k0, j0, i0 = (int(v) for v in origin_kji)
    nk, nj, ni = array.shape
    out = vtkImageData() if image is None else image
    out.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    out.AllocateScalars(VTK_UNSIGNED_CHAR, 1)
    array_from_image(out)[...] = array
    out.Modified()
    return out


def read_region(image: vtkImageData, bbox_kji: BBoxKJI, label_value: Optional[int] = None) -> np.ndarray:
    """Content of ``bbox_kji`` of a label image as a new array of the box's shape.

    Voxels of the box outside the image's extent read as 0. With ``label_value`` the result is a bool array
    ``== label_value`` (a segment inside a shared labelmap layer); otherwise the raw values (copied).
    """
    shape = tuple(max(0, int(hi) - int(lo)) for lo, hi in bbox_kji)
    values = array_from_image(image)
    image_bbox = bbox_from_extent(image.GetExtent())
    out = np.zeros(shape, dtype=values.dtype if values.size else np.uint8)
    overlap = bbox_intersection(image_bbox, bbox_kji)
    if not bbox_is_empty(overlap):
        src = tuple(slice(lo - ib[0], hi - ib[0]) for (lo, hi), ib in zip(overlap, image_bbox))
        dst = tuple(slice(lo - int(b[0]), hi - int(b[0])) for (lo, hi), b in zip(overlap, bbox_kji))
        out[dst] = values[src]
    return out == label_value if label_value is not None else out


def nonzero_bbox(array_kji: np.ndarray, origin_kji: Sequence[int] = (0, 0, 0)) -> BBoxKJI:
    """Half-open box of the non-zero voxels of ``array_kji`` in grid indices (empty when all zero)."""
    nz = np.nonzero(np.asarray(array_kji))
    if nz[0].size == 0:
        return ((0, 0), (0, 0), (0, 0))
    return tuple((int(idx.min()) + int(o), int(idx.max()) + 1 + int(o)) for idx, o in zip(nz, origin_kji))  # type: ignore[return-value]
