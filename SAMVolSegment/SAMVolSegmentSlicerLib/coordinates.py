"""Coordinate conversions between Slicer's node frames, world RAS and voxel indices.

Slicer gives every transformable node a *local* frame; the chain of parent transforms maps it to *world* RAS
(what the slice views show and what the engine expects). Matrices here are plain 4×4 numpy arrays:

* ``ijk_to_ras``: a volume's ``GetIJKToRASMatrix`` — voxel index (i, j, k) to the volume's *local* RAS;
  it already holds the direction cosines, so oblique volumes need nothing extra;
* ``local_to_world``: the node's parent transform to world (``GetMatrixTransformToWorld``); identity when
  the node has no parent transform.

Non-linear parent transforms cannot be written as a matrix; the module refuses them with a message that says
to harden the transform (``is_linear`` from Slicer decides, not this code).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

#: Relative tolerance used to decide that two voxel grids are the same (matrix entries in mm).
GRID_ATOL_MM = 1e-4


def as_matrix(values: Optional[Sequence]) -> np.ndarray:
    """A 4×4 float64 homogeneous matrix from nested sequences, a flat 16-vector, or ``None`` (identity)."""
    if values is None:
        return np.eye(4)
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.size == 16:
        matrix = matrix.reshape(4, 4)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"Expected a finite 4x4 matrix, got shape {matrix.shape}")
    if not np.allclose(matrix[3], (0, 0, 0, 1)):
        raise ValueError("Expected an affine matrix (last row 0 0 0 1); harden non-linear transforms first.")
    return matrix


def ijk_to_world(ijk_to_ras: Sequence, volume_to_world: Optional[Sequence] = None) -> np.ndarray:
    """Voxel index (i, j, k) → world RAS of a volume under a (linear) parent transform.

    This is the matrix to give ``InteractiveSession.set_volume`` together with ``arrayFromVolume``, so that
    clicks can be passed in world RAS exactly as the views report them.
    """
    return as_matrix(volume_to_world) @ as_matrix(ijk_to_ras)


def transform_points(matrix: Sequence, points: Sequence) -> np.ndarray:
    """Apply a 4×4 affine to points of shape (3,) or (N, 3); returns the same shape."""
    m = as_matrix(matrix)
    pts = np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    out = flat @ m[:3, :3].T + m[:3, 3]
    return out.reshape(pts.shape)


def world_to_ijk(points_world: Sequence, ijk_to_ras: Sequence, volume_to_world: Optional[Sequence] = None) -> np.ndarray:
    """World RAS (3,) or (N, 3) → continuous voxel index (i, j, k) of the volume (voxel centres at integers)."""
    return transform_points(np.linalg.inv(ijk_to_world(ijk_to_ras, volume_to_world)), points_world)


def is_inside_volume(point_ijk: Sequence, shape_kji: Sequence[int]) -> bool:
    """True when a continuous (i, j, k) index lies inside the volume's voxels (half a voxel beyond centres)."""
    ijk = np.asarray(point_ijk, dtype=np.float64).reshape(3)
    size_ijk = np.asarray(tuple(shape_kji)[::-1], dtype=np.float64)
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= size_ijk - 0.5))


def ijk_to_segmentation_local(
    ijk_to_ras: Sequence, volume_to_world: Optional[Sequence], segmentation_to_world: Optional[Sequence]
) -> np.ndarray:
    """Volume voxel index → the segmentation node's local frame (the frame of its labelmaps' ImageToWorld).

    A ``vtkOrientedImageData`` stored in a segment maps its indices to the segmentation node's *local* RAS; to
    write voxels of the volume's grid there, the volume's IJK must go through world and back.
    """
    return np.linalg.inv(as_matrix(segmentation_to_world)) @ ijk_to_world(ijk_to_ras, volume_to_world)


def same_grid(matrix_a: Sequence, matrix_b: Sequence, atol: float = GRID_ATOL_MM) -> bool:
    """True when two index→RAS matrices describe the same voxel grid (same indices map to the same point)."""
    return bool(np.allclose(as_matrix(matrix_a), as_matrix(matrix_b), rtol=0.0, atol=atol))


def roi_box_world(
    center_local: Sequence[float],
    size: Sequence[float],
    roi_axes_to_local: Optional[Sequence] = None,
    local_to_world: Optional[Sequence] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world-RAS bounding box ``(min_ras, max_ras)`` of a (possibly rotated) markups ROI.

    Args:
        center_local: ROI centre in the ROI node's local frame (``GetCenter``).
        size: edge lengths along the ROI's own axes (``GetSize``), mm.
        roi_axes_to_local: the ROI's orientation as a 4×4 (``GetObjectToNodeMatrix``) — only its rotation is
            used; ``None`` for an axis-aligned ROI.
        local_to_world: the ROI node's parent transform.

    The engine's box prompt is axis-aligned in RAS, so a rotated ROI becomes the box around its corners.
    """
    centre = np.asarray(center_local, dtype=np.float64).reshape(3)
    half = np.abs(np.asarray(size, dtype=np.float64).reshape(3)) / 2
    if not np.all(np.isfinite(centre)) or not np.all(np.isfinite(half)) or np.any(half <= 0):
        raise ValueError("The ROI box has no volume: give it a positive size along all three axes.")
    rotation = as_matrix(roi_axes_to_local)[:3, :3]
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    corners_local = centre + (signs * half) @ rotation.T
    corners_world = transform_points(as_matrix(local_to_world), corners_local)
    return corners_world.min(axis=0), corners_world.max(axis=0)
