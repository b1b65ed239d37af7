"""SAMVolSegment: click-based 3D segmentation in 3D Slicer with SAM-Med3D-compatible models.

Layers: the widget (``.ui`` + shortcuts) makes one Logic call per user action (``addPointFromMarkup``,
``setBoxFromROI``, ``addStrokeFromCurve``, ``propose``, ``undo``, ...). The Logic reads model, target and masking
settings from the parameter node and owns the whole step on one persistent worker thread, through the session
protocol only (``SAMVolSegmentLib.engine.session_protocol``; local or remote: ``SAMVolSegmentSlicerLib.backend``).
Its parts live in ``SAMVolSegmentSlicerLib`` (``target``, ``segment_io``, ``markers``, ``strokes``,
``segment_volume``, the panel's ``settings_panel``, ``propose``, ``progress_display``, ``shortcuts``); this file
keeps the module classes and the glue between them. ``Testing/test_slicer_module_*.py`` runs it on Slicer's core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import qt
import slicer
import vtk
from SAMVolSegmentSlicerLib import dependencies
from slicer import (
    vtkMRMLMarkupsClosedCurveNode,
    vtkMRMLMarkupsCurveNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Loaded from source, the engine sits in the repository root, one level above this file's folder.
_ENGINE_ROOT = dependencies.engine_import_root(os.path.dirname(os.path.abspath(__file__)))
if _ENGINE_ROOT is not None and _ENGINE_ROOT not in sys.path:
    sys.path.insert(0, _ENGINE_ROOT)

from SAMVolSegmentSlicerLib import backend, coordinates, local_session, progress_display, segment_io, strokes  # noqa: E402
from SAMVolSegmentSlicerLib.dependencies import InstallError  # noqa: E402
from SAMVolSegmentSlicerLib.markers import BoxPlacement, PromptMarkers, isProgrammaticPoint  # noqa: E402
from SAMVolSegmentSlicerLib.progress_display import ProgressDisplay  # noqa: E402
from SAMVolSegmentSlicerLib.propose import ProposalStep, ProposeControl, checkProposalClass, modelReadyStatus  # noqa: E402
from SAMVolSegmentSlicerLib.segment_merge import OtherSegments  # noqa: E402
from SAMVolSegmentSlicerLib.segment_selector import SelectorSync  # noqa: E402
from SAMVolSegmentSlicerLib.segment_volume import VolumeJob  # noqa: E402
from SAMVolSegmentSlicerLib.settings_panel import SettingsPanel  # noqa: E402
from SAMVolSegmentSlicerLib.shortcuts import ModuleShortcuts  # noqa: E402
from SAMVolSegmentSlicerLib.target import Target, TargetRemovedError  # noqa: E402
from SAMVolSegmentSlicerLib.undo_stack import EditStep, Prompt  # noqa: E402
from SAMVolSegmentSlicerLib.worker import EngineWorker, WorkerBusyError  # noqa: E402

from SAMVolSegmentLib.engine.mask_update import MaskUpdate  # noqa: E402
from SAMVolSegmentLib.engine.session_protocol import SegmentationSession, check_session  # noqa: E402

logger = logging.getLogger(__name__)


class SAMVolSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and Help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMVolSegment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]  # Slicer's own category
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["SAMVolSegment contributors"]
        self.parent.helpText = _(
            "Click-based 3D segmentation with SAM-Med3D-compatible models. Place positive (A) and negative (S) points "
            "(T toggles), a box (X), a scribble (D) or a lasso (L) (a right-click or double-click finishes it); undo "
            "Ctrl+Z, redo Ctrl+Y, accept and start the next segment N, reset Shift+R, show/hide the segment V. "
            "Selecting an existing segment edits it. A model taught a structure (samvolseg teach) proposes it "
            "without a click (Propose); clicks then correct it.")
        self.parent.acknowledgementText = _(
            "Model architecture from SAM-Med3D (uni-medical, Apache-2.0) and Segment Anything (Meta, Apache-2.0)."
        )


@parameterNodeWrapper
class SAMVolSegmentParameterNode:
    """Scene state, saved with the scene.

    inputVolume: the volume to segment. segmentationNode/segmentID: the target. positivePoints/negativePoints:
    point lists holding the clicks. boxROI: the optional box. scribbleCurve/lassoCurve: the stroke being drawn.
    positivePolarity: what scribbles and lassos draw (A/S/T). otherSegments: what may happen to other segments.
    useSegmentEditorMasking: follow the Segment Editor's editable area and intensity range.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentationNode: vtkMRMLSegmentationNode
    segmentID: str = ""
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    boxROI: vtkMRMLMarkupsROINode
    scribbleCurve: vtkMRMLMarkupsCurveNode
    lassoCurve: vtkMRMLMarkupsClosedCurveNode
    positivePolarity: bool = True
    otherSegments: OtherSegments = OtherSegments.PROTECT
    useSegmentEditorMasking: bool = True


class BusyError(WorkerBusyError):
    """A user action arrived while another one is still running (events are pumped meanwhile); it is dropped."""


#
# Logic
#


