"""Click simulation: where a simulated user clicks next, one copy for evaluation, the CVPR25 protocol,
training and the session's ROI placement.

All work is on a voxel grid in array order (k, j, i) with its spacing (mm, same order); clicks come back as
integer voxel indices ``IndexKJI`` (:meth:`~SAMVolSegmentLib.engine.geometry.VolumeGeometry.index_to_ras` gives their
RAS position). Deterministic: no randomness except the CVPR25 rule's fixed-seed tie-break.

* :func:`first_click`: positive, at the target's deepest point (farthest from its border, volume edge included);
* :func:`next_click`: the deepest point of the largest 26-connected error component (:func:`largest_error`),
  positive for a miss and negative for a false positive, or None when the prediction is exact;
* :class:`ClickRule`: this project's rule (:data:`SAMVOLSEG_CLICKS`) or the CVPR 2025 challenge's
  (:data:`CVPR25_CLICKS`), which differ in how errors are grouped, depth is measured and ties are broken;
* :func:`deepest_point_roi`: the deepest point of a low-res mask as ROI voxel coordinates (the session's
  placement of a new ROI window around an existing segment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .geometry import IndexKJI, bbox_slices, mask_bbox

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class ClickRule:
    """Where the next simulated click goes in a prediction's errors; one code path, two protocols.

    Attributes:
        name: "samvolseg" (this project's protocol) or "cvpr25" (the CVPR 2025 challenge's).
        split_signs: True: misses (``target & ~prediction``) and false positives are separate error sets, so
            a component is all miss or all false positive, and a miss wins a tie in size. False: one error set
            ``target != prediction`` (the challenge's ``segs_cls != gts_cls``), whose components may mix both;
            the click's sign is the target's value at the chosen voxel.
        depth_in_mm: depth = distance to the component's border in mm (voxel spacing) or in voxels (the
            challenge's ``distance_transform_edt`` without ``sampling``).
        tie_break: among equally deep voxels, "centroid" takes the one nearest their centroid (mm; then C
            order); "seeded" takes ``np.random.RandomState(42).choice`` over them in C order — what the
            challenge's ``np.random.seed(42)`` + ``np.random.choice`` over ``np.argwhere`` picks.
        downsample_above_voxels: the challenge max-pools the component's padded crop 2×2×2 before the
            distance transform when the crop exceeds this many voxels (and repeats the depths back up); None:
            always at full resolution.
    """

    name: str
    split_signs: bool
    depth_in_mm: bool
    tie_break: str
    downsample_above_voxels: Optional[int] = None


SAMVOLSEG_CLICKS = ClickRule("samvolseg", split_signs=True, depth_in_mm=True, tie_break="centroid")
#: The rule of ``CVPR25_iter_eval.py``: errors of both signs as one set, depth in voxels, seed-42 tie-break,
#: 2× downsampling of crops above 60 M voxels (its ``compute_edt``).
CVPR25_CLICKS = ClickRule("cvpr25", split_signs=False, depth_in_mm=False, tie_break="seeded",
                          downsample_above_voxels=60_000_000)
_TIE_BREAK_SEED = 42


def _depth(region: np.ndarray, sampling: Optional[Sequence[float]], downsample_above: Optional[int]) -> np.ndarray:
    """Distance of each voxel of a cropped region (K, J, I) to its border (the crop's outside is border)."""
    shape = np.array(region.shape)
    # The challenge pads a quarter of the extent (at least 1) before deciding; any padding ≥ 1 gives the same
    # full-resolution distances, but the size test and the pooling blocks' alignment depend on it.
    pad = np.maximum((shape * 0.25).astype(int), 1)
    if downsample_above is None or int(np.prod(shape + 2 * pad)) <= downsample_above:
        return ndimage.distance_transform_edt(np.pad(region, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    # The challenge's large-crop path: max-pool 2×2×2 (zeros fill the last partial block), distance transform
    # in pooled voxels, repeat back up and crop the padding off.
    padded = np.pad(region, [(int(p), int(p)) for p in pad])
    even = np.pad(padded, [(0, n % 2) for n in padded.shape])
    pooled = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2, even.shape[2] // 2, 2).max(axis=(1, 3, 5))
    depth = ndimage.distance_transform_edt(pooled, sampling=sampling)
    depth = depth.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return depth[tuple(slice(p, p + n) for p, n in zip(pad, shape))]


def deepest_point(region: np.ndarray, spacing_kji: Sequence[float], rule: ClickRule = SAMVOLSEG_CLICKS) -> IndexKJI:
    """Voxel (k, j, i) of a non-empty binary region farthest from the region's border.

    The border includes the volume's edge. Depth and ties follow ``rule``: by default depth in mm and, among
    equally deep voxels (a plateau), the one nearest the plateau's centroid (mm), then the first in C order.
    """
    region = np.asarray(region).astype(bool)
    if not region.any():
        raise ValueError("deepest_point needs a non-empty region")
    box = bbox_slices(mask_bbox(region))  # type: ignore[arg-type]
    crop = region[box]
    depth = _depth(crop, spacing_kji if rule.depth_in_mm else None, rule.downsample_above_voxels)
    depth = depth * crop  # pooled depths can spill onto voxels outside the region
    if not depth.any():  # only after pooling: the challenge then draws from the whole region
        depth = crop.astype(np.float64)
    if rule.tie_break == "seeded":
        # Exact float equality as in the challenge; C order within the crop is C order within the volume.
        candidates = np.argwhere(depth == depth.max())
        local = candidates[np.random.RandomState(_TIE_BREAK_SEED).choice(len(candidates))]
    else:
        # Plateaus of equal depth are common (slabs, boxes): take the plateau voxel nearest its own centroid,
        # so the click lands in the middle rather than at the plateau's first voxel.
        candidates = np.argwhere(depth >= depth.max() * (1 - 1e-9))
        offsets_mm = (candidates - candidates.mean(axis=0)) * np.asarray(spacing_kji, dtype=np.float64)
        local = candidates[int(np.argmin(np.einsum("ij,ij->i", offsets_mm, offsets_mm)))]
    return tuple(int(v) + int(s.start) for v, s in zip(local, box))  # type: ignore[return-value]


def first_click(target: np.ndarray, spacing_kji: Sequence[float]) -> Tuple[IndexKJI, bool]:
    """The first simulated click: positive, at the target's deepest point."""
    return deepest_point(target, spacing_kji), True


def largest_error(
    target: np.ndarray, prediction: np.ndarray, rule: ClickRule = SAMVOLSEG_CLICKS,
) -> Optional[Tuple[np.ndarray, Tuple[slice, ...]]]:
    """The largest error component of a prediction, as :func:`next_click` chooses it.

    Components are 26-connected; the largest has the most voxels (voxels all have one volume, so also the
    most mm³); equal sizes go to the first in C order (and, with ``rule.split_signs``, to a miss over a false
    positive).

    Returns:
        ``(component, box)``: a bool (k, j, i) mask of the component within ``box`` (slices of the volume's
        array, the errors' bounding box), or None when the prediction equals the target.
    """
    target, prediction = np.asarray(target).astype(bool), np.asarray(prediction).astype(bool)
    if rule.split_signs:
        error_sets = [target & ~prediction, prediction & ~target]
    else:
        error_sets = [target != prediction]
    best: Optional[Tuple[int, np.ndarray, Tuple[slice, ...]]] = None
    for error in error_sets:
        if not error.any():
            continue
        # Labelling only the errors' box keeps large volumes cheap.
        box = bbox_slices(mask_bbox(error))  # type: ignore[arg-type]
        components, _ = ndimage.label(error[box], structure=_CONNECTIVITY_26)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), components == largest + 1, box)
    return None if best is None else (best[1], best[2])


def next_click(
    target: np.ndarray, prediction: np.ndarray, spacing_kji: Sequence[float], rule: ClickRule = SAMVOLSEG_CLICKS,
) -> Optional[Tuple[IndexKJI, bool]]:
    """The next simulated click: the deepest point of the largest error component (:func:`largest_error`),
    and its sign.

    Returns:
        ``((k, j, i), positive)`` — positive where the target is foreground (a miss) — or None when the
        prediction equals the target.
    """
    error = largest_error(target, prediction, rule)
    if error is None:
        return None
    component, box = error
    local = deepest_point(component, spacing_kji, rule)
    index = tuple(int(v) + int(s.start) for v, s in zip(local, box))
    return index, bool(np.asarray(target)[index])  # type: ignore[return-value]


def deepest_point_roi(mask_low: np.ndarray, roi_size: int) -> Optional[np.ndarray]:
    """(3,) ROI voxel coordinates (R, A, S) of the deepest point of a cubic low-res mask (low, low, low) in
    ROI tensor order, or None when the mask is empty.

    Depth is in low-res voxels (the grid is isotropic). Low-res sample ``c`` sits at ROI coordinate
    ``(c + 0.5) * roi_size / low - 0.5``: the reference upsamples with ``align_corners=False`` (see
    :meth:`~SAMVolSegmentLib.engine.geometry.RoiWindow.lowres_affine_ras`).
    """
    if not mask_low.any():
        return None
    index = np.array(deepest_point(mask_low, (1.0, 1.0, 1.0)), dtype=np.float64)
    scale = roi_size / mask_low.shape[0]
    return (index + 0.5) * scale - 0.5
