"""Undo/redo bookkeeping of what the module wrote into the segmentation, one entry per engine step.

The engine undoes its own state (clicks, logits, its mask), but the segmentation can differ from the engine's
mask: masking, protected or overwritten segments, and pre-existing voxels all shape what was written. So every
write records the exact before/after content of each box of each segment it touched, and undo/redo restore
those bytes instead of re-deriving them. One entry here always matches one engine step: the logic pushes only
after the engine step succeeded and calls ``session.undo()`` / ``session.redo()`` alongside ``undo`` /
``redo`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from SAMVolSegmentLib.mask_update import BBoxKJI

#: Entries kept; the engine's own history (``InteractiveSession(max_undo=100)``) is at least this deep.
DEFAULT_MAX_STEPS = 100


@dataclass(frozen=True)
class RegionEdit:
    """One segment's box before and after a write (bool arrays of the box's shape, (k, j, i) order)."""

    segment_id: str
    bbox_kji: BBoxKJI
    before: np.ndarray
    after: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(hi) - int(lo) for lo, hi in self.bbox_kji)
        if self.before.shape != shape or self.after.shape != shape:
            raise ValueError(f"RegionEdit arrays {self.before.shape}/{self.after.shape} do not match box {shape}")

    @property
    def nbytes(self) -> int:
        """Memory held by this edit."""
        return int(self.before.nbytes + self.after.nbytes)


@dataclass(frozen=True)
class Prompt:
    """The user action behind a step, so undo can hide its marker and redo can show it again.

    Attributes:
        kind: ``"point"`` or ``"box"``.
        positive: sign of a point (True for a box).
        position_ras: world RAS of a point, or ``(min_ras, max_ras)`` flattened to 6 values for a box.
        marker_id: the markups control point ID (or ROI node ID) that shows it; empty when none.
    """

    kind: str
    positive: bool = True
    position_ras: Tuple[float, ...] = ()
    marker_id: str = ""


@dataclass(frozen=True)
class EditStep:
    """A prompt and every region it changed."""

    prompt: Prompt
    edits: Tuple[RegionEdit, ...] = ()

    @property
    def nbytes(self) -> int:
        """Memory held by this step."""
        return sum(edit.nbytes for edit in self.edits)


@dataclass
class EditHistory:
    """Linear undo/redo of :class:`EditStep` s, bounded in count."""

    max_steps: int = DEFAULT_MAX_STEPS
    _undo: List[EditStep] = field(default_factory=list)
    _redo: List[EditStep] = field(default_factory=list)

    @property
    def can_undo(self) -> bool:
        """True when there is a step to undo."""
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        """True when there is an undone step to redo."""
        return bool(self._redo)

    @property
    def steps(self) -> Tuple[EditStep, ...]:
        """Done steps, oldest first."""
        return tuple(self._undo)

    @property
    def nbytes(self) -> int:
        """Memory held by all recorded regions."""
        return sum(step.nbytes for step in self._undo + self._redo)

    def push(self, step: EditStep) -> int:
        """Record a new step (drops the redo branch); returns how many of the oldest steps were dropped."""
        self._undo.append(step)
        self._redo.clear()
        dropped = max(0, len(self._undo) - self.max_steps)
        del self._undo[:dropped]
        return dropped

    def undo(self) -> Optional[EditStep]:
        """Move the last step to the redo branch and return it (restore its ``before`` arrays), or None."""
        if not self._undo:
            return None
        step = self._undo.pop()
        self._redo.append(step)
        return step

    def redo(self) -> Optional[EditStep]:
        """Move the last undone step back and return it (write its ``after`` arrays), or None."""
        if not self._redo:
            return None
        step = self._redo.pop()
        self._undo.append(step)
        return step

    def undo_all(self) -> List[EditStep]:
        """Undo every step, newest first (restore their ``before`` arrays in this order); clears redo too."""
        steps = list(reversed(self._undo))
        self.clear()
        return steps

    def clear(self) -> None:
        """Forget everything (accepting a segment makes its history final)."""
        self._undo.clear()
        self._redo.clear()