class SAMVolSegmentLogic(ScriptedLoadableModuleLogic):
    """Interactive segmentation of one target segment; one call per user action, usable without the widget.
    ``segmentVolume`` segments from a whole prompt set (console, scripts), as ``samvolseg batch`` does.

    Holds no Qt objects. Progress reaches the caller through ``statusCallback(text)`` and
    ``slowCallback(elapsedSeconds, fraction, message)``; ``processEvents`` is pumped while the engine works;
    ``confirmCallback(question) -> bool`` asks before a download (None: never download).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = EngineWorker()
        self.session: Optional[SegmentationSession] = None
        self.modelKey: Optional[Tuple[str, ...]] = None
        self.modelSource = backend.SETTING_DEFAULTS["model"]
        self.device, self.threads = backend.SETTING_DEFAULTS["device"], backend.SETTING_DEFAULTS["threads"]
        #: Where sessions run (``setBackend``); the token is kept here and in QSettings, never in the scene.
        self.backend = backend.Backend()
        #: The local backend's ``factory(source, device, download, progress) -> session``; tests replace it.
        #: The default builds each session on the model the Logic keeps (``modelFactory``).
        self.sessionFactory: Callable[..., SegmentationSession] = local_session.localSession
        #: ``factory(source, device, download, progress) -> model``: the local model, loaded on the worker once
        #: per (source, device) and kept, for the default sessions and ``segmentVolume``; tests replace it.
        self.modelFactory: Callable[..., Any] = local_session.localModel
        self._keptModel = local_session.KeptModel()
        self.statusCallback: Optional[Callable[[str], None]] = None
        self.slowCallback: Optional[Callable[[float, Optional[float], str], None]] = None
        self.confirmCallback: Optional[Callable[[str], bool]] = None
        self.processEvents: Optional[Callable[[], None]] = slicer.app.processEvents if slicer.app else None
        self.lastTiming: Dict[str, float] = {}
        self._busy = False
        self._placingMarkerID = ""  # the marker of the click being run (kept when a new model drops the others)
        self._cleanupRequested = False
        self.markers = PromptMarkers(self.getParameterNode)
        #: Volume, segmentation and segment of the interactive steps (``setTarget``); the history belongs to it.
        self.target = Target()
        self._proposalClasses: Tuple[str, ...] = ()

    def getParameterNode(self) -> SAMVolSegmentParameterNode:
        """The module's parameter node (created on first use)."""
        return SAMVolSegmentParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ in-flight guard
    @property
    def busy(self) -> bool:
        """True while an action runs; events are pumped then, so shortcuts and clicks must not start another."""
        return self._busy

    @contextlib.contextmanager
    def _action(self) -> Iterator[None]:
        if self._busy:
            raise BusyError(_("The previous step is still running; wait for it to finish."))
        self._busy = True
        try:
            yield
        finally:
            self._busy, self._placingMarkerID = False, ""
            self._cleanupIfRequested()

    def _runOnWorker(self, fn, *args, **kwargs):
        try:
            return self.worker.run(fn, *args, process_events=self.processEvents, on_slow=self.slowCallback, **kwargs)
        finally:
            if not self._busy:
                self._cleanupIfRequested()

    def _cleanupIfRequested(self) -> None:
        if self._cleanupRequested:
            self._cleanupRequested = False
            self.cleanup()

    def _status(self, text: str) -> None:
        logger.info(text)
        if self.statusCallback:
            self.statusCallback(text)

    # ------------------------------------------------------------------ model
    def loadModel(self, source: Optional[str] = None, device: Optional[str] = None, download: bool = False) -> str:
        """Load a model (registry name or file path) on the worker and start a new session; returns its id.

        A registered model that is not on disk is downloaded after ``confirmCallback`` agrees (or with
        ``download=True``).
        """
        source = self.modelSource if source is None else str(source)
        device = self.device if device is None else str(device)
        key = self.backend.sessionKey(source, device, self.threads)
        if self.session is not None and key == self.modelKey:
            return self.session.model_id
        factory = backend.sessionFactory(self.backend, self.sessionFactory)
        if factory is local_session.localSession:
            dependencies.check_dependencies()
            factory = self._sessionOnKeptModel
        self._status(_("Connecting to {url}...").format(url=self.backend.url) if self.backend.isRemote
                     else _("Loading model {source}...").format(source=source))
        session = self._runModelWork(factory, source, device, download, self.worker.progress)
        check_session(session)
        try:
            classes = tuple(str(name) for name in self._runOnWorker(session.proposal_classes))
            adapted = tuple(str(name) for name in self._runOnWorker(session.adapted_classes))
        except Exception:
            self.worker.run(session.close)
            raise
        if self.session is not None and (self.session.can_undo or self.session.can_redo):
            self.markers.clear(keep=self._placingMarkerID)  # their history belonged to the previous model
        self.closeSession()
        self.session, self.modelKey, self._proposalClasses = session, key, classes
        self._status(modelReadyStatus(session.model_id, classes, adapted))
        return session.model_id

    def proposalClasses(self) -> Tuple[str, ...]:
        """The structures the loaded model proposes without a click (``propose``); empty when no model is loaded
        or it has no proposal head (``samvolseg teach`` makes a model file with one). Remote: the server's model,
        as its ``/info`` lists them."""
        return self._proposalClasses

    def _runModelWork(self, fn: Callable, source: str, device: str, download: bool, *args):
        """``fn(source, device, download, *args)`` on the worker; a registered model that is not on disk is
        downloaded (``fn`` called again with ``download=True``) after ``confirmCallback`` agrees."""
        from SAMVolSegmentLib.errors import ModelNotAvailableError

        try:
            return self._runOnWorker(fn, source, device, download, *args)
        except ModelNotAvailableError as exc:
            question = _("{error}\n\nDownload it now?").format(error=exc)
            if download or self.confirmCallback is None or not self.confirmCallback(question):
                raise
            return self._runOnWorker(fn, source, device, True, *args)

    def _localModel(self, source: str, device: str, download: bool, progress) -> Any:
        """On the worker: the local model, loaded once per (source, device) and kept (``local_session.KeptModel``)."""
        return self._keptModel.get(self.modelFactory, source, device, download, progress)

    def _sessionOnKeptModel(self, source: str, device: str, download: bool, progress) -> SegmentationSession:
        """On the worker: an interactive session on the kept local model (``segmentVolume`` shares it)."""
        model = self._localModel(source, device, download, progress)
        return local_session.localSession(source, device, download, progress, model=model, threads=self.threads)

    def setBackend(self, newBackend: backend.Backend) -> bool:
        """Use another backend from the next step on; returns True when a session was closed for it. Switching
        mid-segment is handled, not refused: the session closes now (a remote one ends on the server), the
        segment keeps its voxels and seeds the next backend's session (as editing an existing segment), and the
        prompt markers are removed because their undo history belonged to the closed session."""
        with self._action():
            if newBackend == self.backend:
                return False
            self.backend = newBackend
            if self.session is None:
                return False
            self.closeSession()
            self.markers.clear()
            self._status(_("Backend changed to {where}: the segment keeps its voxels; earlier prompts can no "
                           "longer be undone.").format(where=newBackend.describe()))
            return True

    def testConnection(self, candidate: Optional[backend.Backend] = None) -> str:
        """Check that the remote server (``candidate`` or the current backend) answers and accepts the token."""
        candidate = self.backend if candidate is None else candidate
        if not candidate.isRemote:
            raise ValueError(_("Choose Remote server as the backend to test a connection."))
        with self._action():
            message = self._runOnWorker(backend.testConnection, candidate)
        self._status(message)
        return message

    def closeSession(self) -> None:
        """Stop the current session's background work (the worker thread stays)."""
        if self.session is not None:
            session, self.session = self.session, None
            self.worker.run(session.close)
        self.target.forgetSession()
        self._proposalClasses = ()

    def cleanup(self) -> None:
        """Release the session, the kept model and the worker thread (module cleanup). Called from an event
        pumped while the worker runs (Slicer closing, Reload), it happens when that call has returned."""
        if self.worker.busy:
            self._cleanupRequested = True
            return
        self.closeSession()
        self.worker.close()
        self._keptModel.clear()

    # ------------------------------------------------------------------ geometry (kept for the console)
    nodeToWorldMatrix = staticmethod(segment_io.nodeToWorldMatrix)
    volumeIjkToWorld = staticmethod(segment_io.volumeIjkToWorld)

    # ------------------------------------------------------------------ target
    def prepareVolume(self, volumeNode) -> None:
        """Start preprocessing a newly selected volume when a model is loaded, so the first click rarely waits."""
        if self._busy:
            return
        if volumeNode is not None and self.target.io is not None and volumeNode is not self.target.io.volumeNode:
            self.markers.clear()  # the next click starts a new history on this volume: the old markers are stale
        if volumeNode is None or volumeNode.GetImageData() is None or self.session is None:
            return
        with self._action():
            self.target.sendVolume(self.session, self._runOnWorker, volumeNode)

    def setTarget(self, volumeNode, segmentationNode, segmentID: str = "") -> str:
        """Select the volume and target segment (created when ``segmentID`` is empty; an existing one is edited:
        its voxels seed the engine, so negative clicks can remove them); returns the segment ID."""
        return self.target.select(self.session, self._runOnWorker, volumeNode, segmentationNode, segmentID)

    def _ensureTargetFromParameterNode(self, check: Optional[Callable[[SegmentationSession], Any]] = None) -> None:
        """Model, volume and target from the parameter node; creates the segmentation/segment when empty.
        ``check(session)`` may refuse the step first, before anything is created."""
        self.loadModel()
        if check is not None:
            check(self.session)
        self.target.selectFromParameterNode(self.getParameterNode(), self.session, self._runOnWorker)

    def _policy(self):
        pn = self.getParameterNode()
        segmentEditorNode = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        return segment_io.editPolicyFromSegmentEditor(segmentEditorNode, pn.otherSegments, pn.useSegmentEditorMasking)

    def onTargetSelected(self) -> None:
        """The user picked another target: its prompts start fresh (the session re-seeds on the next step)."""
        self.target.seeded = False
        self.markers.clear()

    def onNodeRemoved(self, node) -> None:
        """A node was deleted: forget a target that used it, so the next step starts on what is selected."""
        self.target.onNodeRemoved(node)

    # ------------------------------------------------------------------ one user action each
    def addPointFromMarkup(self, markupsNode, index: int) -> Optional[MaskUpdate]:
        """A control point was placed by the user: lock it, run the step, write the segment.

        On failure the point is removed and the error raised: nothing changed. While another action runs the
        point is removed and None returned (the widget shows no dialog for that).
        """
        if (self.markers.adding or isProgrammaticPoint(markupsNode) or index < 0
                or index >= markupsNode.GetNumberOfControlPoints()):
            return None  # a point added by code (this Logic or another one), or no longer there
        controlPointID = markupsNode.GetNthControlPointID(index)
        markerID = f"{markupsNode.GetID()}:{controlPointID}"
        if self._busy:
            self.markers.remove(markerID)
            return None
        positive = markupsNode is not self.getParameterNode().negativePoints
        markupsNode.SetNthControlPointLocked(index, True)
        pointWorld = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index, pointWorld)
        return self._placedStep(markerID, lambda: self._pointStep(pointWorld, positive, markerID))

    def addStrokeFromCurve(self, curveNode) -> Optional[MaskUpdate]:
        """The scribble or lasso curve's placement ended (``strokes.py``): one step with the line it shows, a
        locked marker of the polarity in place of the emptied curve. On failure the marker is removed and the error
        raised: nothing changed. While another action runs the stroke is dropped (None)."""
        kind, pointsWorld = self.markers.takeStroke(curveNode)
        if not len(pointsWorld) or self._busy:
            return None
        positive = self.markers.positive
        markerID = self.markers.showStroke(kind, positive, pointsWorld)
        return self._placedStep(markerID, lambda: self._strokeStep(kind, pointsWorld, positive, markerID),
                                check=lambda session: strokes.strokeCall(session, kind, pointsWorld, positive))

    def _placedStep(self, markerID: str, step: Callable[[], MaskUpdate],
                    check: Optional[Callable[[SegmentationSession], Any]] = None) -> MaskUpdate:
        """A prompt the user placed, its marker ``markerID`` shown: target from the parameter node (after
        ``check(session)``), ``step()``; on failure the marker is removed and the error raised."""
        try:
            with self._action():
                self._placingMarkerID = markerID
                self._ensureTargetFromParameterNode(check)
                return step()
        except Exception:
            self.markers.remove(markerID)
            raise

    def setBoxFromROI(self, roiNode) -> Optional[MaskUpdate]:
        """The box ROI changed: send it once both corners are placed (every size component > 0)."""
        box = segment_io.boxFromROI(roiNode)
        if box is None or self._busy:
            return None
        with self._action():
            self._placingMarkerID = roiNode.GetID()
            self._ensureTargetFromParameterNode()
            return self._boxStep(box[0], box[1], roiNode.GetID())

    def _consoleStep(self, step: Callable[..., MaskUpdate], *args) -> MaskUpdate:
        with self._action():
            self.target.require(self.session, self._runOnWorker)
            return step(*args)

    def addPoint(self, pointWorld: Sequence[float], positive: bool = True, markerID: str = "") -> MaskUpdate:
        """A click at a world RAS position on the current target (console; call ``setTarget`` first)."""
        return self._consoleStep(self._pointStep, pointWorld, positive, markerID)

    def setBox(self, minWorld: Sequence[float], maxWorld: Sequence[float], markerID: str = "") -> MaskUpdate:
        """A box prompt (axis-aligned world RAS corners) on the current target (console)."""
        return self._consoleStep(self._boxStep, minWorld, maxWorld, markerID)

    def addScribble(self, pointsWorld, positive: bool = True, markerID: str = "") -> MaskUpdate:
        """A scribble, an open polyline of (N, 3) world RAS points (mm), on the current target (console): the voxels
        it passes keep its sign, the model gets clicks along it (``SegmentationSession.add_scribble``)."""
        return self._consoleStep(self._strokeStep, "scribble", pointsWorld, positive, markerID)

    def addLasso(self, pointsWorld, positive: bool = True, markerID: str = "") -> MaskUpdate:
        """A lasso, a closed contour of N >= 3 world RAS points on one plane, on the current target (console): its
        filled polygon keeps its sign (``add_lasso``); points off one plane raise ``InvalidPromptError``."""
        return self._consoleStep(self._strokeStep, "lasso", pointsWorld, positive, markerID)

    def propose(self, className: str) -> MaskUpdate:
        """The model's prompt-free proposal for ``className`` in the target segment: one step, like a click
        (model and target from the parameter node; ``SegmentationSession.propose`` replaces the mask and places one
        positive click at its deepest point; the write follows *Other segments* and masking). Undo gives back the
        segment as it was, redo the proposal; clicks refine it. Its click shows as a locked positive point labelled
        with the class; the markers of the prompts it replaced are hidden until it is undone (``markers.py``).

        :raises SAMVolSegmentLib.errors.InvalidPromptError: the model does not know ``className`` (or proposes
            nothing), or found none of it here. Nothing changes: what was created for this call is removed.
        """
        className = str(className)
        with self._action():
            self.loadModel()
            checkProposalClass(self.proposalClasses(), self.session.model_id, className)
            pn = self.getParameterNode()
            node = pn.segmentationNode
            hadSegment = bool(node and pn.segmentID and node.GetSegmentation().GetSegment(pn.segmentID))
            before = (node, pn.segmentID, hadSegment)
            step = ProposalStep(className)
            try:
                self._ensureTargetFromParameterNode()
                return self._step(step.prompt, step.call)
            except Exception:
                if not step.stepped:
                    self.target.forgetCreated(pn, *before)
                raise

    def _pointStep(self, pointWorld, positive: bool, markerID: str) -> MaskUpdate:
        pointIjk = coordinates.world_to_ijk(pointWorld, self.target.io.ijkToWorld)
        if not coordinates.is_inside_volume(pointIjk, self.target.io.shapeKji):
            raise ValueError(_("The point is outside the input volume; click inside it."))
        prompt = Prompt("point", bool(positive), tuple(float(v) for v in pointWorld), markerID)
        point = np.asarray(pointWorld, float)
        return self._step(prompt, lambda session: session.add_click(point, positive=bool(positive)))

    def _strokeStep(self, kind: str, pointsWorld, positive: bool, markerID: str) -> MaskUpdate:
        points, call = strokes.strokeCall(self.session, kind, pointsWorld, positive)
        return self._step(Prompt(kind, bool(positive), tuple(float(v) for v in points.ravel()), markerID), call)

    def _boxStep(self, minWorld, maxWorld, markerID: str) -> MaskUpdate:
        prompt = Prompt("box", True, tuple(float(v) for v in (*minWorld, *maxWorld)), markerID)
        lo, hi = np.asarray(minWorld, float), np.asarray(maxWorld, float)
        return self._step(prompt, lambda session: session.set_box(lo, hi))

    def _step(self, prompt: Union[Prompt, Callable[[SegmentationSession], Prompt]],
              call: Callable[[SegmentationSession], MaskUpdate]) -> MaskUpdate:
        """Engine step, merge, write; the write's record hangs on the engine step (one history).

        ``prompt`` may be a function of the session, called after the engine step (a proposal's click is known
        only then). Everything that can refuse a write is checked before the engine runs. If Slicer still
        refuses, the segmentation is restored, the engine step stays with an empty record and the error says to
        undo it; the engine is never asked to roll back. A target removed while the engine ran gets nothing.
        """
        if self.target.takeHistoryDropped():  # the volume changed (voxels, geometry): earlier prompts are gone
            self.markers.clear(keep=self._placingMarkerID)
        policy = self._policy()
        io, segmentID = self.target.io, self.target.segmentID
        io.checkWritable(segmentID, policy)
        start = time.perf_counter()
        session = self.session
        update = self._runOnWorker(call, session)
        if callable(prompt):
            prompt = prompt(session)
        try:
            self.target.checkKept(io)  # the worker pumped events meanwhile
        except TargetRemovedError:
            session.annotate_last_step(EditStep(prompt))
            raise
        writeStart = time.perf_counter()
        step = io.mergeUpdate(segmentID, update, prompt, policy)
        try:
            io.writeStep(step, after=True)
        except Exception as exc:
            session.annotate_last_step(EditStep(prompt))
            raise segment_io.SegmentWriteError(
                _("{error}\nThe segment is unchanged; undo (Ctrl+Z) removes the prompt.").format(error=exc)) from exc
        if prompt.kind == "proposal":  # the user placed no marker for it: show its click, hide what it replaced
            step.prompt = self.markers.restore(step.prompt)
        session.annotate_last_step(step)
        self.lastTiming = progress_display.stepTiming(session.last_timing, start, writeStart)
        return update

    @property
    def canUndo(self) -> bool:
        """True when the last prompt can be undone."""
        return self.session is not None and self.target.seeded and bool(self.session.can_undo)

    @property
    def canRedo(self) -> bool:
        """True when an undone prompt can be redone."""
        return self.session is not None and self.target.seeded and bool(self.session.can_redo)

    def undo(self) -> Optional[Prompt]:
        """Undo the last prompt: engine state, every segment region it wrote, and its marker; returns it."""
        with self._action():
            return self.target.undo(self.session, self._runOnWorker, self.markers) if self.canUndo else None

    def redo(self) -> Optional[Prompt]:
        """Redo the last undone prompt; its point marker comes back (and the record learns the new ID); a redone
        proposal hides the markers of the prompts it replaces again."""
        with self._action():
            return self.target.redo(self.session, self._runOnWorker, self.markers) if self.canRedo else None

    def reset(self) -> List[Prompt]:
        """Undo every prompt of the current segment (its earlier voxels come back); redo can replay them."""
        with self._action():
            return self.target.undoAll(self.session, self._runOnWorker, self.markers) if self.canUndo else []

    def acceptSegment(self) -> str:
        """Mark the target Completed, start a new empty segment in the same segmentation; returns its ID."""
        with self._action():
            self.markers.clear()
            return self.target.acceptSegment(self.getParameterNode())

    def toggleSegmentVisibility(self) -> bool:
        """Show or hide the target segment (V); returns the new visibility."""
        pn = self.getParameterNode()
        return segment_io.toggleSegmentVisibility(pn.segmentationNode, pn.segmentID)

    # ------------------------------------------------------------------ markers (user actions)
    def startPlacing(self, kind: str) -> None:
        """Enter place mode: ``"positive"``/``"negative"`` points (persistent) or a new ``"box"``."""
        self.markers.startPlacing(kind)

    def togglePolarity(self) -> str:
        """Switch between placing positive and negative points (T); returns the kind now placed."""
        return self.markers.togglePolarity()

    # ------------------------------------------------------------------ console
    def segmentVolume(self, volumeNode, segmentationNode, points_ras, labels, box=None, segmentName: str = "",
                      model: Optional[str] = None, device: Optional[str] = None,
                      otherSegments: OtherSegments = OtherSegments.OVERLAP, scribbles=(), lassos=()) -> str:
        """Segment one structure from a whole prompt set without the GUI; returns the new segment's ID.

        The batch path (``SAMVolSegmentSlicerLib.segment_volume``): the mask ``SAMVolSegmentLib.segment`` or
        ``samvolseg batch`` gives for the same voxels, world geometry and prompts, computed on the Logic's worker
        with the model it keeps, written into a NEW segment; other segments, the interactive session and its
        history are not touched (no undo: delete the segment). Remote backend: a fresh server session, so
        ``model`` and ``device`` must be left unset. Whatever fails, the segmentation is left as it was.

        :param points_ras: (N, 3) world RAS points (mm), e.g. ``slicer.util.arrayFromMarkupsControlPoints(node,
            world=True)``; N may be 0 with a box or a positive stroke. labels: N values, 1/True = positive.
        :param box: optional ``(min_ras, max_ras)``; scribbles, lassos: ``(points_ras (M, 3), positive)`` pairs
            (``slicer.util.arrayFromMarkupsCurvePoints(curve, world=True)``), applied box, lassos, scribbles, points.
        :param model: registry name or checkpoint path; device: ``auto``/``cpu``/``cuda``/``mps``; None: the
            module's settings. otherSegments: ``OVERLAP`` (default) or ``PROTECT``; ``OVERWRITE`` is refused.
        :raises SAMVolSegmentLib.errors.InvalidPromptError: malformed prompts, no positive prompt and no box.
        :raises ValueError: no volume / segmentation, a non-linear transform, a model with a remote backend.
        :raises segment_io.SegmentWriteError: not a binary labelmap, or Slicer refused the write.
        Example: ``logic.segmentVolume(volume, segmentation, [[10.0, -20.0, 35.0]], [1])``
        """
        with self._action():
            job = VolumeJob(volumeNode, segmentationNode, points_ras, labels, box, otherSegments,
                            remoteWithModel=self.backend.isRemote and (model is not None or device is not None),
                            scribbles=scribbles, lassos=lassos)
            start = time.perf_counter()
            onEvent = job.progressReporter(self.worker.progress)
            if self.backend.isRemote:
                self._status(_("Segmenting on {url}...").format(url=self.backend.url))
                maskKji = self._runOnWorker(job.segmentRemotely, self.backend, self.worker.progress, onEvent)
            else:
                source = self.modelSource if model is None else str(model)
                device = self.device if device is None else str(device)
                if self.modelFactory is local_session.localModel:
                    dependencies.check_dependencies()
                self._status(_("Segmenting {name}...").format(name=volumeNode.GetName()))
                maskKji = self._runModelWork(self._segmentLocally, source, device, False, job, onEvent)
            writeStart = time.perf_counter()
            segmentID = job.writeNewSegment(maskKji, segmentName)
            self.lastTiming = progress_display.stepTiming(job.timings, start, writeStart)
            self._status(job.summary(maskKji))
            return segmentID

    def _segmentLocally(self, source, device, download, job: VolumeJob, onEvent) -> np.ndarray:
        """On the worker: the batch path on the kept local model; the (k, j, i) mask."""
        return job.segmentLocally(self._localModel(source, device, download, self.worker.progress), onEvent, self.threads)


