"""The changed region of a label volume: what every interactive step returns.

Coordinates: ``bbox_kji`` is a half-open box ``((k0, k1), (j0, j1), (i0, i1))`` in the *original* volume's
voxel grid, in numpy/SimpleITK array order (k, j, i). ``mask`` has exactly that box's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

# BBoxKJI and union_bbox live with the other box helpers in geometry; imported here also for the modules that
# still take them from this one (session, remote, the Slicer helpers).
from .geometry import BBoxKJI, bbox_shape, bbox_slices, union_bbox

__all__ = ["BBoxKJI", "MaskUpdate", "union_bbox"]


@dataclass(frozen=True)
class MaskUpdate:
    """New content of a box of the target label volume.

    Attributes:
        bbox_kji: half-open box in original voxel indices, array order (k, j, i).
        mask: uint8 array of shape ``(k1-k0, j1-j0, i1-i0)``, 1 = inside the segment. Voxels of the box
            that are 0 here are *cleared* in the target, so a box carries both additions and removals.
    """

    bbox_kji: BBoxKJI
    mask: np.ndarray

    def __post_init__(self) -> None:
        expected = bbox_shape(self.bbox_kji)
        if tuple(self.mask.shape) != expected or any(n < 0 for n in expected):
            raise ValueError(f"MaskUpdate mask shape {self.mask.shape} does not match bbox {self.bbox_kji}")

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        """Numpy slices selecting the box in a (k, j, i) array."""
        return bbox_slices(self.bbox_kji)  # type: ignore[return-value]

    @property
    def is_empty_box(self) -> bool:
        """True when the box has no voxels (nothing to write)."""
        return self.mask.size == 0

    def apply_to(self, label_kji: np.ndarray) -> None:
        """Write this update into a full (k, j, i) uint8 label array in place."""
        if not self.is_empty_box:
            label_kji[self.slices] = self.mask

    @staticmethod
    def empty() -> MaskUpdate:
        """An update that changes nothing."""
        return MaskUpdate(((0, 0), (0, 0), (0, 0)), np.zeros((0, 0, 0), np.uint8))

    @staticmethod
    def covering(label_kji: np.ndarray, bbox_kji: BBoxKJI) -> MaskUpdate:
        """The update that sets ``bbox_kji`` to its current content in ``label_kji`` (a copy)."""
        return MaskUpdate(bbox_kji, np.ascontiguousarray(label_kji[bbox_slices(bbox_kji)], dtype=np.uint8).copy())
