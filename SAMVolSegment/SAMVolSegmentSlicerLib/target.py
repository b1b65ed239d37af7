"""The Logic's current target: the volume the session holds, the segmentation written through one
:class:`~SAMVolSegmentSlicerLib.segment_io.SegmentIO`, the segment, whether the session was seeded with that
segment's voxels, and the segment side of undo/redo (the :class:`EditStep` records hung on the engine's steps).

MRML glue moved out of ``SAMVolSegment.py`` (imports ``slicer``), so it follows Slicer's camelCase. Engine calls
go only through the session protocol, on the Logic's worker: ``runOnWorker(fn, *args)`` waits there and pumps
events meanwhile, so a node may be deleted (or the scene closed) while a step runs; :meth:`Target.checkKept`
tells the step.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import slicer
from slicer.i18n import tr as _

from . import segment_io
from .undo_stack import EditStep, Prompt


class TargetRemovedError(segment_io.SegmentWriteError):
    """The volume or segmentation of a running step was deleted (or the scene closed) meanwhile; nothing was
    written. The widget says so in the status line, without a dialog: the user removed it."""


class Target:
    """What the next step works on; :meth:`select` changes it, the Logic's history belongs to it."""

    def __init__(self) -> None:
        self.io: Optional[segment_io.SegmentIO] = None
        self.segmentID = ""
        #: (volume node ID, image data MTime, IJK -> world) of the volume the session holds.
        self.volumeFingerprint = None
        #: True once the session holds this segment's voxels as its initial mask (and its prompts since).
        self.seeded = False
        #: Set when the volume was sent again to a session that had prompts (its content or geometry changed):
        #: the engine's history restarted, so the markers of those prompts are stale (``takeHistoryDropped``).
        self.historyDropped = False

    def sendVolume(self, session, runOnWorker: Callable, volumeNode) -> None:
        """Give the engine the volume again only when its content or world geometry changed."""
        ijkToWorld = segment_io.volumeIjkToWorld(volumeNode)
        fingerprint = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), ijkToWorld.round(6).tobytes())
        if fingerprint == self.volumeFingerprint:
            return
        # A copy: the engine keeps the array while Slicer may modify the volume's voxels in place.
        arrayKji = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
        runOnWorker(session.set_volume, arrayKji, ijkToWorld)
        self.volumeFingerprint = fingerprint
        self.historyDropped = self.historyDropped or self.seeded
        self.seeded = False

    def select(self, session, runOnWorker: Callable, volumeNode, segmentationNode, segmentID: str = "") -> str:
        """Select the volume and target segment (created when ``segmentID`` is empty); returns the segment ID.

        An existing segment is edited: its voxels seed the engine, so negative clicks can remove them.
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Select an input volume that has image data."))
        if segmentationNode is None:
            raise ValueError(_("Select or create a target segmentation."))
        if session is None:
            raise RuntimeError(_("Load a model first."))
        segmentation = segmentationNode.GetSegmentation()
        if not segmentID or segmentation.GetSegment(segmentID) is None:
            segmentID = segmentation.AddEmptySegment("")
        # A new SegmentIO for other nodes, and for the same nodes once their geometry changed (a transform,
        # spacing or origin edit, voxels of another shape): it maps boxes of the volume's grid as it was read.
        ioChanged = (self.io is None or self.io.volumeNode is not volumeNode
                     or self.io.segmentationNode is not segmentationNode or self.io.isStale())
        self.sendVolume(session, runOnWorker, volumeNode)
        if ioChanged:
            self.io = segment_io.SegmentIO(volumeNode, segmentationNode)
        self.io.ensureReferenceGeometry()
        if ioChanged or segmentID != self.segmentID or not self.seeded:
            self.segmentID = segmentID
            initial = self.io.segmentArray(segmentID)
            runOnWorker(session.set_initial_mask, initial if initial.any() else None)
            self.seeded = True
        return segmentID

    def takeHistoryDropped(self) -> bool:
        """Whether the engine's history restarted since the last call (see ``historyDropped``)."""
        dropped, self.historyDropped = self.historyDropped, False
        return dropped

    def selectFromParameterNode(self, pn, session, runOnWorker: Callable) -> None:
        """Volume and target from the parameter node; creates the segmentation/segment when empty."""
        if pn.inputVolume is None:
            raise ValueError(_("Select an input volume first."))
        segmentationNode = pn.segmentationNode
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", _("SAMVolSegment"))
            pn.segmentationNode = segmentationNode
        segmentID = self.select(session, runOnWorker, pn.inputVolume, segmentationNode, pn.segmentID)
        self.checkKept(self.io)  # the engine calls above pump events
        if pn.segmentID != segmentID:
            pn.segmentID = segmentID

    def require(self, session, runOnWorker: Callable) -> None:
        """Raise unless a console step (``addPoint``/``setBox``) has a target to work on; a target whose volume
        moved or changed shape since it was selected is selected again (the engine gets the volume again)."""
        if session is None:
            raise RuntimeError(_("Load a model first."))
        if self.io is None or not self.segmentID:
            raise RuntimeError(_("Select the input volume and the target segment first."))
        if self.io.segmentationNode.GetSegmentation().GetSegment(self.segmentID) is None:
            raise RuntimeError(_("The target segment was deleted; select another segment."))
        if self.io.isStale():
            io = self.io
            self.select(session, runOnWorker, io.volumeNode, io.segmentationNode, self.segmentID)
            self.checkKept(self.io)

    def checkKept(self, io: Optional[segment_io.SegmentIO]) -> None:
        """Raise :class:`TargetRemovedError` when the step that started on ``io`` lost its volume or segmentation
        while the worker pumped events: a node deleted (:meth:`onNodeRemoved` dropped ``io``), or
        ``vtkMRMLScene::Clear`` removing every node (Libs/MRML/Core/vtkMRMLScene.cxx). Checked with
        ``vtkMRMLScene::IsNodePresent``, so it holds whatever order the removal events came in."""
        scene = slicer.mrmlScene
        if io is not None and io is self.io and all(scene.IsNodePresent(node)
                                                    for node in (io.volumeNode, io.segmentationNode)):
            return
        if io is not None and io is self.io:
            self.io, self.segmentID, self.seeded = None, "", False
        raise TargetRemovedError(_("The volume or segmentation was removed while the step ran; nothing was "
                                   "written."))

    def forgetSession(self) -> None:
        """The session closed: the next one needs the volume and the segment's voxels again."""
        self.volumeFingerprint = None
        self.seeded = False

    def onNodeRemoved(self, node) -> None:
        """A node was deleted: forget a target that used it, so the next step starts on what is selected."""
        if self.io is not None and node in (self.io.volumeNode, self.io.segmentationNode):
            self.io = None
            self.segmentID = ""
            self.seeded = False
            if self.volumeFingerprint is not None and node.GetID() == self.volumeFingerprint[0]:
                self.volumeFingerprint = None

    def forgetCreated(self, pn, segmentationNode, segmentID: str, hadSegment: bool) -> None:
        """Remove the segmentation or segment an action created for its target (a failed proposal changes
        nothing), given what the parameter node named before it; the next step re-seeds the engine.

        Compared by existence, not by ID: the parameter node may still name a segment of another segmentation,
        and ``vtkSegmentation::GenerateUniqueSegmentID`` only keeps IDs unique within one segmentation
        (Libs/vtkSegmentationCore/vtkSegmentation.cxx), so the new segment may get that same ID.
        """
        current = pn.segmentationNode
        if current is None:
            return
        if current is not segmentationNode:
            pn.segmentationNode = segmentationNode
            if self.io is not None and self.io.segmentationNode is current:
                self.io = None
            slicer.mrmlScene.RemoveNode(current)
        elif not hadSegment and pn.segmentID and current.GetSegmentation().GetSegment(pn.segmentID) is not None:
            # vtkSegmentation::RemoveSegment(segmentId) (Libs/vtkSegmentationCore/vtkSegmentation.h)
            current.GetSegmentation().RemoveSegment(pn.segmentID)
        else:
            return
        pn.segmentID = segmentID
        self.segmentID = ""
        self.seeded = False

    def acceptSegment(self, pn) -> str:
        """Mark the target segment Completed (``vtkSlicerSegmentationsModuleLogic::SetSegmentStatus``) and select a
        new empty segment of the same segmentation in the parameter node; returns its ID ("" without one)."""
        segmentationNode = pn.segmentationNode or (self.io.segmentationNode if self.io else None)
        self.seeded = False
        if segmentationNode is None:
            return ""
        segment = segmentationNode.GetSegmentation().GetSegment(pn.segmentID or self.segmentID)
        if segment is not None:
            slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
                segment, slicer.vtkSlicerSegmentationsModuleLogic.Completed)
        newID = segmentationNode.GetSegmentation().AddEmptySegment("")
        pn.segmentID = newID
        return newID

    # ------------------------------------------------------------------ history (one: the engine's)
    def undo(self, session, runOnWorker: Callable, markers) -> Optional[Prompt]:
        """Undo the engine's last step, restore every segment region it wrote, withdraw its marker."""
        step = self._moveInHistory(session, session.undo, runOnWorker, after=False)
        if step is None:
            return None
        markers.withdraw(step.prompt)
        return step.prompt

    def redo(self, session, runOnWorker: Callable, markers) -> Optional[Prompt]:
        """Redo the engine's undone step, write its regions again, show its marker (the record learns the new
        control point ID, since Slicer gives a re-added point a new one)."""
        step = self._moveInHistory(session, session.redo, runOnWorker, after=True)
        if step is None:
            return None
        step.prompt = markers.restore(step.prompt)
        return step.prompt

    def _moveInHistory(self, session, move: Callable, runOnWorker: Callable, after: bool) -> Optional[EditStep]:
        """Run the engine's undo or redo (``move``) and write the segment regions of the step it moved: as they
        were before the step (undo) or after it (redo). None when that step wrote no segment."""
        io = self.io
        runOnWorker(move)
        step = session.last_annotation
        if not isinstance(step, EditStep):
            return None
        self.checkKept(io)
        io.writeStep(step, after=after)
        return step

    def undoAll(self, session, runOnWorker: Callable, markers) -> List[Prompt]:
        """Undo every step in one worker call (the segment's earlier voxels come back); redo can replay them."""
        io = self.io

        def undoAllSteps():
            steps = []
            while session.can_undo:
                session.undo()
                steps.append(session.last_annotation)
            return steps

        steps = [step for step in runOnWorker(undoAllSteps) if isinstance(step, EditStep)]
        self.checkKept(io)
        for step in steps:
            io.writeStep(step, after=False)
        markers.clear()
        return [step.prompt for step in steps]