#
# Widget
#


class SAMVolSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: node selection, place modes, shortcuts; every user action is one Logic call."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SAMVolSegmentLogic] = None
        self._parameterNode: Optional[SAMVolSegmentParameterNode] = None
        self._parameterNodeGuiTag = None
        self.shortcuts = ModuleShortcuts(self.onAction)
        self._observedMarkups, self._boxPlacement = [], BoxPlacement()

    def setup(self) -> None:
        """Called when the module is first opened."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMVolSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.selectorSync = SelectorSync(self.ui.segmentSelector)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SAMVolSegmentLogic()
        self.logic.statusCallback = self.ui.statusLabel.setText
        self.progress = ProgressDisplay(self.ui.progressBar, self.ui.statusLabel)
        self.logic.slowCallback = self.progress.onSlow
        self.logic.confirmCallback = lambda question: slicer.util.confirmOkCancelDisplay(
            question, windowTitle=_("Model download"))

        for choice, label in ((OtherSegments.PROTECT, "Protect (never change them)"),
                              (OtherSegments.OVERLAP, "Allow overlap"),
                              (OtherSegments.OVERWRITE, "Overwrite (Segment Editor setting)")):
            self.ui.otherSegmentsComboBox.addItem(_(label), choice.value)
        self.ui.progressBar.hide()
        self.proposeControl = ProposeControl(self.ui, self.logic, self._run, self._showTiming)
        self.settingsPanel = SettingsPanel(self.ui, self.logic, self._run, self._updateGUI, self.progress.hide)

        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.otherSegmentsComboBox.connect("currentIndexChanged(int)", self.onOtherSegmentsChanged)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.positiveButton.connect("clicked(bool)", lambda: self.onAction("positive"))
        self.ui.negativeButton.connect("clicked(bool)", lambda: self.onAction("negative"))
        self.ui.boxButton.connect("clicked(bool)", lambda: self.onAction("box"))
        self.ui.scribbleButton.connect("clicked(bool)", lambda: self.onAction("scribble"))
        self.ui.lassoButton.connect("clicked(bool)", lambda: self.onAction("lasso"))
        self.ui.undoButton.connect("clicked(bool)", lambda: self.onAction("undo"))
        self.ui.redoButton.connect("clicked(bool)", lambda: self.onAction("redo"))
        self.ui.acceptButton.connect("clicked(bool)", lambda: self.onAction("accept"))
        self.ui.resetButton.connect("clicked(bool)", lambda: self.onAction("reset"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        # A loaded scene's parameter node is copied over ours (vtkMRMLScene::AddNode of a singleton), naming
        # its own point lists: observe those (Libs/MRML/Core/vtkMRMLScene.cxx, Import).
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndClose)
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()  # a singleton: kept by Clear
        self.addObserver(interactionNode, interactionNode.EndPlacementEvent, self.onPlacementEnded)
        self.initializeParameterNode()
        self._updateGUI()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()
        self.shortcuts.remove()
        if self.logic:
            self.logic.cleanup()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        self.shortcuts.install()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        self.shortcuts.remove()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)
        if self.logic and not self.logic.busy:
            self.logic.closeSession()
            self._updateGUI()

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed or a scene was loaded into it."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node) -> None:
        """A deleted volume or segmentation ends the current edit; deleted prompt nodes are recreated."""
        if self.logic is None or node is None:
            return
        self.logic.onNodeRemoved(node)
        observed = any(node is markups for markups, _event, _method in self._observedMarkups)
        if observed and self._parameterNode is not None and not slicer.mrmlScene.IsClosing():
            self.setParameterNode(self._parameterNode)  # re-creates and re-observes the prompt nodes

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists, with prompt nodes and a default volume."""
        pn = self.logic.getParameterNode()
        if not pn.inputVolume:
            pn.inputVolume = segment_io.firstScalarVolume(slicer.mrmlScene)
        self.setParameterNode(pn)

    def setParameterNode(self, parameterNode: Optional[SAMVolSegmentParameterNode]) -> None:
        """Bind the GUI to a parameter node and observe its prompt nodes."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._unobserveMarkups()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self.logic.markers.ensureNodes()
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.otherSegmentsComboBox.setCurrentIndex(
                self.ui.otherSegmentsComboBox.findData(self._parameterNode.otherSegments.value))
            self.selectorSync.show(self._parameterNode)
            self._observeMarkups()

    def _observeMarkups(self) -> None:
        pn, evt = self._parameterNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
        self._observedMarkups = self._boxPlacement.observations(pn.boxROI, self.onBoxChanged) + [
            (pn.positivePoints, evt, self.onPointDefined), (pn.negativePoints, evt, self.onPointDefined)]
        for node, event, method in self._observedMarkups:
            self.addObserver(node, event, method)

    def _unobserveMarkups(self) -> None:
        # Only what was observed: slicer.util.VTKObservationMixin.removeObserver warns about anything else.
        while self._observedMarkups:
            self.removeObserver(*self._observedMarkups.pop())  # (node, event, method)

    # ------------------------------------------------------------------ running actions
    def _run(self, failureMessage: str, fn: Callable, *args):
        """Run one Logic call with a busy cursor; show its error once; never let it escape into Qt or VTK.

        ``slicer.util.tryWithErrorDisplay`` re-raises after its dialog (Base/Python/slicer/util.py), which from
        a VTK observer or Qt slot only ends in a traceback in the console, so errors are handled here.
        """
        if self.logic.busy:
            return None
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        self._setInputsEnabled(False)
        try:
            return fn(*args)
        except BusyError:
            return None
        except TargetRemovedError as exc:  # the user deleted it (or closed the scene): no dialog for that
            self.ui.statusLabel.setText(str(exc))
            return None
        except Exception as exc:
            logger.error("%s\n%s", failureMessage, traceback.format_exc())
            self.progress.hide()  # a modal progress dialog would sit over the error dialog
            slicer.util.errorDisplay(f"{failureMessage}\n\n{exc}", detailedText=traceback.format_exc())
            return None
        finally:
            slicer.app.restoreOverrideCursor()
            self._setInputsEnabled(True)
            self.progress.hide()
            self.selectorSync.show(self._parameterNode)
            self._updateGUI()

    def _setInputsEnabled(self, enabled: bool) -> None:
        # While a step pumps events, a changed target or model would act on a half-done step.
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton):
            widget.enabled = enabled

    def onAction(self, action: str) -> None:
        """A button or shortcut; does nothing while a step runs."""
        if self.logic is None or self.logic.busy:
            return
        calls = {"togglePolarity": (_("Could not switch polarity."), self.logic.togglePolarity),
                 "toggleVisibility": (_("Could not change the segment's visibility."),
                                      self.logic.toggleSegmentVisibility),
                 "undo": (_("Undo failed."), self.logic.undo), "redo": (_("Redo failed."), self.logic.redo),
                 "reset": (_("Reset failed."), self.logic.reset),
                 "accept": (_("Could not start the next segment."), self.logic.acceptSegment)}
        if action in ("positive", "negative", "box", "scribble", "lasso"):
            self._run(_("Could not start placing."), self.logic.startPlacing, action)
        elif action in calls:
            self._run(*calls[action])
        else:
            raise ValueError(f"Unknown action {action!r}")
        if action in ("positive", "negative", "box", "scribble", "lasso", "togglePolarity"):
            # Said at once, not only after the next step: T flips what the next click places.
            progress_display.showPlacing(self.ui.statusLabel, self.logic.markers)

    def onPropose(self) -> None:
        """The Propose button (``propose.ProposeControl``): one Logic step, like a click."""
        self.proposeControl.onPropose()

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointDefined(self, caller, event, index=None) -> None:
        """A point was placed (the event carries its index, vtkMRMLMarkupsNode.cxx): one Logic step."""
        if index is not None:  # a deferred event has no call data, and VTK then passes no third argument
            self._placed(_("Segmentation failed."), self.logic.addPointFromMarkup, caller, int(index))

    def onBoxChanged(self, caller, event) -> None:
        """A box corner was placed; the Logic acts once both are, once per placement (``BoxPlacement``)."""
        if self._boxPlacement.completedBy(caller):
            self._placed(_("Box prompt failed."), self.logic.setBoxFromROI, caller)

    def onPlacementEnded(self, caller, event) -> None:
        """Place mode ended (right-click, double-click, another mouse mode): a scribble or lasso being drawn is
        finished, one Logic step (``EndPlacementEvent``, see ``SAMVolSegmentSlicerLib/strokes.py``)."""
        curveNode = self.logic.markers.endedStroke() if self._parameterNode else None
        if curveNode is not None and not (slicer.mrmlScene.IsClosing() or slicer.mrmlScene.IsImporting()):
            self._placed(_("Scribble or lasso failed."), self.logic.addStrokeFromCurve, curveNode)

    def _placed(self, failureMessage: str, fn: Callable, *args) -> None:
        """A prompt placed in a view: one Logic step. Placed while a step runs: the Logic drops it (no dialog)."""
        if self.logic.busy:
            fn(*args)
        elif self._run(failureMessage, fn, *args) is not None:
            self._showTiming()

    def _showTiming(self) -> None:
        progress_display.showStep(self.ui.statusLabel, self.logic)

    # ------------------------------------------------------------------ settings and model
    def onOtherSegmentsChanged(self, *_args) -> None:
        """Store the other-segments rule in the scene."""
        if self._parameterNode:
            self._parameterNode.otherSegments = OtherSegments(self.ui.otherSegmentsComboBox.currentData)

    def onLoadModel(self) -> None:
        """Load the chosen model (downloading SAM-Med3D-turbo after confirmation)."""
        self._run(_("Failed to load the model."), self.logic.loadModel)

    # ------------------------------------------------------------------ target
    def onInputVolumeChanged(self, node) -> None:
        """Preprocessing starts as soon as a volume is picked and a model is loaded. Uses ``node``: the parameter
        node is updated by a handler connected later (``connectGui`` runs after ``setup`` connects this one, and
        Qt calls slots in connection order), so it still holds the old volume."""
        if self._parameterNode is not None and node is not None:
            self._parameterNode.inputVolume = node
        self._run(_("Failed to prepare the volume."), self.logic.prepareVolume, node)

    def onSegmentationChanged(self, node) -> None:
        """Store the chosen segmentation in the scene."""
        if self.selectorSync.syncing or self._parameterNode is None or node is self._parameterNode.segmentationNode:
            return
        self._parameterNode.segmentationNode = node

    def onSegmentChanged(self, segmentID: str) -> None:
        """The user picked another target segment: its prompts start fresh (an existing one is edited)."""
        pn = self._parameterNode
        if self.selectorSync.syncing or pn is None or (segmentID or "") == pn.segmentID:
            return
        if self.logic.busy:  # the selector is disabled then; a late signal is put back after the step
            return
        pn.segmentID = self.selectorSync.pickedSegment(pn, segmentID)  # not one it adopted after a deletion
        self.logic.onTargetSelected()
        self._updateGUI()

    def _updateGUI(self) -> None:
        self.ui.undoButton.enabled = bool(self.logic and self.logic.canUndo)
        self.ui.redoButton.enabled = bool(self.logic and self.logic.canRedo)
        missing = dependencies.missing_requirements()
        # A remote server needs no torch here.
        self.ui.installButton.setVisible(bool(missing) and not (self.logic and self.logic.backend.isRemote))
        self.proposeControl.update()


#
# Test
#


class SAMVolSegmentTest(ScriptedLoadableModuleTest):
    """Runs the in-Slicer self-test, ``Testing/Python/SAMVolSegmentSelfTest.py`` (Reload and Test)."""

    def runTest(self) -> None:
        """Run the self-test suite; it skips itself where torch is missing."""
        from SAMVolSegmentSlicerLib.self_test import runSelfTest

        runSelfTest(os.path.dirname(os.path.abspath(__file__)), self.delayDisplay)


# Names used only by annotations or tests must stay importable for ruff's unused-import check.
__all__ = ["SAMVolSegment", "SAMVolSegmentLogic", "SAMVolSegmentParameterNode", "SAMVolSegmentTest",
           "SAMVolSegmentWidget", "BusyError", "InstallError"]
