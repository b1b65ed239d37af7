"""The one interface every interactive-segmentation backend offers: the local engine and a remote server.

Callers (the Slicer Logic, the CLI, batch jobs) use only these names, never a session's internals
(``session.predictor``, the weights registry), so a ``RemoteSession`` can stand in for ``InteractiveSession``
without changing them. The protocol is structural (:class:`typing.Protocol`): a backend satisfies it by having
the members, with no import of this module; ``isinstance(obj, SegmentationSession)`` checks the names only.

Step semantics shared by every backend:

* a step (``add_click``, ``set_box``, ``clear_box``, ``reset``, ``set_initial_mask``) either succeeds and
  returns the :class:`~SAMVolSegmentLib.engine.mask_update.MaskUpdate` of the region it changed, or raises and
  changes nothing;
* ``undo``/``redo`` restore stored results (no model run) and return the region they changed;
* the history is bounded (in steps and bytes); the oldest steps go first;
* a caller may attach its own data to the newest step (``annotate_last_step``): it travels with that step
  through undo/redo (``last_annotation``) and counts towards the history's byte bound when it has ``nbytes``.
  This is how the Slicer module keeps one history: its segment edits hang on the engine's steps.

Pure typing: importing this module costs nothing (no torch).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from ..errors import InvalidPromptError
from .mask_update import MaskUpdate


def as_point_ras(value: Sequence[float], what: str) -> np.ndarray:
    """``value`` as a float64 (3,) RAS point, or :class:`InvalidPromptError` naming ``what`` ("click", ...)."""
    try:
        point = np.asarray(value, dtype=np.float64).reshape(3)
    except (TypeError, ValueError) as exc:
        raise InvalidPromptError(f"A {what} must be three numbers (R, A, S in mm), got {value!r}") from exc
    if not np.all(np.isfinite(point)):
        raise InvalidPromptError(f"A {what} must be finite, got {point.tolist()}")
    return point


def as_click_sign(positive: Any) -> bool:
    """A click's sign as a bool; only a real bool (or numpy bool) is accepted: ``bool("false")`` and
    ``bool(nan)`` are True, so a string or float would silently become a positive click."""
    if not isinstance(positive, (bool, np.bool_)):
        raise InvalidPromptError(f"A click's sign must be True or False (positive / negative), got {positive!r}.")
    return bool(positive)


@runtime_checkable
class SegmentationSession(Protocol):
    """Click-based segmentation of one volume and one target mask at a time.

    Positions are world RAS millimetres; arrays are in (k, j, i) order on the input volume's grid.
    """

    @property
    def model_id(self) -> str:
        """Stable identifier of the model behind the session (for logs, caches and the status line)."""
        ...

    @property
    def is_ready(self) -> bool:
        """True once the volume's preprocessing has finished, so the next click does not wait for it."""
        ...

    @property
    def can_undo(self) -> bool:
        """True when there is a step to undo."""
        ...

    @property
    def can_redo(self) -> bool:
        """True when there is an undone step to redo."""
        ...

    @property
    def clicks(self) -> Tuple[Any, ...]:
        """The clicks of the current mask (objects with ``point_ras`` and ``positive``)."""
        ...

    @property
    def last_timing(self) -> Dict[str, float]:
        """Seconds spent in the last step by stage (``encode_s``, ``decode_s``, ``paste_s``, ``total_s``)."""
        ...

    @property
    def last_annotation(self) -> Any:
        """Caller data of the step the last step/undo/redo created or moved (None when it had none)."""
        ...

    @property
    def image_warnings(self) -> Tuple[str, ...]:
        """Sentences about the current volume a user should see (e.g. it looks like a label map); empty for an
        ordinary image."""
        ...

    def set_volume(self, image: Any, ijk_to_ras: Optional[np.ndarray] = None) -> None:
        """Start on a volume (SimpleITK image, or array (k, j, i) + 4×4 ``ijk_to_ras``); clears mask and history."""
        ...

    def wait_until_ready(self, timeout: Optional[float] = None) -> None:
        """Block until preprocessing is done; re-raises its error."""
        ...

    def set_initial_mask(self, mask_kji: Optional[np.ndarray]) -> MaskUpdate:
        """Start from an existing mask (edit a segment that is already there); None starts empty.

        Clears clicks and history; the mask seeds the model's mask prompt, so negative clicks can remove its
        voxels, and ``reset`` returns to it.
        """
        ...

    def add_click(self, point_ras: Sequence[float], positive: bool = True) -> MaskUpdate:
        """Add a positive or negative click and update the mask."""
        ...

    def add_scribble(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> MaskUpdate:
        """Add a freehand stroke ((N, 3) world RAS points, an open polyline) inside (positive) or outside
        (negative) the structure; the voxels it passes through keep its sign. One undoable step."""
        ...

    def add_lasso(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> MaskUpdate:
        """Add a closed planar contour ((N ≥ 3, 3) world RAS points); the polygon it encloses on its plane is
        foreground (positive) or background (negative). One undoable step."""
        ...

    def proposal_classes(self) -> Tuple[str, ...]:
        """Class names :meth:`propose` accepts (empty when the model has no proposal head)."""
        ...

    def adapted_classes(self) -> Tuple[str, ...]:
        """Structures the model's clicks from scratch are adapted to (a model taught with ``samvolseg teach`` and
        adapter scope "all"): clicks on other structures differ from the base model's. Empty otherwise."""
        ...

    def propose(self, class_name: str) -> MaskUpdate:
        """Replace the mask with the model's prompt-free proposal for ``class_name`` (an undoable step that
        clicks then refine)."""
        ...

    def set_box(self, min_ras: Sequence[float], max_ras: Sequence[float]) -> MaskUpdate:
        """Limit the mask to an axis-aligned box (world RAS corners)."""
        ...

    def clear_box(self) -> MaskUpdate:
        """Remove the box limit."""
        ...

    def undo(self) -> MaskUpdate:
        """Return to the state before the last step (empty update when there is none)."""
        ...

    def redo(self) -> MaskUpdate:
        """Re-apply the last undone step (empty update when there is none)."""
        ...

    def reset(self) -> MaskUpdate:
        """Back to the initial mask with no clicks (an undoable step)."""
        ...

    def annotate_last_step(self, annotation: Any) -> None:
        """Attach caller data to the newest step (see the module docstring)."""
        ...

    def mask_array_kji(self) -> np.ndarray:
        """The full mask (uint8, 1 = inside) on the input grid; a copy."""
        ...

    def close(self) -> None:
        """Stop background work; the session cannot be used afterwards."""
        ...


#: Every member a backend must have; used by tests and by callers that want a clear error for a wrong object.
#: ``add_scribble`` and ``add_lasso`` are not required: a backend written before them still serves clicks and
#: boxes, and callers check for them when a stroke comes (the Slicer module says the backend lacks strokes).
REQUIRED_MEMBERS = (
    "model_id", "is_ready", "can_undo", "can_redo", "clicks", "last_timing", "last_annotation", "image_warnings",
    "set_volume", "wait_until_ready", "set_initial_mask", "add_click",
    "proposal_classes", "adapted_classes", "propose", "set_box", "clear_box", "undo", "redo", "reset",
    "annotate_last_step", "mask_array_kji", "close",
)


def check_session(session: Any) -> None:
    """Raise ``TypeError`` naming the missing members when ``session`` does not implement the protocol."""
    missing = [name for name in REQUIRED_MEMBERS if not hasattr(type(session), name) and not hasattr(session, name)]
    if missing:
        raise TypeError(
            f"{type(session).__name__} is not a SegmentationSession: it lacks {', '.join(missing)}. "
            "Implement SAMVolSegmentLib.engine.session_protocol.SegmentationSession."
        )
