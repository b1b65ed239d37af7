"""Interactive state of one volume + one segment: clicks, ROIs, the mask, and undo/redo.

Flow of a click (all positions in world RAS millimetres, as Slicer gives them):

1. the click picks a ROI of the 1.5 mm model grid: the ROI whose interior contains it, else a new 128³ ROI
   centred on it (earlier clicks that fall inside are carried over, the current mask seeds the mask prompt);
2. the ROI's embedding comes from the cache, or the encoder runs once for it;
3. the decoder runs on all clicks of that ROI plus the ROI's previous low-res logits;
4. the logits are resampled onto the original voxel grid and thresholded; the changed box is returned as a
   :class:`MaskUpdate`, and when the mask reaches a ROI face, a neighbouring ROI continues it.

Every step is recorded with the box content before and after it, so undo/redo recompute nothing.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InvalidPromptError, SessionStateError
from ..model.proposal_head import class_index, click_adapted_classes, proposal_classes
from .clicks import deepest_point_roi
from .geometry import (
    ModelGrid,
    RoiWindow,
    VolumeGeometry,
    bbox_shape,
    box_corners,
    lps_to_ras,
    mask_bbox,
    ordered_box,
    overlap_slices,
)
from .image_checks import warn_about_image
from .mask_update import BBoxKJI, MaskUpdate, union_bbox
from .predictor import Predictor
from .preprocessing import (
    ModelVolume,
    Volume,
    crop_roi,
    load_volume,
    paste_back_logits,
    resample_to_model_grid,
)
from .prompts_io import MAX_CLICKS  # one limit for the session and prompt files (the reason is there)
from .proposals import PROPOSAL_PROMPT_GAIN, edit_sigma_low, local_edit, propose_logits
from .session_protocol import as_click_sign, as_point_ras
from .strokes import StrokePrompt, apply_drawn, lasso_prompt, scribble_prompt
from .threads import ThreadPolicy, torch_threads

ProgressCallback = Callable[[float, str], None]
RoiKey = Tuple[int, int, int]

#: A click this many model voxels (1.5 mm) or more inside a ROI's faces reuses that ROI's embedding.
ROI_INTERIOR_MARGIN = 16
#: Low-res voxels from a ROI face within which foreground counts as "touching the border".
BORDER_TOUCH_LOWRES = 1
#: How many neighbouring ROIs one click may open to continue a mask that reaches a ROI face.
MAX_EXTENSIONS_PER_CLICK = 2
#: Logit given to the seed mask prompt of a new ROI (binary mask → ±value); the CVPR-branch reference
#: feeds the previous segmentation as a binary mask.
SEED_MASK_LOGIT = 1.0
#: ``coarse_context``: the context ROI's voxels are this many model voxels (3 mm: a 384 mm field for 128³).
CONTEXT_SPACING_FACTOR = 2
#: ``coarse_context``: the context mask is used when it reaches this far (mm) beyond the first ROI's faces.
CONTEXT_BEYOND_ROI_MM = 6.0


@dataclass(frozen=True)
class Click:
    """A user click: world position (RAS mm) and sign."""

    point_ras: np.ndarray
    positive: bool


@dataclass(frozen=True)
class _RoiState:
    roi: RoiWindow
    logits: Optional[torch.Tensor]  # (1,1,L,L,L) last low-res logits of this ROI; never mutated in place
    # Set for a ROI that holds a proposal: each decode changes the mask only near the newest click (a Gaussian
    # of this σ in low-res voxels) and keeps the previous logits elsewhere (proposals.local_edit).
    edit_sigma_low: Optional[float] = None


@dataclass(frozen=True)
class _Snapshot:
    """Everything a step changes except the label array (which is restored from stored boxes)."""

    clicks: Tuple[Click, ...] = ()
    rois: Tuple[Tuple[RoiKey, _RoiState], ...] = ()
    active_roi: Optional[RoiKey] = None
    box_ras: Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = None
    #: Clicks placed through ``add_click`` and those a scribble or lasso gives the model (at most
    #: :data:`MAX_CLICKS`). ``clicks`` also holds those the engine adds (a box's centre, a proposal's anchor, the
    #: seed of an extension ROI), which no caller can count ahead.
    user_clicks: int = 0
    #: Scribbles and lassos of this mask, oldest first: the voxels they decide win over every later decode.
    drawn: Tuple[StrokePrompt, ...] = ()


@dataclass(frozen=True)
class _PackedRegion:
    """A MaskUpdate stored as packed bits (8× smaller) for the history."""

    bbox_kji: BBoxKJI
    bits: np.ndarray

    @staticmethod
    def pack(update: MaskUpdate) -> _PackedRegion:
        return _PackedRegion(update.bbox_kji, np.packbits(update.mask.astype(bool), axis=None))

    def unpack(self) -> MaskUpdate:
        shape = tuple(hi - lo for lo, hi in self.bbox_kji)
        count = int(np.prod(shape))
        return MaskUpdate(self.bbox_kji, np.unpackbits(self.bits, count=count).reshape(shape))

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


@dataclass
class _Step:
    before: _Snapshot
    after: _Snapshot
    region_before: _PackedRegion
    region_after: _PackedRegion
    annotation: Any = None  # caller data (annotate_last_step); counted in nbytes when it has one
    #: Bytes of the low-res logits this step created (its ``after`` holds them; unchanged ROIs share the
    #: tensors of ``before``): 1 MB per click for 64³ logits, which the byte bound must count.
    logits_nbytes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.logits_nbytes = _new_logits_nbytes(self.before, self.after)

    @property
    def nbytes(self) -> int:
        extra = int(getattr(self.annotation, "nbytes", 0) or 0)
        return self.region_before.nbytes + self.region_after.nbytes + self.logits_nbytes + extra


def _new_logits_nbytes(before: _Snapshot, after: _Snapshot) -> int:
    """Bytes of the logits tensors in ``after`` that ``before`` does not hold (compared by identity)."""
    held = {id(state.logits) for _, state in before.rois if state.logits is not None}
    new = {id(state.logits): state.logits for _, state in after.rois
           if state.logits is not None and id(state.logits) not in held}
    return int(sum(t.element_size() * t.nelement() for t in new.values()))


@dataclass
class _History:
    """Undo/redo stacks, bounded in steps and in bytes of stored mask boxes and logits (oldest steps go first)."""

    undo: List[_Step] = field(default_factory=list)
    redo: List[_Step] = field(default_factory=list)
    max_steps: int = 100
    max_bytes: int = 256 << 20

    def push(self, step: _Step) -> None:
        self.undo.append(step)
        self.redo.clear()
        self.trim()

    def trim(self) -> None:
        """Drop the oldest steps until both bounds hold (the newest step always stays)."""
        while len(self.undo) > self.max_steps or (
            len(self.undo) > 1 and sum(s.nbytes for s in self.undo + self.redo) > self.max_bytes
        ):
            self.undo.pop(0)


class InteractiveSession:
    """Click-based segmentation of one volume, one segment at a time (the local backend).

    Args:
        model: a model from :func:`SAMVolSegmentLib.load_model` or a :class:`Predictor` (to share its
            embedding cache between sessions).
        cache_bytes: embedding-cache budget when a model (not a predictor) is given.
        progress: optional ``callback(fraction, message)`` for slow stages (preprocessing, encoding).
        max_undo: history depth.
        max_undo_bytes: memory bound of the history (mask boxes stored as packed bits, and the low-res logits
            each step keeps for the next click); the oldest steps go first, the last step is always kept.
        auto_extend: continue a mask that reaches a ROI face into neighbouring ROIs (one encoder run each).
        threads: CPU threads of the encoder and the per-click decoder (N, "E,D" or a ``ThreadPolicy``); None:
            ``$SAMVOLSEG_THREADS`` or the default (:mod:`.threads`). Given with a ``Predictor``, it replaces the
            predictor's.
        coarse_context: the first prompt of a new mask also runs the model on a ROI at
            ``CONTEXT_SPACING_FACTOR`` × the model spacing (one more encoder run); when that coarse mask reaches
            beyond the first ROI (a structure larger than one ROI: a lung, a liver), it becomes the mask outside
            the first ROI and the seed of the ROIs that refine it. Off by default (an experiment of issue 22).
    """

    def __init__(
        self,
        model: Union[torch.nn.Module, Predictor],
        *,
        cache_bytes: int = 1 << 30,
        progress: Optional[ProgressCallback] = None,
        max_undo: int = 100,
        max_undo_bytes: int = 256 << 20,
        auto_extend: bool = True,
        threads: Union[None, int, str, ThreadPolicy] = None,
        coarse_context: bool = False,
    ) -> None:
        self.auto_extend = auto_extend
        self.coarse_context = coarse_context
        self._context_volume: Optional[Tuple[str, ModelVolume]] = None  # (fingerprint, coarse model volume)
        if isinstance(model, Predictor):
            if threads is not None:
                model.threads = ThreadPolicy.resolve(threads)
            self.predictor = model
        else:
            self.predictor = Predictor(model, cache_bytes=cache_bytes, threads=threads)
        self._progress = progress
        self._executor = _DaemonWorker("samvolseg-preprocess")
        self._lock = threading.RLock()
        self._closed = False
        self._volume: Optional[Volume] = None
        self._model_volume_future: Optional[Future] = None
        self._label_kji: Optional[np.ndarray] = None
        self._initial_kji: Optional[np.ndarray] = None  # set_initial_mask; what reset returns to (None = empty)
        self._state = _Snapshot()
        self._history = _History(max_steps=max_undo, max_bytes=max_undo_bytes)
        self.last_timing: Dict[str, float] = {}
        self.last_annotation: Any = None
        #: Warnings about the current volume (e.g. it looks like a label map); empty for an ordinary image.
        self.image_warnings: Tuple[str, ...] = ()

    # ------------------------------------------------------------------ protocol facts
    @property
    def model_id(self) -> str:
        """Identifier of the model (from the predictor), so callers never reach into ``predictor``."""
        return self.predictor.model_id

    @property
    def is_ready(self) -> bool:
        """True once a volume is set and its resampling to the model grid has finished (successfully or not)."""
        return self._model_volume_future is not None and self._model_volume_future.done()

    # ------------------------------------------------------------------ volume
    def set_volume(self, image, ijk_to_ras: Optional[np.ndarray] = None) -> None:
        """Start a new volume: validates at once, resamples to the model grid in the background.

        Args:
            image: a ``SimpleITK.Image`` (3D scalar), or a numpy array in (k, j, i) order with ``ijk_to_ras``.
            ijk_to_ras: 4×4 voxel-index → RAS matrix when ``image`` is an array (Slicer's ``GetIJKToRASMatrix``
                composed with the volume's parent transform).
        Raises:
            InvalidImageError: the image cannot be segmented; the session keeps its previous volume.
        Warns:
            LabelMapWarning: the image looks like a label map (few integer values); it is segmented anyway, and
                the sentence is also in :attr:`image_warnings`.
        """
        self._require_open()
        volume = load_volume(image, ijk_to_ras)
        with self._lock:
            self._require_open()
            if self._volume is not None and self._volume.fingerprint == volume.fingerprint:
                return  # same content and geometry: keep clicks, mask and cached embeddings
            self.image_warnings = warn_about_image(image)
            # Everything that can fail runs before the first assignment, so a refused call changes nothing.
            label_kji = np.zeros(volume.geometry.shape_kji, dtype=np.uint8)
            future = self._executor.submit(self._prepare_model_volume, volume)
            self._volume = volume
            self._model_volume_future = future
            self._label_kji = label_kji
            self._initial_kji = None
            self._state = _Snapshot()
            self._history = _History(max_steps=self._history.max_steps, max_bytes=self._history.max_bytes)
            self.last_annotation = None

    def _prepare_model_volume(self, volume: Volume) -> ModelVolume:
        self._report(0.0, "Resampling the volume to the model grid")
        model_volume = resample_to_model_grid(volume)
        self._report(1.0, "Volume ready")
        return model_volume

    def wait_until_ready(self, timeout: Optional[float] = None) -> None:
        """Block until background preprocessing is done (re-raises its error, if any)."""
        self._model_volume(timeout)

    def _model_volume(self, timeout: Optional[float] = None) -> ModelVolume:
        if self._model_volume_future is None:
            raise SessionStateError("No volume yet: call set_volume(image) before clicking.")
        return self._model_volume_future.result(timeout)

    @property
    def geometry(self) -> VolumeGeometry:
        return self._require_volume().geometry

    @property
    def volume(self) -> Volume:
        return self._require_volume()

    def _require_open(self) -> None:
        if self._closed:
            raise SessionStateError("This session is closed; create a new InteractiveSession to segment again.")

    def _require_volume(self) -> Volume:
        if self._volume is None or self._label_kji is None:
            raise SessionStateError("No volume yet: call set_volume(image) before clicking.")
        return self._volume

    # ------------------------------------------------------------------ prompts
    @property
    def clicks(self) -> Tuple[Click, ...]:
        return self._state.clicks

    @property
    def box_ras(self) -> Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]]:
        return self._state.box_ras

    def add_click(self, point_ras: Sequence[float], positive: bool = True) -> MaskUpdate:
        """Add a positive or negative click at a world position (RAS mm) and update the mask.

        Raises:
            InvalidPromptError: the point is not three finite numbers or lies outside the volume.
        """
        with self._lock:
            self._require_open()
            volume = self._require_volume()
            point = as_point_ras(point_ras, "click")
            positive = as_click_sign(positive)
            if not volume.geometry.contains_ras(point[None])[0]:
                raise InvalidPromptError(_outside_message(point, volume.geometry))
            # The caller's clicks count, as in a prompt file (so a file within the limit never fails half-way);
            # the few the engine adds (box centre, proposal anchor, extension seeds) come on top.
            if self._state.user_clicks >= MAX_CLICKS:
                raise InvalidPromptError(
                    f"This mask already has {self._state.user_clicks} clicks, the most one mask takes "
                    f"({MAX_CLICKS} clicks); reset it (or undo) and place fewer, well-chosen clicks."
                )
            click = Click(point, bool(positive))
            return self._run_step(
                lambda state: self._click_step(replace(state, user_clicks=state.user_clicks + 1), (click,))
            )

    def add_scribble(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> MaskUpdate:
        """Add a scribble: a freehand stroke (an open polyline of (N, 3) world points, RAS mm, any orientation)
        inside the structure (positive) or outside it (negative); one undoable step.

        Every voxel the stroke passes through becomes foreground (positive) or background (negative) and stays
        so through later clicks until the scribble is undone; the model gets the stroke as clicks of its sign
        spread along it (one per ``strokes.SCRIBBLE_CLICK_SPACING_MM``, at most ``MAX_SCRIBBLE_CLICKS``), which
        every model takes. Parts of the stroke outside the volume are ignored.

        Raises:
            InvalidPromptError: not a list of finite [r, a, s] points, no part in the volume, or too many clicks
                for one mask; nothing changes.
        """
        return self._add_stroke(scribble_prompt, points_ras, positive)

    def add_lasso(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> MaskUpdate:
        """Add a lasso: a closed contour of (N ≥ 3, 3) world points (RAS mm) drawn on one plane (a slice view,
        any orientation); the polygon it encloses on its plane is the prompt. One undoable step.

        The filled polygon's voxels (a one-voxel-thick slab on the plane) become foreground (positive) or
        background (negative) and stay so until the lasso is undone; the model gets the lasso as clicks of its
        sign at the deepest points of the polygon (``strokes.LASSO_CLICKS``) and extends the mask beyond the
        plane from them.

        Raises:
            InvalidPromptError: fewer than 3 distinct points, points off one plane (the message gives the
                distance), a contour enclosing no voxel, outside the volume, or too many clicks; nothing changes.
        """
        return self._add_stroke(lasso_prompt, points_ras, positive)

    def _add_stroke(self, make: Callable[..., StrokePrompt], points_ras: Sequence[Sequence[float]],
                    positive: bool) -> MaskUpdate:
        with self._lock:
            self._require_open()
            volume = self._require_volume()
            positive = as_click_sign(positive)
            prompt = make(volume.geometry, points_ras, positive)
            count = len(prompt.clicks_ras)
            if self._state.user_clicks + count > MAX_CLICKS:
                raise InvalidPromptError(
                    f"This mask already has {self._state.user_clicks} clicks and this prompt adds {count}, more "
                    f"than one mask takes ({MAX_CLICKS}); reset it (or undo) and use fewer prompts."
                )
            clicks = tuple(Click(point, positive) for point in prompt.clicks_ras)
            return self._run_step(lambda state: self._stroke_step(
                replace(state, user_clicks=state.user_clicks + count, drawn=(*state.drawn, prompt)), clicks, prompt))

    def set_box(self, min_ras: Sequence[float], max_ras: Sequence[float]) -> MaskUpdate:
        """Set an axis-aligned RAS box prompt.

        A model with a box input (``Predictor.accepts_box``: ClickNet2 v3) gets the box in every decode; with no
        clicks yet, the box alone gives the first mask, in a ROI centred on the box. Other models (SAM-Med3D,
        the v1/v2 defaults) read it as a restriction: the segment is clipped to the box and, with no clicks yet,
        a positive click goes to its centre.

        Raises:
            InvalidPromptError: corners not finite, the box is empty, or it misses the volume.
        """
        with self._lock:
            self._require_open()
            volume = self._require_volume()
            lo, hi = as_point_ras(min_ras, "box corner"), as_point_ras(max_ras, "box corner")
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            if np.any(hi - lo <= 0):
                raise InvalidPromptError("The box has zero size along an axis; drag it open in all three directions.")
            centre = (lo + hi) / 2
            if not volume.geometry.contains_ras(centre[None])[0]:
                raise InvalidPromptError("The box centre lies outside the volume; place the box over the image.")
            box = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
            return self._run_step(lambda state: self._box_step(state, box))

    def clear_box(self) -> MaskUpdate:
        """Remove the box restriction and recompute the mask of the active ROI."""
        with self._lock:
            self._require_open()
            self._require_volume()
            if self._state.box_ras is None:
                return MaskUpdate.empty()
            return self._run_step(lambda state: self._box_step(state, None))

    def reset(self) -> MaskUpdate:
        """Clear clicks and box; the mask returns to the initial mask (empty unless ``set_initial_mask``).

        Undoable. Cached embeddings are kept.
        """
        with self._lock:
            self._require_open()
            self._require_volume()
            return self._run_step(self._reset_step)

    def propose(self, class_name: str) -> MaskUpdate:
        """Replace the mask with the model's prompt-free proposal for ``class_name`` (one undoable step).

        The proposal then behaves like any mask: clicks correct it (it is the ROI's mask prompt, with one
        positive click at its deepest point, listed in :attr:`clicks`), undo returns to the mask before it.
        Only models with a proposal head can propose (:func:`~SAMVolSegmentLib.model.proposal_head.proposal_classes`,
        trained with ``samvolseg teach``).

        Raises:
            InvalidPromptError: the model does not know ``class_name`` (the message lists what it knows), or
                found nothing of it in the volume; nothing changes.
        """
        with self._lock:
            self._require_open()
            self._require_volume()
            class_index(self.predictor.model, class_name)  # refuse an unknown class before any work
            return self._run_step(lambda state: self._propose_step(class_name))

    def proposal_classes(self) -> Tuple[str, ...]:
        """Class names :meth:`propose` accepts with this session's model (empty: it cannot propose)."""
        return proposal_classes(self.predictor.model)

    def adapted_classes(self) -> Tuple[str, ...]:
        """Structures this session's clicks from scratch are adapted to (empty: the base model's clicks); see
        :func:`~SAMVolSegmentLib.model.proposal_head.click_adapted_classes`."""
        return click_adapted_classes(self.predictor.model)

    def set_initial_mask(self, mask_kji: Optional[np.ndarray]) -> MaskUpdate:
        """Start from an existing mask (edit a segment that is already there); None starts from an empty one.

        The mask becomes the current mask: the first click's ROI gets it as its mask prompt (as a ROI opened
        later does), so a negative click can remove voxels it holds and a positive one extends it; voxels
        outside every ROI keep it. Clicks, box and history are cleared (the start of an edit is not undoable),
        and ``reset`` returns to this mask. Returns the region that changed against the previous mask.

        Raises:
            InvalidPromptError: the mask's shape is not the volume's (k, j, i) shape; nothing changes.
        """
        with self._lock:
            self._require_open()
            volume = self._require_volume()
            assert self._label_kji is not None
            shape = tuple(volume.geometry.shape_kji)
            if mask_kji is None:
                initial = None
                new_label = np.zeros(shape, np.uint8)
            else:
                array = np.asarray(mask_kji)
                if array.shape != shape:
                    raise InvalidPromptError(
                        f"The initial mask has shape {array.shape} but the volume is {shape} (k, j, i); give the "
                        "segment's voxels on the input volume's grid."
                    )
                new_label = (array != 0).astype(np.uint8)
                initial = new_label.copy() if new_label.any() else None
            changed = np.nonzero(new_label != self._label_kji)
            update = MaskUpdate.empty()
            if changed[0].size:
                bbox = tuple((int(ax.min()), int(ax.max()) + 1) for ax in changed)
                update = MaskUpdate.covering(new_label, bbox)  # type: ignore[arg-type]
            self._label_kji = new_label
            self._initial_kji = initial
            self._state = _Snapshot()
            self._history = _History(max_steps=self._history.max_steps, max_bytes=self._history.max_bytes)
            self.last_annotation = None
            return update

    def annotate_last_step(self, annotation: Any) -> None:
        """Attach caller data to the newest step; undo/redo of that step hand it back in ``last_annotation``.

        The annotation counts towards ``max_undo_bytes`` through its ``nbytes`` attribute, if it has one, so a
        caller's own per-step records are bounded together with the engine's.

        Raises:
            SessionStateError: there is no step to annotate.
        """
        with self._lock:
            if not self._history.undo:
                raise SessionStateError("No step to annotate: call it right after add_click/set_box/reset.")
            self._history.undo[-1].annotation = annotation
            self.last_annotation = annotation
            self._history.trim()

    # ------------------------------------------------------------------ history
    @property
    def can_undo(self) -> bool:
        return bool(self._history.undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._history.redo)

    def undo(self) -> MaskUpdate:
        """Return to the state before the last step; recomputes nothing. Empty update when nothing to undo."""
        with self._lock:
            self._require_open()
            if not self._history.undo:
                return MaskUpdate.empty()
            step = self._history.undo.pop()
            self._history.redo.append(step)
            self.last_annotation = step.annotation
            return self._restore(step.before, step.region_before.unpack())

    def redo(self) -> MaskUpdate:
        """Re-apply the last undone step; recomputes nothing. Empty update when nothing to redo."""
        with self._lock:
            self._require_open()
            if not self._history.redo:
                return MaskUpdate.empty()
            step = self._history.redo.pop()
            self._history.undo.append(step)
            self.last_annotation = step.annotation
            return self._restore(step.after, step.region_after.unpack())

    def _restore(self, state: _Snapshot, region: MaskUpdate) -> MaskUpdate:
        assert self._label_kji is not None
        region.apply_to(self._label_kji)
        self._state = state
        self.last_timing = {"encode_s": 0.0, "decode_s": 0.0, "paste_s": 0.0, "total_s": 0.0}
        return region

    # ------------------------------------------------------------------ outputs
    def mask_array_kji(self) -> np.ndarray:
        """The full label (uint8, 1 = segment) on the input grid, array order (k, j, i); a copy.

        Taken under the session lock: a step, undo or ``set_volume`` in another thread writes the label in
        place, and an unlocked copy could catch it half-written (a state that never existed).
        """
        with self._lock:
            self._require_volume()
            assert self._label_kji is not None
            return self._label_kji.copy()

    def mask(self):
        """The full label as a ``SimpleITK.Image`` (uint8) with the input volume's geometry."""
        with self._lock:  # label and geometry of the same volume, even while another thread switches volumes
            geometry = self.geometry
            array_kji = self.mask_array_kji()
        return geometry.to_sitk_image(array_kji)

    def close(self) -> None:
        """Stop background work; the session cannot be used afterwards (reading its mask still works).

        A resampling still running is abandoned, not waited for: its thread is a daemon, so neither this
        call nor the interpreter's exit (e.g. after Ctrl-C in the CLI) waits for it.
        """
        # No lock: closing must not wait for a running step (a server closes evicted sessions from its loop);
        # a set_volume past its check then fails in submit() before it changes anything.
        self._closed = True
        self._executor.shutdown()

    def __enter__(self) -> InteractiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ steps
    def _run_step(self, compute: Callable[[_Snapshot], Tuple[_Snapshot, List[MaskUpdate]]]) -> MaskUpdate:
        """Run one step on a copy of the state; commit mask, state and history only if it succeeds."""
        assert self._label_kji is not None
        start = time.perf_counter()
        self.last_timing = {"encode_s": 0.0, "decode_s": 0.0, "paste_s": 0.0}
        before = self._state
        new_state, updates = compute(before)
        bbox: BBoxKJI = ((0, 0), (0, 0), (0, 0))
        for update in updates:
            bbox = union_bbox(bbox, update.bbox_kji)
        region_before = MaskUpdate.covering(self._label_kji, bbox)
        for update in updates:  # later updates (newer ROIs) win where boxes overlap
            update.apply_to(self._label_kji)
        # One update already is the box's new content; overlapping ones need the merged result.
        region_after = updates[0] if len(updates) == 1 else MaskUpdate.covering(self._label_kji, bbox)
        self._state = new_state
        self._history.push(_Step(before, new_state, _PackedRegion.pack(region_before), _PackedRegion.pack(region_after)))
        self.last_annotation = None
        self.last_timing["total_s"] = time.perf_counter() - start
        return region_after

    def _reset_step(self, state: _Snapshot) -> Tuple[_Snapshot, List[MaskUpdate]]:
        return _Snapshot(), self._updates_to(self._initial_kji)

    def _updates_to(self, target_kji: Optional[np.ndarray]) -> List[MaskUpdate]:
        """The update (none if nothing differs) turning the label into ``target_kji`` (None: empty)."""
        assert self._label_kji is not None
        changed = self._label_kji != 0 if target_kji is None else self._label_kji != target_kji
        bbox = mask_bbox(changed)
        if bbox is None:
            return []
        if target_kji is None:
            return [MaskUpdate(bbox, np.zeros(bbox_shape(bbox), np.uint8))]
        return [MaskUpdate.covering(target_kji, bbox)]

    def _propose_step(self, class_name: str) -> Tuple[_Snapshot, List[MaskUpdate]]:
        """Clear the mask, paste the proposal's ROI, add its deepest-point click, continue into neighbours."""
        assert self._label_kji is not None
        roi, logits, timing = propose_logits(self.predictor, self._require_volume(), self._model_volume(),
                                             class_name, self._report)
        self.last_timing["encode_s"] += timing["encode_s"]
        self.last_timing["propose_s"] = timing["propose_s"]
        clear = self._updates_to(None)  # a proposal replaces the whole mask
        deepest = deepest_point_roi((logits[0, 0] > 0).cpu().numpy(), roi.size)
        assert deepest is not None  # propose_logits refuses an empty proposal
        pasted = self._paste(roi, logits, None, self._label_with(clear))
        # The proposal becomes the ROI's mask prompt at the confidence of the model's own answers (its logits
        # are calibrated for the head's loss, not for the decoder's prompt), and corrections stay local: their
        # reach grows with the proposal's volume in the image (not in the ROI, which may extend past the image).
        voxel_mm3 = float(np.prod(self._require_volume().geometry.spacing))
        sigma_low = edit_sigma_low(roi.lowres_spacing(logits.shape[-1]), float(np.count_nonzero(pasted.mask)) * voxel_mm3)
        state = _Snapshot(clicks=(Click(roi.roi_to_ras(deepest[None])[0], True),),
                          rois=((roi.key, _RoiState(roi, logits * PROPOSAL_PROMPT_GAIN, sigma_low)),),
                          active_roi=roi.key)
        updates = [*clear, pasted]
        if self.auto_extend:
            state, more = self._extend(state, roi.key, logits, pending=updates)
            updates.extend(more)
        return state, updates

    def _box_step(self, state: _Snapshot, box_ras) -> Tuple[_Snapshot, List[MaskUpdate]]:
        state = replace(state, box_ras=box_ras)
        if self.predictor.accepts_box:
            return self._box_prompt_step(state)
        # A box bounds the whole mask: voxels of other ROIs (and of an initial mask) outside it go first;
        # the ROI decoded below is clipped by _paste, and its update is applied after this one.
        clip = [] if box_ras is None else self._clip_to_box(box_ras)
        if box_ras is not None and not any(c.positive for c in state.clicks):
            centre = (np.asarray(box_ras[0]) + np.asarray(box_ras[1])) / 2
            state, updates = self._click_step(state, (Click(centre, True),), base=clip)
            return state, clip + updates
        if state.active_roi is None:
            return state, clip
        # Re-decode the active ROI so the box clip (or its removal) applies to the current prediction.
        state, updates = self._decode_roi(state, state.active_roi, extend=False)
        return state, clip + updates

    def _box_prompt_step(self, state: _Snapshot) -> Tuple[_Snapshot, List[MaskUpdate]]:
        """A box for a model with a box input: no clip, no centre click. Without a ROI yet, one is opened at the
        box's centre and decoded from the box alone; otherwise the active ROI is decoded again with the new box
        (or without it). Removing the box of a mask made by the box alone (no clicks) keeps that mask: with no
        prompt left, nothing is decoded until the next click, which starts from it."""
        if state.box_ras is None and not state.clicks:
            return state, []
        if state.active_roi is None:
            model_volume = self._model_volume()
            centre = (np.asarray(state.box_ras[0]) + np.asarray(state.box_ras[1])) / 2
            roi = RoiWindow.centred_at(model_volume.grid, centre, size=self.predictor.image_size)
            key = tuple(int(v) for v in roi.start_model)
            rois = dict(state.rois)
            context = [] if rois else self._context_update(roi, centre, state.clicks, state.box_ras, self._label_kji)
            label_kji = self._label_with(context) if context else self._label_kji
            rois[key] = _RoiState(roi, self._seed_logits(roi, label_kji))
            state = replace(state, rois=tuple(rois.items()), active_roi=key)
            state, updates = self._decode_roi(state, key, extend=True, pending=context)
            return state, [*context, *updates]
        return self._decode_roi(state, state.active_roi, extend=False)

    def _box_roi(self, roi: RoiWindow, box_ras) -> Optional[np.ndarray]:
        """The RAS box as the model's box prompt in ``roi``: (2, 3) lower/upper corner, continuous ROI voxel
        indices (R, A, S); None without a box or for a model that takes none."""
        if box_ras is None or not self.predictor.accepts_box:
            return None
        corners_roi = roi.ras_to_roi(box_corners(np.asarray(box_ras[0]), np.asarray(box_ras[1])))
        return np.stack([corners_roi.min(axis=0), corners_roi.max(axis=0)]).astype(np.float32)

    def _clip_to_box(self, box_ras) -> List[MaskUpdate]:
        """The update clearing every label voxel whose centre lies outside the RAS box (none if there is none)."""
        assert self._label_kji is not None
        nonzero = np.nonzero(self._label_kji)
        if not nonzero[0].size:
            return []
        bbox: BBoxKJI = tuple((int(ax.min()), int(ax.max()) + 1) for ax in nonzero)  # type: ignore[assignment]
        region = MaskUpdate.covering(self._label_kji, bbox)
        inside = self.geometry.box_mask_kji(bbox, box_ras[0], box_ras[1])
        if np.all(inside | (region.mask == 0)):
            return []
        return [MaskUpdate(bbox, region.mask & inside.astype(np.uint8))]

    def _click_step(
        self, state: _Snapshot, clicks: Sequence[Click], base: Sequence[MaskUpdate] = (),
        drawn: Optional[StrokePrompt] = None,
    ) -> Tuple[_Snapshot, List[MaskUpdate]]:
        """Add clicks and decode the ROI of the first; ``base``: updates of the same step applied before;
        ``drawn``: a scribble/lasso whose voxels also enter the ROI's mask prompt (:meth:`_with_drawn`)."""
        model_volume = self._model_volume()
        rois = dict(state.rois)
        anchor = clicks[0].point_ras
        key = self._roi_for_point(rois, anchor)
        label_kji = self._label_with(list(base)) if base else self._label_kji
        context: List[MaskUpdate] = []
        if key is None:
            centre = anchor
            if not state.clicks and state.box_ras is not None:
                centre = (np.asarray(state.box_ras[0]) + np.asarray(state.box_ras[1])) / 2
            roi = RoiWindow.centred_at(model_volume.grid, centre, size=self.predictor.image_size)
            key = tuple(int(v) for v in roi.start_model)
            if not rois:
                context = self._context_update(roi, centre, (*state.clicks, *clicks), state.box_ras, label_kji)
                if context:
                    label_kji = self._label_with([*base, *context])
            rois[key] = _RoiState(roi, self._seed_logits(roi, label_kji))
        # Only for a model trained so (Predictor.takes_drawn_mask): a one-slice mask prompt is out of the other
        # models' distribution (the v2 default on a synthetic sphere: lasso Dice 0.851 with it, 0.865 without).
        if drawn is not None and self.predictor.takes_drawn_mask:
            rois[key] = replace(rois[key], logits=self._with_drawn(rois[key].roi, rois[key].logits, drawn))
        state = replace(state, clicks=(*state.clicks, *clicks), rois=tuple(rois.items()), active_roi=key)
        state, updates = self._decode_roi(state, key, extend=True, pending=[*base, *context])
        return state, [*context, *updates]

    def _stroke_step(self, state: _Snapshot, clicks: Sequence[Click], prompt: StrokePrompt
                     ) -> Tuple[_Snapshot, List[MaskUpdate]]:
        """A scribble's or lasso's clicks decoded as one step, then its voxels written over the result."""
        state, updates = self._click_step(state, clicks, drawn=prompt)
        # The stroke's box as the model's updates leave it (only that box: a stroke step never copies the label).
        drawn = MaskUpdate.covering(self._label_kji, prompt.bbox_kji)
        for update in updates:
            overlap = overlap_slices(prompt.bbox_kji, update.bbox_kji)
            if overlap is not None:
                drawn.mask[overlap[0]] = update.mask[overlap[1]]
        return state, [*updates, apply_drawn(drawn, (prompt,))]

    def _with_drawn(self, roi: RoiWindow, logits: Optional[torch.Tensor], prompt: StrokePrompt) -> torch.Tensor:
        """The ROI's mask prompt (1, 1, L, L, L) with every low-res voxel that holds a drawn voxel's centre set to
        the prompt's sign (at least ``SEED_MASK_LOGIT`` confident); None (no mask yet) starts at zero, as the
        first click's does (training: :mod:`SAMVolSegmentLib.tools.stroke_training`)."""
        low = self.predictor.low_res_size
        if logits is None:
            logits = torch.zeros((1, 1, low, low, low))
        kji = np.argwhere(prompt.voxels_kji) + np.array([lo for lo, _ in prompt.bbox_kji])
        centres_roi = roi.ras_to_roi(self.geometry.ijk_to_ras_points(kji[:, ::-1].astype(np.float64)))
        # Low-res voxel c covers ROI coordinates [c·size/low − 0.5, (c+1)·size/low − 0.5) (RoiWindow.lowres_affine_ras).
        index = np.floor((centres_roi + 0.5) * low / roi.size).astype(np.int64)
        index = np.unique(index[np.all((index >= 0) & (index < low), axis=1)], axis=0)
        out = logits.clone()
        if len(index):
            at = (0, 0, *torch.from_numpy(index.T))
            out[at] = (torch.clamp(out[at], min=SEED_MASK_LOGIT) if prompt.positive
                       else torch.clamp(out[at], max=-SEED_MASK_LOGIT))
        return out

    def _context_model_volume(self) -> ModelVolume:
        """The volume on the coarse context grid (``CONTEXT_SPACING_FACTOR`` × the model spacing), made once."""
        volume = self._require_volume()
        if self._context_volume is None or self._context_volume[0] != volume.fingerprint:
            spacing = self._model_volume().grid.spacing * CONTEXT_SPACING_FACTOR
            self._context_volume = (volume.fingerprint,
                                    resample_to_model_grid(volume, ModelGrid.covering(volume.geometry, spacing)))
        return self._context_volume[1]

    def _context_update(self, roi: RoiWindow, centre_ras: np.ndarray, clicks: Sequence[Click], box_ras,
                        label_kji: np.ndarray) -> List[MaskUpdate]:
        """``coarse_context``: the mask of the first prompt on a coarse ROI centred like ``roi``, as an update of
        the label — only for a fresh mask (empty label) whose coarse mask reaches more than
        ``CONTEXT_BEYOND_ROI_MM`` beyond ``roi``; otherwise no update (the fine ROI alone decides)."""
        if not self.coarse_context or label_kji.any():
            return []
        volume = self._context_model_volume()
        context_roi = RoiWindow.centred_at(volume.grid, centre_ras, size=self.predictor.image_size)
        logits = self._predict(_RoiState(context_roi, None), clicks, box_ras, model_volume=volume)
        foreground = (logits[0, 0] > 0).cpu().numpy()
        if not foreground.any():
            return []
        low = foreground.shape[0]
        centres_ras = context_roi.lowres_geometry(low).ijk_to_ras_points(np.argwhere(foreground).astype(np.float64))
        inner = roi.ras_to_roi(centres_ras)
        reach = CONTEXT_BEYOND_ROI_MM / roi.spacing
        beyond = np.any((inner < -0.5 - reach) | (inner > roi.size - 0.5 + reach), axis=1)
        if not beyond.any():
            return []
        return [self._paste(context_roi, logits, box_ras, label_kji)]

    def _roi_for_point(self, rois: Dict[RoiKey, _RoiState], point_ras: np.ndarray) -> Optional[RoiKey]:
        """The ROI whose interior holds the point (nearest centre first), or None to open a new one."""
        best, best_dist = None, np.inf
        for key, roi_state in rois.items():
            point_roi = roi_state.roi.ras_to_roi(point_ras[None])[0]
            if roi_state.roi.contains_roi(point_roi[None], margin=ROI_INTERIOR_MARGIN)[0]:
                dist = float(np.linalg.norm(point_roi - (roi_state.roi.size - 1) / 2))
                if dist < best_dist:
                    best, best_dist = key, dist
        return best

    def _decode_roi(
        self, state: _Snapshot, key: RoiKey, *, extend: bool, pending: Sequence[MaskUpdate] = ()
    ) -> Tuple[_Snapshot, List[MaskUpdate]]:
        """Decode one ROI with its clicks; optionally continue into neighbouring ROIs.

        ``pending``: updates of the same step that come before this one (a box's clip), seen by the seeds.
        """
        rois = dict(state.rois)
        roi_state = rois[key]
        prediction_logits = self._predict(roi_state, state.clicks, state.box_ras)
        rois[key] = replace(roi_state, logits=prediction_logits)
        base_label_kji = self._label_with(list(pending)) if pending else self._label_kji
        updates = [self._paste(roi_state.roi, prediction_logits, state.box_ras, base_label_kji, state.drawn)]
        state = replace(state, rois=tuple(rois.items()))
        if extend and self.auto_extend:
            state, more = self._extend(state, key, prediction_logits, pending=[*pending, *updates])
            updates.extend(more)
        return state, updates

    def _predict(self, roi_state: _RoiState, clicks: Sequence[Click], box_ras=None,
                 model_volume: Optional[ModelVolume] = None) -> torch.Tensor:
        """The ROI's new low-res logits (1, 1, L, L, L) for ``clicks`` (those inside it) and the box;
        ``model_volume``: the grid the ROI belongs to (default: the model grid; the coarse context grid)."""
        roi = roi_state.roi
        model_volume = model_volume or self._model_volume()
        cache_key = roi.embedding_key(self._require_volume().fingerprint)
        embedding = self.predictor.cached_embedding(cache_key)
        if embedding is None:  # crop and normalise only when the encoder has to run
            self._report(0.0, "Encoding the region (once per region)")
            embedding = self.predictor.embed(crop_roi(model_volume, roi, normalization=self.predictor.normalization),
                                             cache_key)
        self.last_timing["encode_s"] = self.last_timing.get("encode_s", 0.0) + self.predictor.last_encode_s
        points_ras = np.array([c.point_ras for c in clicks], dtype=np.float64).reshape(-1, 3)
        points_roi = roi.ras_to_roi(points_ras)
        inside = roi.contains_roi(points_roi, margin=0)
        prediction = self.predictor.predict(
            embedding,
            points_roi[inside],
            np.array([c.positive for c in clicks], dtype=bool)[inside],
            roi_state.logits,
            corrections=roi_state.edit_sigma_low is not None,
            box_roi=self._box_roi(roi, box_ras),
        )
        self.last_timing["decode_s"] = self.last_timing.get("decode_s", 0.0) + prediction.decode_s
        if roi_state.edit_sigma_low is not None and roi_state.logits is not None and inside.any():
            last = int(np.flatnonzero(inside)[-1])
            return local_edit(roi_state.logits, prediction.low_res_logits, points_roi[last], clicks[last].positive,
                              roi.size, roi_state.edit_sigma_low, roi.lowres_spacing(prediction.low_res_logits.shape[-1]))
        return prediction.low_res_logits

    def _paste(self, roi: RoiWindow, logits: torch.Tensor, box_ras, base_label_kji: np.ndarray,
               drawn: Sequence[StrokePrompt] = ()) -> MaskUpdate:
        """The ROI's mask on the original grid; voxels of the box outside the ROI keep ``base_label_kji``, voxels
        a scribble or lasso decided (``drawn``) keep what it decided."""
        start = time.perf_counter()
        with torch_threads(self.predictor.threads.decoder):  # small per-click work: as the decoder
            update = paste_back_logits(logits[0, 0], roi, self.geometry, base_label_kji=base_label_kji)
        if box_ras is not None and not update.is_empty_box and not self.predictor.accepts_box:
            inside = self.geometry.box_mask_kji(update.bbox_kji, box_ras[0], box_ras[1])
            update = MaskUpdate(update.bbox_kji, (update.mask & inside.astype(np.uint8)))
        update = apply_drawn(update, drawn)
        self.last_timing["paste_s"] = self.last_timing.get("paste_s", 0.0) + time.perf_counter() - start
        return update

    def _seed_logits(self, roi: RoiWindow, label_kji: Optional[np.ndarray]) -> Optional[torch.Tensor]:
        """Mask prompt for a new ROI: ``label_kji`` sampled on the ROI's low-res grid, or None if empty."""
        if label_kji is None or not label_kji.any():
            return None
        low = self.predictor.low_res_size
        scale = roi.size / low
        # Low-res voxel c covers ROI voxels [c*scale, (c+1)*scale): its centre is at (c + 0.5)*scale - 0.5.
        axis = (np.arange(low) + 0.5) * scale - 0.5
        grid_roi = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
        ijk = np.rint(self.geometry.ras_to_ijk(roi.roi_to_ras(grid_roi))).astype(np.int64)
        shape_ijk = np.array(self.geometry.shape_kji[::-1])
        valid = np.all((ijk >= 0) & (ijk < shape_ijk), axis=1)
        seed = np.zeros(len(ijk), dtype=np.float32)
        seed[valid] = label_kji[ijk[valid, 2], ijk[valid, 1], ijk[valid, 0]]
        if not seed.any():
            return None
        logits = (seed * 2 - 1) * SEED_MASK_LOGIT
        return torch.from_numpy(logits.reshape(1, 1, low, low, low))

    def _extend(
        self, state: _Snapshot, key: RoiKey, logits: torch.Tensor, pending: List[MaskUpdate]
    ) -> Tuple[_Snapshot, List[MaskUpdate]]:
        """Open neighbouring ROIs where the mask reaches a ROI face that is not the volume's edge.

        Each new ROI overlaps the current one by half (the SAM-Med3D paper's extension rule); it gets the
        clicks that fall inside it, a positive click at the deepest point of the current mask inside it if it
        has none, and the current mask as its seed mask prompt.
        """
        roi = dict(state.rois)[key].roi
        model_volume = self._model_volume()
        grid_shape = np.array(model_volume.grid.shape_model)
        fg = (logits[0, 0] > 0).cpu().numpy()
        if not fg.any():
            return state, []
        updates: List[MaskUpdate] = []
        label_kji = self._label_with(pending)  # the seed masks must include this click's own result
        low = fg.shape[0]
        start = np.array(roi.start_model)
        for axis in range(3):
            for direction in (-1, 1):
                if len(updates) >= MAX_EXTENSIONS_PER_CLICK:
                    break
                face = [slice(None)] * 3
                face[axis] = slice(0, BORDER_TOUCH_LOWRES) if direction < 0 else slice(low - BORDER_TOUCH_LOWRES, low)
                if not fg[tuple(face)].any():
                    continue
                # Stop at the volume's edge: beyond it there is nothing to continue into.
                if direction < 0 and start[axis] <= 0:
                    continue
                if direction > 0 and start[axis] + roi.size >= grid_shape[axis]:
                    continue
                new_start = start.copy()
                new_start[axis] += direction * (roi.size // 2)
                new_key = tuple(int(v) for v in new_start)
                rois = dict(state.rois)
                if new_key in rois:
                    continue
                new_roi = roi.shifted(new_start)
                seed = self._seed_logits(new_roi, label_kji)
                if seed is None:
                    continue
                clicks = list(state.clicks)
                points_roi = new_roi.ras_to_roi(np.array([c.point_ras for c in clicks]).reshape(-1, 3))
                has_positive = any(
                    c.positive and inside for c, inside in zip(clicks, new_roi.contains_roi(points_roi, margin=0))
                )
                if not has_positive:
                    deepest = deepest_point_roi(seed.numpy()[0, 0] > 0, roi.size)
                    if deepest is None:
                        continue
                    clicks.append(Click(new_roi.roi_to_ras(deepest[None])[0], True))
                rois[new_key] = _RoiState(new_roi, seed)
                state = replace(state, clicks=tuple(clicks), rois=tuple(rois.items()))
                new_logits = self._predict(rois[new_key], state.clicks, state.box_ras)
                rois[new_key] = _RoiState(new_roi, new_logits)
                state = replace(state, rois=tuple(rois.items()))
                update = self._paste(new_roi, new_logits, state.box_ras, label_kji, state.drawn)
                update.apply_to(label_kji)
                updates.append(update)
        return state, updates

    def _label_with(self, pending: List[MaskUpdate]) -> np.ndarray:
        """A copy of the label with pending (not yet committed) updates applied."""
        assert self._label_kji is not None
        label = self._label_kji.copy()
        for update in pending:
            update.apply_to(label)
        return label

    def _report(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            self._progress(fraction, message)


LocalSession = InteractiveSession


class _DaemonWorker:
    """One daemon thread running submitted calls in order (the session's background preprocessing).

    Not a ``ThreadPoolExecutor``: the interpreter joins those threads at exit, so a CLI interrupted during
    a long resampling printed "interrupted" at once but exited only when the resampling had finished (the CLI
    now ends with ``os._exit`` on an interrupt, which runs no exit handlers).

    At a normal interpreter exit (:func:`_stop_workers_at_exit`, an ``atexit`` handler) every worker is shut
    down and its thread joined: a daemon thread still inside ITK or torch when the interpreter finalises is
    killed mid-C++ ("FATAL: exception not rethrown", SIGABRT), and one that frees tensors then aborts too.
    Between jobs the thread holds nothing of the session (its bound method, volume or result).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._shutdown = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue ``fn(*args)``; its result or exception arrives in the returned future."""
        with self._lock:
            if self._shutdown:
                raise SessionStateError("This session is closed; create a new InteractiveSession to segment again.")
            future: Future = Future()
            self._jobs.put((future, fn, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                _LIVE_WORKERS.add(self)
                self._thread.start()
            return future

    def shutdown(self) -> None:
        """Cancel queued calls and stop the thread after the running one (which is not waited for); a second
        call does nothing."""
        with self._lock:
            if self._shutdown:  # the stop marker of the first call may still be queued
                return
            self._shutdown = True
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            self._jobs.put(None)

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the thread to end (after :meth:`shutdown`); returns at once from the thread itself."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run_one(*job)
            del job  # nothing of the job (the session's method, its volume) stays referenced while waiting

    @staticmethod
    def _run_one(future: Future, fn: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)
        else:
            future.set_result(result)


#: Workers whose thread was started; :func:`_stop_workers_at_exit` stops them before the interpreter finalises.
_LIVE_WORKERS: weakref.WeakSet[_DaemonWorker] = weakref.WeakSet()


def _stop_workers_at_exit() -> None:
    """``atexit``: cancel every worker's queued calls, then wait for the running ones (a resampling still in
    ITK or torch would abort the interpreter's finalisation)."""
    workers = list(_LIVE_WORKERS)
    for worker in workers:
        worker.shutdown()
    for worker in workers:
        worker.join()


atexit.register(_stop_workers_at_exit)  # after torch's own handlers were registered: runs before them


def _outside_message(point_ras: np.ndarray, geometry: VolumeGeometry) -> str:
    """Why a click is outside: which way and how far, and the two usual causes (an LPS point, a transform)."""
    # The volume's outer faces (voxel centres ± half a voxel), where clicks are accepted (contains_ras), not
    # its extreme voxel centres: a click just past the far face was "0.5 mm beyond" it.
    last = np.array(geometry.shape_kji[::-1], dtype=np.float64) - 0.5
    low_ras, high_ras = ordered_box(geometry.ijk_to_ras_points(box_corners((-0.5, -0.5, -0.5), last)))
    below, above = low_ras - point_ras, point_ras - high_ras
    names = (("L", "R"), ("P", "A"), ("I", "S"))  # RAS: the low side of x is Left, of y Posterior, of z Inferior
    ways = [f"{_format_mm(d) if d >= 0.05 else 'less than 0.1'} mm beyond its "
            f"{names[axis][0] if below[axis] > 0 else names[axis][1]} side"
            for axis, d in enumerate(np.maximum(below, above)) if d > 0]
    where = ", ".join(ways) if ways else "inside its RAS bounding box but off its oblique voxel grid"
    flipped = lps_to_ras(point_ras[None])[0]
    hint = (" The point with x and y negated lies inside: it is probably LPS (SimpleITK, ITK, DICOM); convert "
            "it with SAMVolSegmentLib.lps_to_ras." if geometry.contains_ras(flipped[None])[0] else
            " Check that the point is RAS (not LPS: SAMVolSegmentLib.lps_to_ras converts) and the volume's "
            "parent transform.")
    return (f"Click at RAS {_format_point(point_ras)} mm is outside the volume ({where}; the volume's faces span "
            f"RAS {_format_point(low_ras)} to {_format_point(high_ras)} mm).{hint}")


def _format_mm(value: float) -> str:
    """A length or coordinate in mm to 0.1 mm; large values in exponent form (``1e+308``, not 309 digits)."""
    return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.4g}"


def _format_point(point: np.ndarray) -> str:
    """``[r, a, s]`` in mm as :func:`_format_mm` writes them: np.round(1e308, 1) overflows to inf."""
    return "[" + ", ".join(_format_mm(v) for v in np.asarray(point, float).reshape(-1)) + "]"


