"""SAMVolSegment: click-based 3D segmentation in 3D Slicer with SAM-Med3D-compatible models.

Layers: the widget (``.ui`` + shortcuts) makes one Logic call per user action (``addPointFromMarkup``,
``setBoxFromROI``, ``propose``, ``undo``, ``redo``, ``reset``, ``acceptSegment``, ...). The Logic reads model, target and
masking settings from the parameter node and owns the whole step: engine call on one persistent worker thread
(only through the session protocol, ``SAMVolSegmentLib.session_protocol``, on the local engine or a remote
server: ``SAMVolSegmentSlicerLib.backend``; secrets and preferences stay in QSettings), segment write
(``SAMVolSegmentSlicerLib.segment_io``), markers, and one history (its segment edits hang on the engine's
steps). ``segmentVolume`` (console, scripts) runs a whole prompt set through the batch path
(``SAMVolSegmentLib.batch.segment_volume``, the code of ``samvolseg batch`` and ``SAMVolSegmentLib.segment``) on
the same worker and model, and writes a new segment with the same ``segment_io`` helper. Everything that is
not MRML/Qt glue lives in ``SAMVolSegmentSlicerLib`` and is tested with pytest outside Slicer;
``Testing/test_slicer_module_*.py`` runs this file against a stand-in of the Slicer API.
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
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
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

from SAMVolSegmentSlicerLib import backend, coordinates, local_session, segment_io  # noqa: E402
from SAMVolSegmentSlicerLib.dependencies import InstallError  # noqa: E402
from SAMVolSegmentSlicerLib.markers import PromptMarkers  # noqa: E402
from SAMVolSegmentSlicerLib.progress_display import ProgressDisplay  # noqa: E402
from SAMVolSegmentSlicerLib.segment_merge import EditPolicy, OtherSegments  # noqa: E402
from SAMVolSegmentSlicerLib.settings_panel import SettingsPanel  # noqa: E402
from SAMVolSegmentSlicerLib.undo_stack import EditStep, Prompt  # noqa: E402
from SAMVolSegmentSlicerLib.worker import EngineWorker, WorkerBusyError  # noqa: E402

from SAMVolSegmentLib import batch  # noqa: E402  (numpy only at import; torch on first use)
from SAMVolSegmentLib.mask_update import MaskUpdate  # noqa: E402
from SAMVolSegmentLib.session_protocol import SegmentationSession, check_session  # noqa: E402

logger = logging.getLogger(__name__)

#: Shortcuts, active only while the module is shown. A/S/X/N match no Segment Editor effect key and avoid the
#: slice views' own keys (b/f step slices, r resets the view). T and V shadow the views' layer toggles while
#: the module is shown, as in SlicerNNInteractive, whose users expect them.
SHORTCUTS = (
    ("A", "positive"),
    ("S", "negative"),
    ("T", "togglePolarity"),
    ("X", "box"),
    ("V", "toggleVisibility"),
    ("Ctrl+Z", "undo"),
    ("Ctrl+Y", "redo"),
    ("Ctrl+Shift+Z", "redo"),
    ("N", "accept"),
    ("Shift+R", "reset"),
)


class SAMVolSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and Help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMVolSegment")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["SAMVolSegment contributors"]
        self.parent.helpText = _(
            "Click-based 3D segmentation with SAM-Med3D-compatible models. Place positive (A) and negative (S) "
            "points (T toggles) or a box (X); undo Ctrl+Z, redo Ctrl+Y, accept and start the next segment N, "
            "reset Shift+R, show/hide the segment V. Selecting an existing segment edits it. A model taught a "
            "structure (samvolseg teach) proposes it without a click (Propose); clicks then correct it."
        )
        self.parent.acknowledgementText = _(
            "Model architecture from SAM-Med3D (uni-medical, Apache-2.0) and Segment Anything (Meta, Apache-2.0)."
        )


@parameterNodeWrapper
class SAMVolSegmentParameterNode:
    """Scene state, saved with the scene.

    inputVolume: the volume to segment. segmentationNode/segmentID: the target. positivePoints/negativePoints:
    point lists holding the clicks. boxROI: the optional box. otherSegments: what may happen to other segments.
    useSegmentEditorMasking: follow the Segment Editor's editable area and intensity range.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentationNode: vtkMRMLSegmentationNode
    segmentID: str = ""
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    boxROI: vtkMRMLMarkupsROINode
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
        self.device = backend.SETTING_DEFAULTS["device"]
        #: Where sessions run (``setBackend``); the token is kept here and in QSettings, never in the scene.
        self.backend = backend.Backend()
        #: The local backend's ``factory(source, device, download, progress) -> session``; tests replace it.
        #: The default builds each session on the model the Logic keeps (``modelFactory``).
        self.sessionFactory: Callable[..., SegmentationSession] = local_session.localSession
        #: ``factory(source, device, download, progress) -> model``: the local model, loaded on the worker once
        #: per (source, device) and kept, for the default sessions and ``segmentVolume``; tests replace it.
        self.modelFactory: Callable[..., Any] = local_session.localModel
        self._keptModel: Optional[Tuple[Tuple[str, str], Any]] = None
        self.statusCallback: Optional[Callable[[str], None]] = None
        self.slowCallback: Optional[Callable[[float, Optional[float], str], None]] = None
        self.confirmCallback: Optional[Callable[[str], bool]] = None
        self.processEvents: Optional[Callable[[], None]] = slicer.app.processEvents if slicer.app else None
        self.lastTiming: Dict[str, float] = {}
        self._busy = False
        self.markers = PromptMarkers(self.getParameterNode)
        self._io: Optional[segment_io.SegmentIO] = None
        self._segmentID = ""
        self._volumeFingerprint = None
        self._sessionHasTarget = False
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
            self._busy = False

    def _runOnWorker(self, fn, *args, **kwargs):
        return self.worker.run(fn, *args, process_events=self.processEvents, on_slow=self.slowCallback, **kwargs)

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
        key = self.backend.sessionKey(source, device)
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
        except Exception:
            self.worker.run(session.close)
            raise
        self.closeSession()
        self.session, self.modelKey, self._proposalClasses = session, key, classes
        self._status(_("Model {id} ready.").format(id=session.model_id) + (
            " " + _("It proposes {classes} without a click (Propose).").format(classes=", ".join(classes))
            if classes else ""))
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
        """On the worker: the local model, loaded once per (source, device) and kept (one at a time).

        The key holds the resolved device, so ``"auto"`` and ``"cpu"`` on a machine without CUDA share a model.
        """
        key = (str(source), local_session.resolveDevice(device))
        if self._keptModel is None or self._keptModel[0] != key:
            self._keptModel = None  # the previous model goes before the next one loads
            self._keptModel = (key, self.modelFactory(source, device, download, progress))
        return self._keptModel[1]

    def _sessionOnKeptModel(self, source: str, device: str, download: bool, progress) -> SegmentationSession:
        """On the worker: an interactive session on the kept local model (``segmentVolume`` shares it)."""
        return local_session.localSession(source, device, download, progress,
                                          model=self._localModel(source, device, download, progress))

    def setBackend(self, newBackend: backend.Backend) -> bool:
        """Use another backend from the next step on; returns True when a session was closed for it.

        Switching mid-segment is handled, not refused: the session closes now (a remote one ends on the server),
        the segment keeps its voxels and seeds the next backend's session (as editing an existing segment), and
        the prompt markers are removed because their undo history belonged to the closed session.
        """
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
        self._volumeFingerprint = None
        self._sessionHasTarget = False
        self._proposalClasses = ()

    def cleanup(self) -> None:
        """Release the session, the kept model and the worker thread (module cleanup)."""
        self.closeSession()
        self.worker.close()
        self._keptModel = None

    # ------------------------------------------------------------------ geometry (kept for the console)
    nodeToWorldMatrix = staticmethod(segment_io.nodeToWorldMatrix)
    volumeIjkToWorld = staticmethod(segment_io.volumeIjkToWorld)

    # ------------------------------------------------------------------ target
    def prepareVolume(self, volumeNode) -> None:
        """Start preprocessing a newly selected volume when a model is loaded, so the first click rarely waits."""
        if volumeNode is None or volumeNode.GetImageData() is None or self.session is None or self._busy:
            return
        with self._action():
            self._sendVolume(volumeNode)

    def _sendVolume(self, volumeNode) -> None:
        """Give the engine the volume again only when its content or world geometry changed."""
        ijkToWorld = segment_io.volumeIjkToWorld(volumeNode)
        fingerprint = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), ijkToWorld.round(6).tobytes())
        if fingerprint == self._volumeFingerprint:
            return
        # A copy: the engine keeps the array while Slicer may modify the volume's voxels in place.
        arrayKji = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
        self._runOnWorker(self.session.set_volume, arrayKji, ijkToWorld)
        self._volumeFingerprint = fingerprint
        self._sessionHasTarget = False

    def setTarget(self, volumeNode, segmentationNode, segmentID: str = "") -> str:
        """Select the volume and target segment (created when ``segmentID`` is empty); returns the segment ID.

        An existing segment is edited: its voxels seed the engine, so negative clicks can remove them.
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Select an input volume that has image data."))
        if segmentationNode is None:
            raise ValueError(_("Select or create a target segmentation."))
        if self.session is None:
            raise RuntimeError(_("Load a model first."))
        segmentation = segmentationNode.GetSegmentation()
        if not segmentID or segmentation.GetSegment(segmentID) is None:
            segmentID = segmentation.AddEmptySegment("")
        ioChanged = (self._io is None or self._io.volumeNode is not volumeNode
                     or self._io.segmentationNode is not segmentationNode)
        self._sendVolume(volumeNode)
        if ioChanged:
            self._io = segment_io.SegmentIO(volumeNode, segmentationNode)
        self._io.ensureReferenceGeometry()
        if ioChanged or segmentID != self._segmentID or not self._sessionHasTarget:
            self._segmentID = segmentID
            initial = self._io.segmentArray(segmentID)
            self._runOnWorker(self.session.set_initial_mask, initial if initial.any() else None)
            self._sessionHasTarget = True
        return segmentID

    def _ensureTargetFromParameterNode(self) -> None:
        """Model, volume and target from the parameter node; creates the segmentation/segment when empty."""
        pn = self.getParameterNode()
        self.loadModel()
        if pn.inputVolume is None:
            raise ValueError(_("Select an input volume first."))
        segmentationNode = pn.segmentationNode
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", _("SAMVolSegment"))
            pn.segmentationNode = segmentationNode
        segmentID = self.setTarget(pn.inputVolume, segmentationNode, pn.segmentID)
        if pn.segmentID != segmentID:
            pn.segmentID = segmentID

    def _policy(self):
        pn = self.getParameterNode()
        segmentEditorNode = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        return segment_io.editPolicyFromSegmentEditor(segmentEditorNode, pn.otherSegments, pn.useSegmentEditorMasking)

    def onTargetSelected(self) -> None:
        """The user picked another target: its prompts start fresh (the session re-seeds on the next step)."""
        self._sessionHasTarget = False
        self.markers.clear()

    def onNodeRemoved(self, node) -> None:
        """A node was deleted: forget a target that used it, so the next step starts on what is selected."""
        if self._io is not None and node in (self._io.volumeNode, self._io.segmentationNode):
            self._io = None
            self._segmentID = ""
            self._sessionHasTarget = False
            if self._volumeFingerprint is not None and node.GetID() == self._volumeFingerprint[0]:
                self._volumeFingerprint = None

    # ------------------------------------------------------------------ one user action each
    def addPointFromMarkup(self, markupsNode, index: int) -> Optional[MaskUpdate]:
        """A control point was placed by the user: lock it, run the step, write the segment.

        On failure the point is removed and the error raised: nothing changed. While another action runs the
        point is removed and None returned (the widget shows no dialog for that).
        """
        if self.markers.adding or index < 0 or index >= markupsNode.GetNumberOfControlPoints():
            return None
        controlPointID = markupsNode.GetNthControlPointID(index)
        markerID = f"{markupsNode.GetID()}:{controlPointID}"
        if self._busy:
            self.markers.remove(markerID)
            return None
        positive = markupsNode is not self.getParameterNode().negativePoints
        markupsNode.SetNthControlPointLocked(index, True)
        pointWorld = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index, pointWorld)
        try:
            with self._action():
                self._ensureTargetFromParameterNode()
                return self._pointStep(pointWorld, positive, markerID)
        except Exception:
            self.markers.remove(markerID)
            raise

    def setBoxFromROI(self, roiNode) -> Optional[MaskUpdate]:
        """The box ROI changed: send it once both corners are placed (every size component > 0)."""
        box = segment_io.boxFromROI(roiNode)
        if box is None or self._busy:
            return None
        with self._action():
            self._ensureTargetFromParameterNode()
            return self._boxStep(box[0], box[1], roiNode.GetID())

    def addPoint(self, pointWorld: Sequence[float], positive: bool = True, markerID: str = "") -> MaskUpdate:
        """A click at a world RAS position on the current target (console; call ``setTarget`` first)."""
        with self._action():
            self._requireTarget()
            return self._pointStep(pointWorld, positive, markerID)

    def setBox(self, minWorld: Sequence[float], maxWorld: Sequence[float], markerID: str = "") -> MaskUpdate:
        """A box prompt (axis-aligned world RAS corners) on the current target (console)."""
        with self._action():
            self._requireTarget()
            return self._boxStep(minWorld, maxWorld, markerID)

    def propose(self, className: str) -> MaskUpdate:
        """The model's prompt-free proposal for ``className`` in the target segment: one step, like a click.

        Model and target come from the parameter node, as for a click (the model is loaded and the target
        segmentation/segment created when missing). The engine (``SegmentationSession.propose``) replaces the
        target's mask with the proposal and places one positive click at its deepest point; the segment write
        follows the *Other segments* and masking settings, so other segments are never damaged under Protect.
        The step is one entry of the history: undo gives back the segment as it was before, redo the proposal,
        and further clicks refine it. Its click is shown as a locked positive point labelled with the class; the
        markers of the prompts it replaced are hidden until it is undone (``markers.py``).

        :raises SAMVolSegmentLib.errors.InvalidPromptError: the model does not know ``className`` (or proposes
            nothing at all), or found nothing of it in this volume. Nothing changes then: a segmentation or
            segment created for this call is removed again.
        """
        className = str(className)
        with self._action():
            self.loadModel()
            self._checkProposalClass(className)
            pn = self.getParameterNode()
            node = pn.segmentationNode
            hadSegment = bool(node and pn.segmentID and node.GetSegmentation().GetSegment(pn.segmentID))
            before = (node, pn.segmentID, hadSegment)
            engineStepped: List[bool] = []

            def call(session: SegmentationSession) -> MaskUpdate:
                update = session.propose(className)
                engineStepped.append(True)
                return update

            def prompt(session: SegmentationSession) -> Prompt:
                # The proposal's click is the first of the new state (the engine may add more when the mask
                # continues into a neighbouring region: session.py, _propose_step).
                clicks = session.clicks
                position = tuple(float(v) for v in clicks[0].point_ras) if clicks else ()
                return Prompt("proposal", True, position, "", label=className)

            try:
                self._ensureTargetFromParameterNode()
                return self._step(prompt, call)
            except Exception:
                if not engineStepped:
                    self._forgetCreatedTarget(*before)
                raise

    def _checkProposalClass(self, className: str) -> None:
        from SAMVolSegmentLib.errors import InvalidPromptError

        classes = self.proposalClasses()
        if className in classes:
            return
        modelID = self.session.model_id if self.session is not None else "?"
        if not classes:
            raise InvalidPromptError(_(
                "The model {model} cannot propose: it has no proposal head. Teach it a structure with "
                "'samvolseg teach' and choose the file that writes (structure.pt) under Model and settings > "
                "Model > From file...").format(model=modelID))
        raise InvalidPromptError(_("The model {model} cannot propose {name!r}; it proposes {classes}.").format(
            model=modelID, name=className, classes=", ".join(classes)))

    def _forgetCreatedTarget(self, segmentationNode, segmentID: str, hadSegment: bool) -> None:
        """Remove the segmentation or segment this action created for its target (a failed proposal changes
        nothing); the next step re-seeds the engine from what is selected then.

        Compared by existence, not by ID: the parameter node may still name a segment of another segmentation,
        and ``vtkSegmentation::GenerateUniqueSegmentID`` only keeps IDs unique within one segmentation
        (Libs/vtkSegmentationCore/vtkSegmentation.cxx), so the new segment may get that same ID.
        """
        pn = self.getParameterNode()
        current = pn.segmentationNode
        if current is None:
            return
        if current is not segmentationNode:
            pn.segmentationNode = segmentationNode
            if self._io is not None and self._io.segmentationNode is current:
                self._io = None
            slicer.mrmlScene.RemoveNode(current)
        elif not hadSegment and pn.segmentID and current.GetSegmentation().GetSegment(pn.segmentID) is not None:
            # vtkSegmentation::RemoveSegment(segmentId) (Libs/vtkSegmentationCore/vtkSegmentation.h)
            current.GetSegmentation().RemoveSegment(pn.segmentID)
        else:
            return
        pn.segmentID = segmentID
        self._segmentID = ""
        self._sessionHasTarget = False

    def _pointStep(self, pointWorld, positive: bool, markerID: str) -> MaskUpdate:
        pointIjk = coordinates.world_to_ijk(pointWorld, self._io.ijkToWorld)
        if not coordinates.is_inside_volume(pointIjk, self._io.shapeKji):
            raise ValueError(_("The point is outside the input volume; click inside it."))
        prompt = Prompt("point", bool(positive), tuple(float(v) for v in pointWorld), markerID)
        point = np.asarray(pointWorld, float)
        return self._step(prompt, lambda session: session.add_click(point, positive=bool(positive)))

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
        undo it; the engine is never asked to roll back.
        """
        policy = self._policy()
        self._io.checkWritable(self._segmentID, policy)
        start = time.perf_counter()
        session = self.session
        update = self._runOnWorker(call, session)
        if callable(prompt):
            prompt = prompt(session)
        writeStart = time.perf_counter()
        step = self._io.mergeUpdate(self._segmentID, update, prompt, policy)
        try:
            self._io.writeStep(step, after=True)
        except Exception as exc:
            session.annotate_last_step(EditStep(prompt))
            raise segment_io.SegmentWriteError(
                _("{error}\nThe segment is unchanged; undo (Ctrl+Z) removes the prompt.").format(error=exc)) from exc
        if prompt.kind == "proposal":  # the user placed no marker for it: show its click, hide what it replaced
            step.prompt = self.markers.restore(step.prompt)
        session.annotate_last_step(step)
        self.lastTiming = dict(session.last_timing or {})
        self.lastTiming["write_s"] = time.perf_counter() - writeStart
        self.lastTiming["total_s"] = time.perf_counter() - start
        return update

    def _requireTarget(self) -> None:
        if self.session is None:
            raise RuntimeError(_("Load a model first."))
        if self._io is None or not self._segmentID:
            raise RuntimeError(_("Select the input volume and the target segment first."))
        if self._io.segmentationNode.GetSegmentation().GetSegment(self._segmentID) is None:
            raise RuntimeError(_("The target segment was deleted; select another segment."))

    @property
    def canUndo(self) -> bool:
        """True when the last prompt can be undone."""
        return self.session is not None and self._sessionHasTarget and bool(self.session.can_undo)

    @property
    def canRedo(self) -> bool:
        """True when an undone prompt can be redone."""
        return self.session is not None and self._sessionHasTarget and bool(self.session.can_redo)

    def undo(self) -> Optional[Prompt]:
        """Undo the last prompt: engine state, every segment region it wrote, and its marker; returns it."""
        with self._action():
            if not self.canUndo:
                return None
            self._runOnWorker(self.session.undo)
            step = self.session.last_annotation
            if not isinstance(step, EditStep):
                return None
            self._io.writeStep(step, after=False)
            self.markers.withdraw(step.prompt)
            return step.prompt

    def redo(self) -> Optional[Prompt]:
        """Redo the last undone prompt; its point marker comes back (and the record learns the new ID); a redone
        proposal hides the markers of the prompts it replaces again."""
        with self._action():
            if not self.canRedo:
                return None
            self._runOnWorker(self.session.redo)
            step = self.session.last_annotation
            if not isinstance(step, EditStep):
                return None
            self._io.writeStep(step, after=True)
            step.prompt = self.markers.restore(step.prompt)
            return step.prompt

    def reset(self) -> List[Prompt]:
        """Undo every prompt of the current segment (its earlier voxels come back); redo can replay them."""
        with self._action():
            if not self.canUndo:
                return []
            session = self.session

            def undoAll():
                steps = []
                while session.can_undo:
                    session.undo()
                    steps.append(session.last_annotation)
                return steps

            steps = self._runOnWorker(undoAll)
            for step in steps:
                if isinstance(step, EditStep):
                    self._io.writeStep(step, after=False)
            self.markers.clear()
            return [step.prompt for step in steps if isinstance(step, EditStep)]

    def acceptSegment(self) -> str:
        """Mark the target Completed, start a new empty segment in the same segmentation; returns its ID."""
        with self._action():
            pn = self.getParameterNode()
            segmentationNode = pn.segmentationNode or (self._io.segmentationNode if self._io else None)
            self.markers.clear()
            self._sessionHasTarget = False
            if segmentationNode is None:
                return ""
            segment = segmentationNode.GetSegmentation().GetSegment(pn.segmentID or self._segmentID)
            if segment is not None:
                slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
                    segment, slicer.vtkSlicerSegmentationsModuleLogic.Completed)
            newID = segmentationNode.GetSegmentation().AddEmptySegment("")
            pn.segmentID = newID
            return newID

    def toggleSegmentVisibility(self) -> bool:
        """Show or hide the target segment (V); returns the new visibility."""
        pn = self.getParameterNode()
        segmentationNode, segmentID = pn.segmentationNode, pn.segmentID
        displayNode = segmentationNode.GetDisplayNode() if segmentationNode else None
        if displayNode is None or not segmentID:
            return False
        visible = not displayNode.GetSegmentVisibility(segmentID)
        displayNode.SetSegmentVisibility(segmentID, visible)
        return visible

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
                      otherSegments: OtherSegments = OtherSegments.OVERLAP) -> str:
        """Segment one structure from a whole prompt set without the GUI; returns the new segment's ID.

        The batch path: the volume's voxels (``slicer.util.arrayFromVolume``, copied) and its IJK -> world matrix
        (parent transforms included, as the interactive path; a non-linear transform is refused) go to
        ``SAMVolSegmentLib.batch.segment_volume`` on the Logic's worker thread, with the model the Logic keeps
        (loaded once, shared with the interactive sessions). So the mask is the one ``SAMVolSegmentLib.segment``
        or ``samvolseg batch`` gives for the same voxels, geometry and prompts. It is written into a NEW segment
        with ``segment_io.SegmentIO.writeNewSegment`` (the interactive steps' merge and write); other segments
        never change. The interactive session, its target and its undo history are not touched; the result
        has no undo (delete the segment instead).

        Remote backend (``setBackend`` with a server): the same prompt sequence
        (``SAMVolSegmentLib.batch.run_prompts``) runs in a fresh server session, closed afterwards; the server
        uses its own model, so ``model`` and ``device`` must be left unset.

        :param volumeNode: a scalar volume with image data.
        :param segmentationNode: where the new segment goes (its source representation must be a binary
            labelmap); it gets the volume's geometry if it has none.
        :param points_ras: (N, 3) world RAS points (mm), as ``slicer.util.arrayFromMarkupsControlPoints(node,
            world=True)`` gives them (Base/Python/slicer/util.py). N may be 0 with a box.
        :param labels: N values, 1 or True = positive, 0 or False = negative (anything else is refused).
        :param box: optional ``(min_ras, max_ras)`` world box (corners in any order).
        :param segmentName: name of the new segment (empty: Slicer names it, ``vtkSegmentation::AddEmptySegment``).
        :param model: registry name or checkpoint path; None: the module's model setting (``modelSource``).
        :param device: ``auto``/``cpu``/``cuda``/``mps``; None: the module's device setting.
        :param otherSegments: ``OtherSegments.OVERLAP`` / ``"overlap"`` (default: the new segment is exactly the
            model's mask) or ``OtherSegments.PROTECT`` / ``"protect"`` (it leaves out voxels other segments
            hold). ``OVERWRITE`` is refused: this call never changes other segments.
        :raises SAMVolSegmentLib.errors.InvalidPromptError: malformed prompts, labels that are not 0/1, a
            different number of points and labels, or no positive point and no box.
        :raises ValueError: no volume / segmentation, a non-linear transform, a model with a remote backend.
        :raises segment_io.SegmentWriteError: the segmentation is not a binary labelmap, or Slicer refused the
            write (the new segment is then removed).

        Whatever fails, the segmentation is left as it was. Example::

            logic = slicer.util.getModuleLogic("SAMVolSegment")
            segmentID = logic.segmentVolume(volume, segmentation, [[10.0, -20.0, 35.0]], [1])
        """
        with self._action():
            # Every check that can refuse runs before the model work and before the segmentation changes.
            if volumeNode is None or volumeNode.GetImageData() is None:
                raise ValueError(_("Give an input volume that has image data."))
            if segmentationNode is None:
                raise ValueError(_("Give a segmentation node to add the segment to."))
            points, signs, boxWorld = batch.check_prompt_arrays(points_ras, labels, box)
            policy = self._newSegmentPolicy(otherSegments)
            if self.backend.isRemote and (model is not None or device is not None):
                raise ValueError(_("The remote server segments with its own model: leave model and device unset, "
                                   "or switch to the local backend first (logic.setBackend(backend.Backend())))."))
            io = segment_io.SegmentIO(volumeNode, segmentationNode)  # raises for a non-linear parent transform
            io.checkLabelmapSource()
            # A copy: the worker reads it while Slicer may change the volume's voxels in place meanwhile.
            arrayKji = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
            start = time.perf_counter()
            timings: Dict[str, float] = {}
            onEvent = self._progressReporter(len(signs) + (boxWorld is not None))
            prompts = (arrayKji, io.ijkToWorld, points, signs, boxWorld, timings, onEvent)
            if self.backend.isRemote:
                self._status(_("Segmenting on {url}...").format(url=self.backend.url))
                maskKji = self._runOnWorker(self._segmentRemotely, self.backend, *prompts)
            else:
                source = self.modelSource if model is None else str(model)
                device = self.device if device is None else str(device)
                if self.modelFactory is local_session.localModel:
                    dependencies.check_dependencies()
                self._status(_("Segmenting {name}...").format(name=volumeNode.GetName()))
                maskKji = self._runModelWork(self._segmentLocally, source, device, False, *prompts)

            writeStart = time.perf_counter()
            io.ensureReferenceGeometry()
            segmentation = segmentationNode.GetSegmentation()
            # "" on failure (Libs/vtkSegmentationCore/vtkSegmentation.h). The new segment starts in the first shared
            # labelmap layer (vtkSegmentation.cxx, AddEmptySegment); writeRegion's SetBinaryLabelmapToSegment moves
            # it to a layer of its own when its voxels would cover another segment of that layer
            # (vtkSegmentationModifier.cxx, SeparateModifiedSegmentFromSharedLabelmap).
            segmentID = segmentation.AddEmptySegment("", segmentName)
            if not segmentID:
                raise segment_io.SegmentWriteError(_("Slicer could not add a segment to {name}.").format(
                    name=segmentationNode.GetName()))
            try:
                io.writeNewSegment(segmentID, maskKji, policy)
            except Exception:
                segmentation.RemoveSegment(segmentID)
                raise
            slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
                segmentation.GetSegment(segmentID), slicer.vtkSlicerSegmentationsModuleLogic.Completed)
            self.lastTiming = dict(timings)
            self.lastTiming["write_s"] = time.perf_counter() - writeStart
            self.lastTiming["total_s"] = time.perf_counter() - start
            voxels = int(np.count_nonzero(maskKji))
            if voxels:
                self._status(_("{name}: segment added ({voxels} voxels).").format(name=volumeNode.GetName(),
                                                                                 voxels=voxels))
            else:
                self._status(_("{name}: the model found nothing at these prompts; the new segment is empty.")
                             .format(name=volumeNode.GetName()))
            return segmentID

    @staticmethod
    def _newSegmentPolicy(otherSegments) -> EditPolicy:
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

    def _progressReporter(self, steps: int) -> Callable[[str, Dict[str, Any]], None]:
        """The batch path's ``on_event`` (called on the worker): fills the worker's progress cell, which the
        waiting main thread shows through ``slowCallback``. Texts are translated here, on the main thread."""
        readyText, stepText = _("Volume ready"), _("Prompt {n} of {total} done")
        done = [0]

        def onEvent(kind: str, info: Dict[str, Any]) -> None:
            done[0] += 1
            text = readyText if kind == "ready" else stepText.format(n=done[0] - 1, total=steps)
            self.worker.progress(done[0] / (steps + 1), text)

        return onEvent

    def _segmentLocally(self, source, device, download, arrayKji, ijkToWorld, points, signs, box, timings,
                        onEvent) -> np.ndarray:
        """On the worker: ``batch.segment_volume`` on the kept local model; the (k, j, i) mask."""
        model = self._localModel(source, device, download, self.worker.progress)
        return batch.segment_volume(model, arrayKji, points, signs, box, ijk_to_ras=ijkToWorld, timings=timings,
                                    on_event=onEvent)[0]

    def _segmentRemotely(self, choice: backend.Backend, arrayKji, ijkToWorld, points, signs, box, timings,
                         onEvent) -> np.ndarray:
        """On the worker: the same prompt sequence in a fresh server session (the interactive one is untouched)."""
        session = backend.remoteSession(choice, self.worker.progress)
        try:
            return batch.run_prompts(session, arrayKji, points, signs, box, ijk_to_ras=ijkToWorld, timings=timings,
                                     on_event=onEvent)
        finally:
            session.close()


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
        self._shortcuts: List = []
        self._observedMarkups: List = []
        self._syncingSelector = False
        self._shownProposalClasses: Tuple[str, ...] = ()

    def setup(self) -> None:
        """Called when the module is first opened."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMVolSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
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
        self.settingsPanel = SettingsPanel(self.ui, self.logic, self._run, self._updateGUI, self.progress.hide)

        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.otherSegmentsComboBox.connect("currentIndexChanged(int)", self.onOtherSegmentsChanged)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.positiveButton.connect("clicked(bool)", lambda: self.onAction("positive"))
        self.ui.negativeButton.connect("clicked(bool)", lambda: self.onAction("negative"))
        self.ui.boxButton.connect("clicked(bool)", lambda: self.onAction("box"))
        self.ui.undoButton.connect("clicked(bool)", lambda: self.onAction("undo"))
        self.ui.redoButton.connect("clicked(bool)", lambda: self.onAction("redo"))
        self.ui.acceptButton.connect("clicked(bool)", lambda: self.onAction("accept"))
        self.ui.resetButton.connect("clicked(bool)", lambda: self.onAction("reset"))
        self.ui.proposeButton.connect("clicked(bool)", self.onPropose)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        self.initializeParameterNode()
        self._updateGUI()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()
        self._removeShortcuts()
        if self.logic:
            self.logic.cleanup()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        self._removeShortcuts()
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
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node) -> None:
        """A deleted volume or segmentation ends the current edit; deleted prompt nodes are recreated."""
        if self.logic is None or node is None:
            return
        self.logic.onNodeRemoved(node)
        if node in self._observedMarkups and self._parameterNode is not None and not slicer.mrmlScene.IsClosing():
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
            self._syncSegmentSelector()
            self._observeMarkups()

    def _observeMarkups(self) -> None:
        pn = self._parameterNode
        for node in (pn.positivePoints, pn.negativePoints):
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined)
            self._observedMarkups.append(node)
        self.addObserver(pn.boxROI, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxDefined)
        self._observedMarkups.append(pn.boxROI)

    def _unobserveMarkups(self) -> None:
        for node in self._observedMarkups:
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined)
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxDefined)
        self._observedMarkups = []

    def _syncSegmentSelector(self) -> None:
        """Show the parameter node's target; the selector's own signals are ignored meanwhile, since
        ``setCurrentSegmentID`` emits ``currentSegmentChanged`` (qMRMLSegmentSelectorWidget.cxx)."""
        pn = self._parameterNode
        if pn is None:
            return
        self._syncingSelector = True
        try:
            if self.ui.segmentSelector.currentNode() is not pn.segmentationNode:
                self.ui.segmentSelector.setCurrentNode(pn.segmentationNode)
            if pn.segmentID and self.ui.segmentSelector.currentSegmentID() != pn.segmentID:
                self.ui.segmentSelector.setCurrentSegmentID(pn.segmentID)
        finally:
            self._syncingSelector = False

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
        except Exception as exc:
            logger.error("%s\n%s", failureMessage, traceback.format_exc())
            slicer.util.errorDisplay(f"{failureMessage}\n\n{exc}", detailedText=traceback.format_exc())
            return None
        finally:
            slicer.app.restoreOverrideCursor()
            self._setInputsEnabled(True)
            self.progress.hide()
            self._syncSegmentSelector()
            self._updateGUI()

    def _setInputsEnabled(self, enabled: bool) -> None:
        # While a step pumps events, a changed target or model would act on a half-done step.
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton):
            widget.enabled = enabled

    def onAction(self, action: str) -> None:
        """A button or shortcut; does nothing while a step runs."""
        if self.logic is None or self.logic.busy:
            return
        if action in ("positive", "negative", "box"):
            self._run(_("Could not start placing."), self.logic.startPlacing, action)
        elif action == "togglePolarity":
            self._run(_("Could not switch point polarity."), self.logic.togglePolarity)
        elif action == "toggleVisibility":
            self._run(_("Could not change the segment's visibility."), self.logic.toggleSegmentVisibility)
        elif action == "undo":
            self._run(_("Undo failed."), self.logic.undo)
        elif action == "redo":
            self._run(_("Redo failed."), self.logic.redo)
        elif action == "reset":
            self._run(_("Reset failed."), self.logic.reset)
        elif action == "accept":
            self._run(_("Could not start the next segment."), self.logic.acceptSegment)
        else:
            raise ValueError(f"Unknown action {action!r}")

    def onPropose(self) -> None:
        """Propose the chosen structure: one Logic step, like a click (undo, refine with clicks)."""
        if self.logic is None or self.logic.busy:
            return
        className = self.ui.proposeClassComboBox.currentData
        if not className:
            return
        if self._run(_("Proposal failed."), self.logic.propose, str(className)) is not None:
            self._showTiming()

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointDefined(self, caller, event, index) -> None:
        """A point was placed (the event carries its index, vtkMRMLMarkupsNode.cxx): one Logic step."""
        if index is None:  # deferred events carry no index (vtkMRMLNode::InvokeCustomModifiedEvent)
            return
        if self.logic.busy:  # placed while a step runs: the Logic removes it
            self.logic.addPointFromMarkup(caller, int(index))
            return
        if self._run(_("Segmentation failed."), self.logic.addPointFromMarkup, caller, int(index)) is not None:
            self._showTiming()

    def onBoxDefined(self, caller, event) -> None:
        """A box corner was placed; the Logic acts once both are (the ROI then has a size on every axis)."""
        if self._run(_("Box prompt failed."), self.logic.setBoxFromROI, caller) is not None:
            self._showTiming()

    def _showTiming(self) -> None:
        timing = self.logic.lastTiming
        total = 1000 * timing.get("total_s", 0.0)
        write = 1000 * timing.get("write_s", 0.0)
        self.ui.statusLabel.setText(_("Segment updated in {total:.0f} ms (model {model:.0f} ms, write {write:.0f} ms). "
                                      "{placing}").format(total=total, model=total - write, write=write,
                                                          placing=self._placingText()))

    def _placingText(self) -> str:
        kind = self.logic.markers.placingKind() if self.logic else ""
        return {"positive": _("Placing positive points (T: negative)."),
                "negative": _("Placing negative points (T: positive)."),
                "box": _("Placing a box.")}.get(kind, "")

    # ------------------------------------------------------------------ shortcuts
    def _installShortcuts(self) -> None:
        self._removeShortcuts()
        for keys, action in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda action=action: self.onAction(action))
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

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
        """Preprocessing starts as soon as a volume is picked and a model is loaded.

        Uses ``node``: the parameter node is updated by a handler connected later (``connectGui`` runs after
        ``setup`` connects this one, and Qt calls slots in connection order), so it still holds the old volume.
        """
        if self._parameterNode is not None and node is not None:
            self._parameterNode.inputVolume = node
        self._run(_("Failed to prepare the volume."), self.logic.prepareVolume, node)

    def onSegmentationChanged(self, node) -> None:
        """Store the chosen segmentation in the scene."""
        if self._syncingSelector or self._parameterNode is None or node is self._parameterNode.segmentationNode:
            return
        self._parameterNode.segmentationNode = node

    def onSegmentChanged(self, segmentID: str) -> None:
        """The user picked another target segment: its prompts start fresh (an existing one is edited)."""
        pn = self._parameterNode
        if self._syncingSelector or pn is None or (segmentID or "") == pn.segmentID:
            return
        if self.logic.busy:  # the selector is disabled then; a late signal is put back after the step
            return
        pn.segmentID = segmentID or ""
        self.logic.onTargetSelected()
        self._updateGUI()

    def _updateGUI(self) -> None:
        self.ui.undoButton.enabled = bool(self.logic and self.logic.canUndo)
        self.ui.redoButton.enabled = bool(self.logic and self.logic.canRedo)
        missing = dependencies.missing_requirements()
        # A remote server needs no torch here.
        self.ui.installButton.setVisible(bool(missing) and not (self.logic and self.logic.backend.isRemote))
        self._updateProposeControls()

    def _updateProposeControls(self) -> None:
        """List what the loaded model proposes; it changes with the model or backend (a new session)."""
        combo = self.ui.proposeClassComboBox
        classes = self.logic.proposalClasses() if self.logic else ()
        if classes != self._shownProposalClasses:
            previous = combo.currentData
            combo.clear()
            for name in classes:
                combo.addItem(name, name)
            if previous in classes:
                combo.setCurrentIndex(combo.findData(previous))
            self._shownProposalClasses = classes
        combo.enabled = bool(classes)
        self.ui.proposeButton.enabled = bool(classes)
        if classes:
            tip = _("A first mask of the chosen structure without a click (one undoable step); correct it with "
                    "clicks.")
        elif self.logic is None or self.logic.session is None:
            tip = _("Load the model (Model and settings > Load model) to list the structures it proposes without a "
                    "click. Only a model taught with 'samvolseg teach' proposes.")
        else:
            tip = _("The loaded model has no proposal head. Teach it a structure with 'samvolseg teach' and choose "
                    "the file that writes (structure.pt) under Model and settings > Model > From file...")
        # Disabled with a tooltip that says why, as Slicer's scripted-module template does for its Apply button
        # (Utilities/Templates/Modules/Scripted/TemplateKey.py).
        combo.toolTip = tip
        self.ui.proposeButton.toolTip = tip


#
# Test
#


class SAMVolSegmentTest(ScriptedLoadableModuleTest):
    """Runs the in-Slicer self-test, ``Testing/Python/SAMVolSegmentSelfTest.py`` (Reload and Test)."""

    def runTest(self) -> None:
        """Run the self-test suite; it skips itself where torch is missing."""
        import importlib.util
        import unittest

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Testing", "Python",
                            "SAMVolSegmentSelfTest.py")
        if not os.path.isfile(path):
            self.delayDisplay(_("The self-test ships with the source tree only ({path}).").format(path=path))
            return
        spec = importlib.util.spec_from_file_location("SAMVolSegmentSelfTest", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = unittest.TextTestRunner(verbosity=2).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(module.SAMVolSegmentSelfTest))
        if not result.wasSuccessful():
            raise AssertionError(_("SAMVolSegment self-test failed; see the Python console."))


# Names used only by annotations or tests must stay importable for ruff's unused-import check.
__all__ = ["SAMVolSegment", "SAMVolSegmentLogic", "SAMVolSegmentParameterNode", "SAMVolSegmentTest",
           "SAMVolSegmentWidget", "BusyError", "InstallError"]
