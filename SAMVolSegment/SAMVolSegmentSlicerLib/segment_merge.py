"""Merge an engine result into a segment the way the Segment Editor would, on plain label arrays.

The engine proposes new content for a box of the target segment (a ``MaskUpdate``). Before it reaches the
segmentation it passes the same rules as a Segment Editor effect:

* **Editable area** (Segment Editor "Masking"): ``MaskMode`` mirrors ``vtkMRMLSegmentationNode``'s
  ``EditAllowed*`` values (everywhere / inside all or visible segments / outside all or visible segments /
  inside one segment), optionally intersected with the source-volume intensity range. Outside the editable
  area the target keeps its current voxels, both for additions and for removals.
* **Other segments** (``OtherSegments``), this module's own setting because erasing finished work is the
  most reported failure of interactive tools:

  - ``PROTECT`` (default): other segments never change. The target does not take their voxels, except under
    an ``INSIDE_*`` mask mode, where the user asked to edit inside them, so the target overlaps them instead.
  - ``OVERLAP``: other segments never change; the target may overlap them.
  - ``OVERWRITE``: voxels the target gets are removed from the other segments, as the Segment Editor's
    ``OverwriteMode`` says (all segments, or only visible ones; ``NONE`` means overlap).

* **Pre-existing content** (``base``): voxels the target had before this interactive session are kept, so a
  click on an existing segment adds to it and never silently erases earlier work (use undo or the Erase
  effect for that).

All arrays are regions of one box in the volume's (k, j, i) grid, of identical shape.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


class MaskMode(enum.Enum):
    """Editable area; names match ``vtkMRMLSegmentationNode.EditAllowed<Name>``."""

    Everywhere = "Everywhere"
    InsideAllSegments = "InsideAllSegments"
    InsideVisibleSegments = "InsideVisibleSegments"
    OutsideAllSegments = "OutsideAllSegments"
    OutsideVisibleSegments = "OutsideVisibleSegments"
    InsideSingleSegment = "InsideSingleSegment"


class OverwriteMode(enum.Enum):
    """Which other segments an addition is removed from; names match ``vtkMRMLSegmentEditorNode.Overwrite<Name>``."""

    AllSegments = "AllSegments"
    VisibleSegments = "VisibleSegments"
    None_ = "None"


class OtherSegments(enum.Enum):
    """What this module may do to segments other than the target (see the module docstring)."""

    PROTECT = "protect"
    OVERLAP = "overlap"
    OVERWRITE = "overwrite"


_INSIDE_MODES = (MaskMode.InsideAllSegments, MaskMode.InsideVisibleSegments, MaskMode.InsideSingleSegment)


@dataclass(frozen=True)
class EditPolicy:
    """The rules one write follows.

    Attributes:
        mask_mode: Segment Editor editable area.
        mask_segment_id: the segment for ``InsideSingleSegment``.
        intensity_range: inclusive (low, high) source-volume range, or ``None`` when intensity masking is off.
        other_segments: this module's rule for other segments.
        overwrite_mode: Segment Editor overwrite setting, used only with ``OtherSegments.OVERWRITE``.
    """

    mask_mode: MaskMode = MaskMode.Everywhere
    mask_segment_id: Optional[str] = None
    intensity_range: Optional[Tuple[float, float]] = None
    other_segments: OtherSegments = OtherSegments.PROTECT
    overwrite_mode: OverwriteMode = OverwriteMode.AllSegments


@dataclass(frozen=True)
class OtherSegment:
    """Another segment's voxels in the box (bool) and whether it is shown."""

    segment_id: str
    region: np.ndarray
    visible: bool = True


@dataclass
class MergeResult:
    """New content of the box: the target's, and each *changed* other segment's (bool arrays)."""

    target: np.ndarray
    others: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def changed_segment_ids(self) -> Tuple[str, ...]:
        """IDs of the other segments this write modifies."""
        return tuple(self.others)


def _union(regions: Sequence[np.ndarray], shape: Tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for region in regions:
        out |= region
    return out


def editable_area(
    shape: Tuple[int, ...],
    others: Sequence[OtherSegment],
    policy: EditPolicy,
    intensity: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Bool array of the voxels the target may change under ``policy.mask_mode`` and the intensity range.

    Raises:
        ValueError: ``InsideSingleSegment`` without a known mask segment, or an intensity range without the
            intensity region.
    """
    mode = policy.mask_mode
    if mode is MaskMode.Everywhere:
        area = np.ones(shape, dtype=bool)
    elif mode is MaskMode.InsideSingleSegment:
        matches = [o.region for o in others if o.segment_id == policy.mask_segment_id]
        if not matches:
            raise ValueError(
                f"Masking segment {policy.mask_segment_id!r} not found: pick it again in the Segment Editor's "
                "'Editable area', or set the editable area to 'Everywhere'."
            )
        area = matches[0].astype(bool, copy=True)
    else:
        visible_only = mode in (MaskMode.InsideVisibleSegments, MaskMode.OutsideVisibleSegments)
        union = _union([o.region for o in others if o.visible or not visible_only], shape)
        area = union if mode in _INSIDE_MODES else ~union
    if policy.intensity_range is not None:
        if intensity is None:
            raise ValueError("Intensity masking needs the source volume's intensities of the region.")
        low, high = policy.intensity_range
        area &= (intensity >= low) & (intensity <= high)
    return area


def merge_region(
    current: np.ndarray,
    proposed: np.ndarray,
    others: Sequence[OtherSegment] = (),
    policy: EditPolicy = EditPolicy(),
    intensity: Optional[np.ndarray] = None,
    base: Optional[np.ndarray] = None,
) -> MergeResult:
    """Apply the engine's proposal for a box to the target segment under ``policy``.

    Args:
        current: the target segment's voxels in the box now (bool).
        proposed: the engine's mask for the box (``MaskUpdate.mask``; non-zero = inside).
        others: every other segment of the segmentation, cut to the box.
        policy: masking and overlap rules.
        intensity: source-volume intensities of the box, needed when ``policy.intensity_range`` is set.
        base: the target's voxels before the interactive session started (kept; see the module docstring).

    Returns:
        the target's new box content and the new content of the other segments it takes voxels from.
    """
    current = np.asarray(current, dtype=bool)
    shape = current.shape
    wanted = np.asarray(proposed) != 0
    if wanted.shape != shape:
        raise ValueError(f"Proposed mask shape {wanted.shape} differs from the segment region {shape}")
    if base is not None:
        wanted = wanted | np.asarray(base, dtype=bool)
    area = editable_area(shape, others, policy, intensity)

    if policy.other_segments is OtherSegments.PROTECT and policy.mask_mode not in _INSIDE_MODES:
        # A protected voxel the target does not already hold stays out of the target.
        occupied = _union([o.region for o in others], shape)
        wanted = wanted & ~(occupied & ~current)

    target = np.where(area, wanted, current)
    result = MergeResult(target=target)
    if policy.other_segments is OtherSegments.OVERWRITE and policy.overwrite_mode is not OverwriteMode.None_:
        taken = target & area
        visible_only = policy.overwrite_mode is OverwriteMode.VisibleSegments
        for other in others:
            if visible_only and not other.visible:
                continue
            region = np.asarray(other.region, dtype=bool)
            if np.any(region & taken):
                result.others[other.segment_id] = region & ~taken
    return result
