"""``SAMVolSegmentLogic.segmentVolume``'s checks, engine calls and write: one structure from a whole prompt set.

MRML glue moved out of ``SAMVolSegment.py`` (imports ``slicer``), so it follows Slicer's camelCase. The batch
path: the volume's voxels (``slicer.util.arrayFromVolume``, copied) and its IJK -> world matrix (parent
transforms included, as the interactive path; a non-linear transform is refused) go to
``SAMVolSegmentLib.batch.segment_volume`` (the code of ``samvolseg batch`` and ``SAMVolSegmentLib.segment``) on
the Logic's worker with the model the Logic keeps, or, with a remote backend, the same prompt sequence
(``batch.run_prompts``) runs in a fresh server session. The mask is written into a NEW segment by
:meth:`SegmentIO.writeNewSegment` (the interactive steps' merge and write); other segments never change.
Every check that can refuse runs before the model work and before the segmentation changes; whatever fails,
the segmentation is left as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
import slicer
from slicer.i18n import tr as _

from SAMVolSegmentLib import batch  # numpy only at import; torch on first use
from SAMVolSegmentLib.engine.prompts_io import as_strokes

from . import backend, local_session, segment_io
from .segment_merge import EditPolicy, OtherSegments


def newSegmentPolicy(otherSegments) -> EditPolicy:
    """Overlap or Protect; Overwrite is refused because this call never changes other segments."""
    try:
        choice = OtherSegments(otherSegments)
    except ValueError:
        raise ValueError(_("otherSegments must be OtherSegments.OVERLAP or OtherSegments.PROTECT, got {value!r}.")
                         .format(value=otherSegments)) from None
    if choice is OtherSegments.OVERWRITE:
        raise ValueError(_("segmentVolume never changes other segments: use OtherSegments.PROTECT (the new "
                           "segment leaves their voxels out) or OtherSegments.OVERLAP (it may overlap them)."))
    # No Segment Editor masking: a scripted result must not depend on what the editor last showed.
    return EditPolicy(other_segments=choice)


class VolumeJob:
    """One checked ``segmentVolume`` call: the volume's voxels and geometry, the prompts, the write policy."""

    def __init__(self, volumeNode, segmentationNode, points_ras, labels, box, otherSegments,
                 remoteWithModel: bool, scribbles=(), lassos=()) -> None:
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Give an input volume that has image data."))
        if segmentationNode is None:
            raise ValueError(_("Give a segmentation node to add the segment to."))
        self.scribbles, self.lassos = as_strokes(scribbles, "scribble"), as_strokes(lassos, "lasso")
        self.points, self.signs, self.box = batch.check_prompt_arrays(
            points_ras, labels, box, positive_strokes=any(s.positive for s in (*self.scribbles, *self.lassos)))
        self.policy = newSegmentPolicy(otherSegments)
        if remoteWithModel:
            raise ValueError(_("The remote server segments with its own model: leave model and device unset, "
                               "or switch to the local backend first (logic.setBackend(backend.Backend())))."))
        self.volumeNode, self.segmentationNode = volumeNode, segmentationNode
        self.io = segment_io.SegmentIO(volumeNode, segmentationNode)  # raises for a non-linear parent transform
        self.io.checkLabelmapSource()
        # A copy: the worker reads it while Slicer may change the volume's voxels in place meanwhile.
        self.arrayKji = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
        #: The batch path's per-stage times (filled on the worker).
        self.timings: Dict[str, float] = {}

    def progressReporter(self, progress: Callable[[float, str], None]) -> Callable[[str, Dict[str, Any]], None]:
        """The batch path's ``on_event`` (called on the worker): fills the worker's progress cell, which the
        waiting main thread shows through ``slowCallback``. Texts are translated here, on the main thread."""
        steps = len(self.signs) + (self.box is not None) + len(self.scribbles) + len(self.lassos)
        readyText, stepText = _("Volume ready"), _("Prompt {n} of {total} done")
        done = [0]

        def onEvent(kind: str, info: Dict[str, Any]) -> None:
            done[0] += 1
            progress(done[0] / (steps + 1), readyText if kind == "ready" else stepText.format(n=done[0] - 1,
                                                                                             total=steps))

        return onEvent

    def segmentLocally(self, model, onEvent, threads: str = local_session.AUTOMATIC_THREADS) -> np.ndarray:
        """On the worker: ``batch.segment_volume`` on ``model`` with the *CPU threads* setting ``threads`` (the
        interactive sessions' threads, ``local_session.localPredictor``); the (k, j, i) mask."""
        return batch.segment_volume(local_session.localPredictor(model, threads), self.arrayKji, self.points,
                                    self.signs, self.box, ijk_to_ras=self.io.ijkToWorld, timings=self.timings,
                                    on_event=onEvent, scribbles=self.scribbles, lassos=self.lassos)[0]

    def segmentRemotely(self, choice: backend.Backend, progress: Optional[Callable[[float, str], None]],
                        onEvent) -> np.ndarray:
        """On the worker: the same prompt sequence in a fresh server session (the interactive one is untouched)."""
        session = backend.remoteSession(choice, progress)
        try:
            return batch.run_prompts(session, self.arrayKji, self.points, self.signs, self.box,
                                     ijk_to_ras=self.io.ijkToWorld, timings=self.timings, on_event=onEvent,
                                     scribbles=self.scribbles, lassos=self.lassos)
        finally:
            session.close()

    def writeNewSegment(self, maskKji: np.ndarray, segmentName: str) -> str:
        """Add a segment holding ``maskKji`` (status Completed); returns its ID. A refused write removes it."""
        self.io.ensureReferenceGeometry()
        segmentation = self.segmentationNode.GetSegmentation()
        # "" on failure (Libs/vtkSegmentationCore/vtkSegmentation.h). The new segment starts in the first shared
        # labelmap layer (vtkSegmentation.cxx, AddEmptySegment); writeRegion's SetBinaryLabelmapToSegment moves
        # it to a layer of its own when its voxels would cover another segment of that layer
        # (vtkSegmentationModifier.cxx, SeparateModifiedSegmentFromSharedLabelmap).
        segmentID = segmentation.AddEmptySegment("", segmentName)
        if not segmentID:
            raise segment_io.SegmentWriteError(_("Slicer could not add a segment to {name}.").format(
                name=self.segmentationNode.GetName()))
        try:
            self.io.writeNewSegment(segmentID, maskKji, self.policy)
        except Exception:
            segmentation.RemoveSegment(segmentID)
            raise
        slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
            segmentation.GetSegment(segmentID), slicer.vtkSlicerSegmentationsModuleLogic.Completed)
        return segmentID

    def summary(self, maskKji: np.ndarray) -> str:
        """The status line after the write."""
        voxels = int(np.count_nonzero(maskKji))
        name = self.volumeNode.GetName()
        if voxels:
            return _("{name}: segment added ({voxels} voxels).").format(name=name, voxels=voxels)
        return _("{name}: the model found nothing at these prompts; the new segment is empty.").format(name=name)
