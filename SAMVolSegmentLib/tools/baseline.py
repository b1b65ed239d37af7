"""A classical seeded baseline for the same clicks the model gets: SimpleITK region growing.

Each positive click grows a region on the Gaussian-smoothed image (``SMOOTHING_SIGMA_MM``):

1. intensity interval = the seed's smoothed value ± ``K_STD`` × the standard deviation of a small box around
   it (``SEED_RADIUS_MM``), clipped to [``MIN_HALF_WIDTH``, ``MAX_HALF_WIDTH``] × the image's robust intensity
   range (1st–99th percentile), so a flat neighbourhood still grows and an edge seed does not take everything;
2. threshold, then a binary opening (``OPENING_RADIUS_MM``) that cuts the thin bridges through which region
   growing leaks into neighbouring structures (skipped when the seed itself would be opened away);
3. the connected component containing the seed, inside a cube of ``WINDOW_MM`` around the seed — the extent
   of the model's 128-voxel ROI at 1.5 mm, so both methods see the same neighbourhood.

The union over positive clicks is then split between all clicks: a voxel stays only if its nearest click
(Euclidean, mm) is positive — this is how a negative click cuts a leak off. Holes are filled in 3D. The
constants are fixed for every case (no per-case tuning) and everything is deterministic. Each seed's region
is cached, so a new click costs one growing step.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..engine.geometry import IndexKJI, bbox_around, bbox_shape, bbox_slices, index_in_shape, mask_bbox
from ..errors import InvalidPromptError

#: Name used in reports and plots.
BASELINE_NAME = "SimpleITK connected-threshold region growing"
SMOOTHING_SIGMA_MM = 1.0
SEED_RADIUS_MM = 3.0
K_STD = 2.5
MIN_HALF_WIDTH = 0.05
MAX_HALF_WIDTH = 0.10
OPENING_RADIUS_MM = 2.0
WINDOW_MM = 192.0
EDGE_WIDTH_FACTOR = 2.0


class RegionGrowing:
    """The baseline for one image; smoothing, intensity range and each seed's region are computed once.

    Args:
        image: the intensity volume (any scalar pixel type).
    """

    def __init__(self, image: sitk.Image) -> None:
        self.shape_kji = tuple(image.GetSize()[::-1])
        self.spacing_kji = tuple(float(v) for v in image.GetSpacing()[::-1])
        self.raw = sitk.Cast(image, sitk.sitkFloat32)
        self.smooth = sitk.SmoothingRecursiveGaussian(self.raw, SMOOTHING_SIGMA_MM)
        self.smooth_kji = sitk.GetArrayViewFromImage(self.smooth)
        lo, hi = np.percentile(self.smooth_kji[:, ::4, ::4], [1, 99])  # a subsample is plenty for a range
        self.min_half_width = max(float(hi - lo) * MIN_HALF_WIDTH, 1e-6)
        self.max_half_width = max(float(hi - lo) * MAX_HALF_WIDTH, self.min_half_width)
        self._regions: Dict[IndexKJI, Tuple[Tuple[slice, ...], np.ndarray]] = {}

    def interval(self, seed_kji: IndexKJI) -> Tuple[float, float]:
        """(lower, upper) smoothed intensity accepted for the region grown from ``seed_kji``."""
        radius = [max(int(round(SEED_RADIUS_MM / s)), 0) for s in self.spacing_kji]
        values = np.asarray(self.smooth_kji[bbox_slices(bbox_around(seed_kji, radius, self.shape_kji))], np.float64)
        half = min(max(K_STD * float(values.std()), self.min_half_width), self.max_half_width)
        centre = float(self.smooth_kji[seed_kji])
        return centre - half, centre + half

    def grow(self, seed_kji: IndexKJI) -> Tuple[Tuple[slice, ...], np.ndarray]:
        """The region of one seed: (window slices (k, j, i), bool mask of the window's shape); cached."""
        if seed_kji in self._regions:
            return self._regions[seed_kji]
        half = [int(round(WINDOW_MM / 2 / s)) for s in self.spacing_kji]
        window = bbox_slices(bbox_around(seed_kji, half, self.shape_kji))
        lower, upper = self.interval(seed_kji)
        inside = sitk.BinaryThreshold(_crop(self.smooth, window), lower, upper, 1, 0)
        seed_ijk = [int(c - w.start) for c, w in zip(seed_kji, window)][::-1]
        component = sitk.ConnectedThreshold(inside, seedList=[seed_ijk], lower=1, upper=1, replaceValue=1)
        # The opening's result around the seed depends only on the seed's own component, so it runs on that
        # component's bounding box (plus the kernel) instead of the whole window: same mask, far less work.
        radius_kji = [int(round(OPENING_RADIUS_MM / s)) for s in self.spacing_kji]
        box = bbox_slices(mask_bbox(sitk.GetArrayViewFromImage(component), [r + 1 for r in radius_kji]))  # type: ignore[arg-type]
        component = _crop(component, box)
        window = tuple(slice(w.start + b.start, w.start + b.stop) for w, b in zip(window, box))
        seed_ijk = [int(c - w.start) for c, w in zip(seed_kji, window)][::-1]
        opened = sitk.BinaryMorphologicalOpening(component, radius_kji[::-1], sitk.sitkBall)
        if not opened[seed_ijk]:
            opened = component  # the seed lies in a structure thinner than the opening: keep it unopened
        grown = sitk.ConnectedThreshold(opened, seedList=[seed_ijk], lower=1, upper=1, replaceValue=1)
        # Smoothing and opening shave about one voxel off every border: give back the adjacent voxels whose
        # unsmoothed intensity is within a wider interval (hysteresis), without letting growth continue.
        width = (upper - lower) / 2 * EDGE_WIDTH_FACTOR
        centre = (upper + lower) / 2
        edge = sitk.BinaryThreshold(_crop(self.raw, window), centre - width, centre + width, 1, 0)
        grown = sitk.Or(grown, sitk.And(sitk.BinaryDilate(grown, [1, 1, 1], sitk.sitkCross), edge))
        region = (window, sitk.GetArrayFromImage(grown).astype(bool))
        self._regions[seed_kji] = region
        return region

    def segment(self, clicks_kji: Sequence[Tuple[IndexKJI, bool]]) -> np.ndarray:
        """uint8 (K, J, I) mask from ``((k, j, i), positive)`` clicks; empty without a positive click."""
        clicks = [(tuple(int(v) for v in idx), bool(positive)) for idx, positive in clicks_kji]
        for idx, _ in clicks:
            if not index_in_shape(idx, self.shape_kji):
                raise InvalidPromptError(f"Click {idx} (k, j, i) lies outside the volume {self.shape_kji}.")
        positives = list(dict.fromkeys(idx for idx, positive in clicks if positive))
        negatives = list(dict.fromkeys(idx for idx, positive in clicks if not positive))
        mask = np.zeros(self.shape_kji, np.uint8)
        for seed in positives:
            window, region = self.grow(seed)
            mask[window] |= region
        if negatives and mask.any():
            mask = self._cut_by_nearest_click(mask, positives, negatives)
        if mask.any():
            box = bbox_slices(mask_bbox(mask, pad=1))  # type: ignore[arg-type]
            mask[box] = ndimage.binary_fill_holes(mask[box])
        return mask

    def _cut_by_nearest_click(self, mask: np.ndarray, positives: List[IndexKJI], negatives: List[IndexKJI]) -> np.ndarray:
        """Keep the voxels of ``mask`` whose nearest click (mm) is positive; works on the mask's bounding box."""
        bbox = mask_bbox(mask)
        box = bbox_slices(bbox)  # type: ignore[arg-type]
        seeds = np.zeros(bbox_shape(bbox), np.int32)  # type: ignore[arg-type]  # 0 = no click, 1 = positive, 2 = negative
        for code, points in ((1, positives), (2, negatives)):
            for point in points:
                local = tuple(p - s.start for p, s in zip(point, box))
                if index_in_shape(local, seeds.shape):
                    seeds[local] = code
        if not (seeds == 2).any():
            return mask
        _, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=self.spacing_kji, return_indices=True)
        owner = seeds[tuple(nearest)]
        out = mask.copy()
        out[box] &= (owner == 1).astype(np.uint8)
        return out


def _crop(image: sitk.Image, box_kji: Tuple[slice, ...]) -> sitk.Image:
    """``image`` restricted to a (k, j, i) box (SimpleITK slicing is (i, j, k))."""
    return image[box_kji[2], box_kji[1], box_kji[0]]


def region_grow(image: sitk.Image, clicks_kji: Sequence[Tuple[IndexKJI, bool]]) -> np.ndarray:
    """Segment from clicks with :class:`RegionGrowing` (one-off; reuse the class for several steps).

    Args:
        image: the intensity volume (any scalar type).
        clicks_kji: ``((k, j, i), positive)`` voxel indices in array order with their sign.
    Returns:
        uint8 (K, J, I) mask; empty when there is no positive click.
    """
    return RegionGrowing(image).segment(clicks_kji)
