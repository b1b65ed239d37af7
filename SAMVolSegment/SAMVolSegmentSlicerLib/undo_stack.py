"""What one engine step wrote into the segmentation, kept on that engine step for undo/redo.

The engine undoes its own state (clicks, logits, its mask), but the segmentation can differ from the engine's
mask: masking, protected or overwritten segments all shape what was written. So every write records the exact
before/after content of each box of each segment it touched, and undo/redo restore those bytes instead of
re-deriving them. There is one history, the engine's: the Logic attaches each :class:`EditStep` to the engine
step it came from (``session.annotate_last_step``), gets it back from ``session.last_annotation`` after
``undo``/``redo``, and the engine's byte bound counts it (``EditStep.nbytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from SAMVolSegmentLib.engine.mask_update import BBoxKJI


@dataclass(frozen=True)
class StoredPatch:
    """What a write changed in a segment *as Slicer stores it*: a box of the grid of the segment's labelmap layer
    (which may differ from the volume's: a cropped input, an oversampled segmentation, a moved volume), before
    and after. Undo and redo write these bytes back, so the stored voxels come back exactly.

    ``grid`` is the layer's image-to-segmentation matrix (16 values, row-major) the box indexes.
    """

    grid: Tuple[float, ...]
    bbox_kji: BBoxKJI
    before: np.ndarray
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes)


@dataclass(frozen=True)
class RegionEdit:
    """One segment's box before and after a write (bool arrays of the box's shape, (k, j, i) order, on the volume's
    grid, as the merge saw it), and what the write changed on the segment's stored grid (``stored``, once
    written)."""

    segment_id: str
    bbox_kji: BBoxKJI
    before: np.ndarray
    after: np.ndarray
    stored: Optional[StoredPatch] = None

    def __post_init__(self) -> None:
        shape = tuple(int(hi) - int(lo) for lo, hi in self.bbox_kji)
        if self.before.shape != shape or self.after.shape != shape:
            raise ValueError(f"RegionEdit arrays {self.before.shape}/{self.after.shape} do not match box {shape}")

    @property
    def nbytes(self) -> int:
        """Memory held by this edit."""
        return int(self.before.nbytes + self.after.nbytes) + (self.stored.nbytes if self.stored else 0)


@dataclass(frozen=True)
class Prompt:
    """The user action behind a step, so undo can hide its marker and redo can show it again.

    Attributes:
        kind: ``"point"``, ``"box"``, ``"scribble"``, ``"lasso"``, ``"proposal"`` (``propose``: the engine's own
            positive click, at the proposal's deepest point, stands for it) or ``"prompts"`` (a whole prompt set:
            ``segmentVolume``, no marker).
        positive: sign of a point, scribble or lasso (True for a box or a proposal).
        position_ras: world RAS of a point or of a proposal's click, ``(min_ras, max_ras)`` flattened to 6
            values for a box, or the N points sent for a scribble or lasso flattened to 3N values (its marker is
            drawn through them again on redo).
        marker_id: the markups control point ID (or ROI node ID, or a stroke's marker curve node ID) that shows
            it; empty when none.
        label: the class name of a proposal (its marker's label).
        hidden_markers: the markers a proposal hid: it replaces the mask and every prompt before it, so their
            markers are hidden while it stands and shown again when it is undone.
    """

    kind: str
    positive: bool = True
    position_ras: Tuple[float, ...] = ()
    marker_id: str = ""
    label: str = ""
    hidden_markers: Tuple[str, ...] = ()


@dataclass
class EditStep:
    """A prompt and every region it changed.

    Mutable on purpose: redo shows the prompt's marker again as a new control point, whose ID Slicer
    generates (``vtkMRMLMarkupsNode::GenerateUniqueControlPointID``), and the next undo must find that one.
    """

    prompt: Prompt
    edits: Tuple[RegionEdit, ...] = ()

    @property
    def nbytes(self) -> int:
        """Memory held by this step."""
        return sum(edit.nbytes for edit in self.edits)
