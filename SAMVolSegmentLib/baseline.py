"""A classical seeded baseline for the same clicks the model gets: SimpleITK confidence-connected growing.

Positive clicks are the seeds; the intensity interval is mean ± m·std of the seeds' neighbourhoods, refined
iteratively (``ConfidenceConnected``). A negative click inside the result tightens the interval (smaller m)
until that click falls outside, which is how a user would steer a region-growing tool. Holes are filled.
No parameter is tuned per case.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

#: Interval multipliers tried from wide to narrow; the first one that excludes every negative click wins.
MULTIPLIERS = (2.5, 2.0, 1.5, 1.0, 0.5)
SMOOTHING_SIGMA_MM = 1.0


def region_grow(image: sitk.Image, clicks_kji: Sequence[Tuple[Tuple[int, int, int], bool]]) -> np.ndarray:
    """Segment from clicks by confidence-connected region growing.

    Args:
        image: the intensity volume (any scalar type).
        clicks_kji: ``((k, j, i), positive)`` voxel indices in array order with their sign.
    Returns:
        uint8 (K, J, I) mask; empty when there is no positive click.
    """
    shape_kji = image.GetSize()[::-1]
    positives = [tuple(int(v) for v in idx) for idx, positive in clicks_kji if positive]
    negatives = [tuple(int(v) for v in idx) for idx, positive in clicks_kji if not positive]
    if not positives:
        return np.zeros(shape_kji, np.uint8)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), SMOOTHING_SIGMA_MM)
    seeds_ijk = [idx[::-1] for idx in positives]
    mask = np.zeros(shape_kji, np.uint8)
    for multiplier in MULTIPLIERS:
        grown = sitk.ConfidenceConnected(
            smooth, seedList=seeds_ijk, numberOfIterations=2, multiplier=multiplier, initialNeighborhoodRadius=1,
            replaceValue=1,
        )
        grown = sitk.BinaryFillhole(grown)
        mask = sitk.GetArrayFromImage(grown).astype(np.uint8)
        if not any(mask[idx] for idx in negatives):
            break
    return mask
