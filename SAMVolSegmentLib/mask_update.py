"""The changed region of a label volume: what every interactive step returns.

Coordinates: ``bbox_kji`` is a half-open box ``((k0, k1), (j0, j1), (i0, i1))`` in the *original* volume's
voxel grid, in numpy/SimpleITK array order (k, j, i). ``mask`` has exactly that box's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

BBoxKJI = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


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
        expected = tuple(int(hi) - int(lo) for lo, hi in self.bbox_kji)
        if tuple(self.mask.shape) != expected or any(n < 0 for n in expected):
            raise ValueError(f"MaskUpdate mask shape {self.mask.shape} does not match bbox {self.bbox_kji}")

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        """Numpy slices selecting the box in a (k, j, i) array."""
        return tuple(slice(int(lo), int(hi)) for lo, hi in self.bbox_kji)  # type: ignore[return-value]

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
        sl = tuple(slice(int(lo), int(hi)) for lo, hi in bbox_kji)
        return MaskUpdate(bbox_kji, np.ascontiguousarray(label_kji[sl], dtype=np.uint8).copy())


def union_bbox(a: BBoxKJI, b: BBoxKJI) -> BBoxKJI:
    """Smallest half-open box containing both ``a`` and ``b`` (an empty box is ignored)."""
    if all(hi <= lo for lo, hi in a):
        return b
    if all(hi <= lo for lo, hi in b):
        return a
    return tuple((min(la, lb), max(ha, hb)) for (la, ha), (lb, hb) in zip(a, b))  # type: ignore[return-value]
