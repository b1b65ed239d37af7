"""SAMVolSegment: click-based 3D segmentation in 3D Slicer with SAM-Med3D-compatible models.

Layers: the widget (``.ui`` + shortcuts) calls the logic; the logic calls one engine session
(``SAMVolSegmentLib.InteractiveSession``) on one persistent worker thread and writes results into the
segmentation. Everything that is not MRML/Qt glue lives in ``SAMVolSegmentSlicerLib`` and is tested with
pytest outside Slicer.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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

from SAMVolSegmentSlicerLib import coordinates, vtk_numpy  # noqa: E402
from SAMVolSegmentSlicerLib.segment_merge import (  # noqa: E402
    EditPolicy,
    MaskMode,
    OtherSegment,
    OtherSegments,
    OverwriteMode,
    merge_region,
)
from SAMVolSegmentSlicerLib.undo_stack import EditHistory, EditStep, Prompt, RegionEdit  # noqa: E402
from SAMVolSegmentSlicerLib.worker import EngineWorker  # noqa: E402

from SAMVolSegmentLib.mask_update import BBoxKJI, MaskUpdate, union_bbox  # noqa: E402

logger = logging.getLogger(__name__)

#: QSettings keys and defaults (user preferences; scene state lives in the parameter node).
SETTINGS_PREFIX = "SAMVolSegment/"
SETTING_DEFAULTS = {"model": "default", "modelPath": "", "device": "auto"}
#: Registry names of SAMVolSegmentLib.weights, in combo-box order; the last entry is "a file".
MODEL_CHOICES = (("default", "Bundled default (offline)"), ("sam-med3d-turbo", "SAM-Med3D-turbo (download, 402 MB)"),
                 ("file", "From file..."))
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Shortcuts, active only while the module is shown. Single letters avoid the slice views' own keys
#: (b/f step slices, r resets the view, v/t toggle layers) and match no Segment Editor effect key.
SHORTCUTS = (
    ("A", "positive"),
    ("S", "negative"),
    ("X", "box"),
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
            "points or a box (X); undo Ctrl+Z, redo Ctrl+Y, accept and start the next segment N, reset Shift+R."
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


class InstallError(RuntimeError):
    """A dependency is missing; ``restartRequired`` says whether Slicer must restart after the fix."""

    def __init__(self, message: str, restartRequired: bool = False) -> None:
        super().__init__(message)
        self.restartRequired = restartRequired


#
# Logic
#


class SAMVolSegmentLogic(ScriptedLoadableModuleLogic):
    """Interactive segmentation of one target segment, usable without the widget.

    Holds no Qt objects. Progress reaches the caller through ``statusCallback(text)`` and
    ``slowCallback(elapsedSeconds, fraction, message)``; ``processEvents`` is pumped while the engine works.
    Every engine call runs on :class:`EngineWorker`; only the session interface is used (``set_volume``,
    ``add_click``, ``set_box``, ``undo``, ``redo``, ``reset``), so a remote session can replace the local one.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = EngineWorker()
        self.session = None
        self.modelKey: Optional[Tuple[str, str]] = None
        self.history = EditHistory()
        self.statusCallback: Optional[Callable[[str], None]] = None
        self.slowCallback: Optional[Callable[[float, Optional[float], str], None]] = None
        self.processEvents: Optional[Callable[[], None]] = slicer.app.processEvents if slicer.app else None
        self.editPolicy = EditPolicy()
        self.lastTiming: Dict[str, float] = {}
        self._volumeNode: Optional[vtkMRMLScalarVolumeNode] = None
        self._segmentationNode: Optional[vtkMRMLSegmentationNode] = None
        self._segmentID = ""
        self._volumeFingerprint = None
        self._ijkToWorld = np.eye(4)
        self._shapeKji: Tuple[int, int, int] = (0, 0, 0)
        self._base: Optional[MaskUpdate] = None

    def getParameterNode(self) -> SAMVolSegmentParameterNode:
        """The module's parameter node (created on first use)."""
        return SAMVolSegmentParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ engine
    def _runOnWorker(self, fn, *args, **kwargs):
        return self.worker.run(fn, *args, process_events=self.processEvents, on_slow=self.slowCallback, **kwargs)

    def _status(self, text: str) -> None:
        logger.info(text)
        if self.statusCallback:
            self.statusCallback(text)

    @staticmethod
    def checkDependencies() -> None:
        """Raise :class:`InstallError` naming the fix when an engine requirement is missing."""
        missing = dependencies.missing_requirements()
        if not missing:
            return
        names = ", ".join(req.import_name for req in missing)
        if any(req.provider == "pytorch" for req in missing):
            raise InstallError(
                _("PyTorch is not installed ({names}). Click 'Install dependencies', or install the PyTorch extension "
                  "from the Extensions Manager and use its module to install torch.").format(names=names))
        raise InstallError(_("Missing Python packages: {names}. Click 'Install dependencies'.").format(names=names))

    @staticmethod
    def installDependencies(askConfirmation: bool = True) -> None:
        """Install what is missing: torch through PyTorchUtils, anything else with pip (main thread only)."""
        missing = dependencies.missing_requirements()
        if any(req.provider == "pytorch" for req in missing):
            try:
                import PyTorchUtils
            except ModuleNotFoundError as exc:
                raise InstallError(
                    _("The PyTorch extension is required: install 'PyTorch' from the Extensions Manager, restart "
                      "Slicer, then click 'Install dependencies' again."), restartRequired=True) from exc
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                                torchVersionRequirement=dependencies.TORCH_REQUIREMENT)
                if torch is None:
                    raise InstallError(_("PyTorch installation was cancelled or failed; see the Python console."))
        plan = dependencies.pip_plan(missing)
        if plan.specs:
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.write("\n".join(plan.constraints))
            try:
                slicer.util.pip_install(plan.arguments(f.name))
            finally:
                os.remove(f.name)

    def loadModel(self, source: str = "default", device: str = "auto", download: bool = False) -> str:
        """Load a model (registry name or file path) on the worker and start a new session; returns its id.

        With ``download=True`` a registered model that is not on disk is downloaded first (with progress).
        """
        self.checkDependencies()
        key = (str(source), str(device))
        if self.session is not None and key == self.modelKey:
            return self.session.predictor.model_id

        def load():
            import torch

            from SAMVolSegmentLib import InteractiveSession, load_model, weights

            resolved = device
            if device == "auto":
                resolved = "cuda" if torch.cuda.is_available() else "cpu"
            if download and str(source) in weights.REGISTRY and not weights.REGISTRY[str(source)].bundled:
                weights.download_model(str(source), progress=self.worker.progress)
            model = load_model(source, device=resolved)
            return InteractiveSession(model, progress=self.worker.progress)

        self._status(_("Loading model {source}...").format(source=source))
        session = self._runOnWorker(load)
        self.closeSession()
        self.session, self.modelKey = session, key
        self._volumeFingerprint = None
        modelId = session.predictor.model_id
        self._status(_("Model {id} ready.").format(id=modelId))
        return modelId

    def closeSession(self) -> None:
        """Stop the current session's background work (the worker thread stays)."""
        if self.session is not None:
            session, self.session = self.session, None
            self.worker.run(session.close)
        self.history.clear()

    def cleanup(self) -> None:
        """Release the session and the worker thread (module cleanup)."""
        self.closeSession()
        self.worker.close()

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def nodeToWorldMatrix(node) -> np.ndarray:
        """4×4 parent transform of a transformable node to world; raises if it is not linear."""
        transformNode = node.GetParentTransformNode() if node else None
        if transformNode is None:
            return np.eye(4)
        if not transformNode.IsTransformToWorldLinear():
            raise ValueError(_("'{name}' is under a non-linear transform: harden the transform first "
                               "(Data module, right-click the node, 'Harden transform').").format(name=node.GetName()))
        matrix = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    @staticmethod
    def volumeIjkToWorld(volumeNode) -> np.ndarray:
        """Voxel (i, j, k) → world RAS of a volume, parent transforms and oblique directions included."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return coordinates.ijk_to_world(slicer.util.arrayFromVTKMatrix(ijkToRas),
                                        SAMVolSegmentLogic.nodeToWorldMatrix(volumeNode))

    def _ijkToSegmentationMatrix(self) -> vtk.vtkMatrix4x4:
        """Volume IJK → the segmentation's local frame, as the ImageToWorld matrix of the labelmaps we write."""
        local = np.linalg.inv(self.nodeToWorldMatrix(self._segmentationNode)) @ self._ijkToWorld
        return slicer.util.vtkMatrixFromArray(local)

    # ------------------------------------------------------------------ target
    def setTarget(self, volumeNode, segmentationNode, segmentID: str = "") -> str:
        """Select the volume and target segment (created when ``segmentID`` is empty); returns the segment ID.

        The volume goes to the engine once per fingerprint (node ID, image MTime, world geometry); preprocessing
        then runs in the background. The segmentation's reference geometry is set to the volume when it has none,
        the usual Segment Editor practice, so new segments share the volume's grid.
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Select an input volume that has image data."))
        if segmentationNode is None:
            raise ValueError(_("Select or create a target segmentation."))
        if self.session is None:
            raise RuntimeError(_("Load a model first."))
        targetChanged = (volumeNode, segmentationNode, segmentID) != (self._volumeNode, self._segmentationNode,
                                                                       self._segmentID)
        self._volumeNode, self._segmentationNode = volumeNode, segmentationNode
        self._ensureVolume()
        if not segmentationNode.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()):
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        segmentation = segmentationNode.GetSegmentation()
        if not segmentID or segmentation.GetSegment(segmentID) is None:
            segmentID = segmentation.AddEmptySegment("")
        if targetChanged or segmentID != self._segmentID:
            self._segmentID = segmentID
            self._startSegment()
        return segmentID

    def _ensureVolume(self) -> None:
        """Give the engine the volume again only when its content or world geometry changed."""
        volumeNode = self._volumeNode
        ijkToWorld = self.volumeIjkToWorld(volumeNode)
        fingerprint = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), ijkToWorld.round(6).tobytes())
        if fingerprint == self._volumeFingerprint:
            return
        # A copy: the engine keeps the array while Slicer may modify the volume's voxels in place.
        arrayKji = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
        self._runOnWorker(self.session.set_volume, arrayKji, ijkToWorld)
        self._volumeFingerprint, self._ijkToWorld, self._shapeKji = fingerprint, ijkToWorld, arrayKji.shape
        self.history.clear()
        self._startSegment()

    def _startSegment(self) -> None:
        """Fresh prompts for the current target; remember what the segment held before (it is kept)."""
        if self.session is not None and (self.session.clicks or self.history.can_undo):
            self._runOnWorker(self.session.reset)
        self.history.clear()
        self._base = None
        if self._segmentationNode is not None and self._segmentID:
            stored = self._storedBbox(self._segmentID)
            region = self._readSegmentRegion(self._segmentID, stored)
            box = vtk_numpy.nonzero_bbox(region)
            if not vtk_numpy.bbox_is_empty(box):
                inner = tuple(slice(lo - s[0], hi - s[0]) for (lo, hi), s in zip(box, stored))
                box = tuple((lo + s[0], hi + s[0]) for (lo, hi), s in zip(box, stored))
                self._base = MaskUpdate(box, region[inner].astype(np.uint8))

    def _storedBbox(self, segmentID: str) -> BBoxKJI:
        """Box of the volume grid that holds all of a segment's voxels (its stored extent, or the volume)."""
        full: BBoxKJI = tuple((0, n) for n in self._shapeKji)  # type: ignore[assignment]
        labelmap = self._segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        if labelmap is None:
            return ((0, 0), (0, 0), (0, 0))
        if self._labelmapMatchesGrid(labelmap):
            return vtk_numpy.bbox_intersection(vtk_numpy.bbox_from_extent(labelmap.GetExtent()), full)
        return full

    # ------------------------------------------------------------------ prompts
    def addPoint(self, pointWorld: Sequence[float], positive: bool = True, markerID: str = "") -> MaskUpdate:
        """A click at a world RAS position; updates the target segment and returns the engine's update."""
        self._requireTarget()
        self._ensureVolume()
        pointIjk = coordinates.world_to_ijk(pointWorld, self._ijkToWorld)
        if not coordinates.is_inside_volume(pointIjk, self._shapeKji):
            raise ValueError(_("The point is outside the input volume; click inside it."))
        prompt = Prompt("point", bool(positive), tuple(float(v) for v in pointWorld), markerID)
        return self._step(prompt, self.session.add_click, np.asarray(pointWorld, float), positive=bool(positive))

    def setBox(self, minWorld: Sequence[float], maxWorld: Sequence[float], markerID: str = "") -> MaskUpdate:
        """A box prompt (axis-aligned world RAS corners)."""
        self._requireTarget()
        self._ensureVolume()
        prompt = Prompt("box", True, tuple(float(v) for v in (*minWorld, *maxWorld)), markerID)
        return self._step(prompt, self.session.set_box, np.asarray(minWorld, float), np.asarray(maxWorld, float))

    def boxFromROI(self, roiNode) -> Tuple[np.ndarray, np.ndarray]:
        """World-RAS axis-aligned box around a (possibly rotated, transformed) markups ROI."""
        center = [0.0, 0.0, 0.0]
        roiNode.GetCenter(center)
        return coordinates.roi_box_world(center, roiNode.GetSize(),
                                         slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix()),
                                         self.nodeToWorldMatrix(roiNode))

    def _step(self, prompt: Prompt, fn, *args, **kwargs) -> MaskUpdate:
        start = time.perf_counter()
        update = self._runOnWorker(fn, *args, **kwargs)
        writeStart = time.perf_counter()
        try:
            step = self._applyUpdate(update, prompt)
        except Exception:
            # Keep the engine's history in step with ours: the segment did not change.
            self._runOnWorker(self.session.undo)
            raise
        dropped = self.history.push(step)
        if dropped:
            logger.debug("Undo history full: dropped %d oldest step(s)", dropped)
        self.lastTiming = dict(getattr(self.session, "last_timing", {}) or {})
        self.lastTiming["write_s"] = time.perf_counter() - writeStart
        self.lastTiming["total_s"] = time.perf_counter() - start
        return update

    def _requireTarget(self) -> None:
        if self.session is None:
            raise RuntimeError(_("Load a model first."))
        if self._volumeNode is None or self._segmentationNode is None or not self._segmentID:
            raise RuntimeError(_("Select the input volume and the target segment first."))
        if self._segmentationNode.GetSegmentation().GetSegment(self._segmentID) is None:
            raise RuntimeError(_("The target segment was deleted; select another segment."))

    @property
    def canUndo(self) -> bool:
        """True when the last prompt can be undone."""
        return self.history.can_undo and self.session is not None and self.session.can_undo

    @property
    def canRedo(self) -> bool:
        """True when an undone prompt can be redone."""
        return self.history.can_redo and self.session is not None and self.session.can_redo

    def undo(self) -> Optional[Prompt]:
        """Undo the last prompt in the engine and restore every segment region it changed; returns the prompt."""
        if not self.canUndo:
            return None
        self._runOnWorker(self.session.undo)
        step = self.history.undo()
        self._writeEdits(step, after=False)
        return step.prompt

    def redo(self) -> Optional[Prompt]:
        """Redo the last undone prompt; returns it."""
        if not self.canRedo:
            return None
        self._runOnWorker(self.session.redo)
        step = self.history.redo()
        self._writeEdits(step, after=True)
        return step.prompt

    def reset(self) -> List[Prompt]:
        """Undo every prompt of the current segment (its pre-session voxels come back); returns the prompts."""
        steps = self.history.undo_all()
        for step in steps:
            self._writeEdits(step, after=False)
        if self.session is not None and self.session.clicks:
            self._runOnWorker(self.session.reset)
        return [step.prompt for step in steps]

    def acceptSegment(self) -> None:
        """Keep the current result as final and forget its prompts (the next prompts start a new result)."""
        self._startSegment()

    # ------------------------------------------------------------------ writing
    def _applyUpdate(self, update: MaskUpdate, prompt: Prompt) -> EditStep:
        """Merge the engine's box into the target under the edit policy; returns what changed."""
        if update.is_empty_box:
            return EditStep(prompt)
        bbox = update.bbox_kji
        segmentation = self._segmentationNode.GetSegmentation()
        displayNode = self._segmentationNode.GetDisplayNode()
        current = self._readSegmentRegion(self._segmentID, bbox)
        others = []
        for segmentID in segmentation.GetSegmentIDs():
            if segmentID != self._segmentID:
                visible = bool(displayNode.GetSegmentVisibility(segmentID)) if displayNode else True
                others.append(OtherSegment(segmentID, self._readSegmentRegion(segmentID, bbox), visible))
        intensity = None
        if self.editPolicy.intensity_range is not None:
            intensity = slicer.util.arrayFromVolume(self._volumeNode)[update.slices]
        base = self._baseRegion(bbox)
        result = merge_region(current, update.mask, others, self.editPolicy, intensity, base)
        edits = [RegionEdit(self._segmentID, bbox, current, result.target)]
        before = {o.segment_id: o.region for o in others}
        edits += [RegionEdit(sid, bbox, before[sid], new) for sid, new in result.others.items()]
        edits = [e for e in edits if not np.array_equal(e.before, e.after)]
        step = EditStep(prompt, tuple(edits))
        self._writeEdits(step, after=True)
        return step

    def _baseRegion(self, bbox: BBoxKJI) -> Optional[np.ndarray]:
        if self._base is None:
            return None
        shape = tuple(hi - lo for lo, hi in bbox)
        out = np.zeros(shape, bool)
        overlap = vtk_numpy.bbox_intersection(self._base.bbox_kji, bbox)
        if not vtk_numpy.bbox_is_empty(overlap):
            src = tuple(slice(lo - b[0], hi - b[0]) for (lo, hi), b in zip(overlap, self._base.bbox_kji))
            dst = tuple(slice(lo - b[0], hi - b[0]) for (lo, hi), b in zip(overlap, bbox))
            out[dst] = self._base.mask[src] != 0
        return out

    def _writeEdits(self, step: EditStep, after: bool) -> None:
        if not step.edits:
            return
        with slicer.util.RenderBlocker():
            for edit in step.edits:
                self._writeSegmentRegion(edit.segment_id, edit.bbox_kji, edit.after if after else edit.before)

    def _labelmapMatchesGrid(self, labelmap) -> bool:
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        return coordinates.same_grid(slicer.util.arrayFromVTKMatrix(matrix),
                                     slicer.util.arrayFromVTKMatrix(self._ijkToSegmentationMatrix()))

    def _readSegmentRegion(self, segmentID: str, bbox: BBoxKJI) -> np.ndarray:
        """A segment's voxels in a box of the volume's grid (bool), resampled if stored on another grid."""
        segmentationNode = self._segmentationNode
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        shape = tuple(hi - lo for lo, hi in bbox)
        if labelmap is None or vtk_numpy.bbox_is_empty(vtk_numpy.bbox_from_extent(labelmap.GetExtent())):
            return np.zeros(shape, bool)
        labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
        if self._labelmapMatchesGrid(labelmap):
            return vtk_numpy.read_region(labelmap, bbox, labelValue)
        reference = slicer.vtkOrientedImageData()
        reference.SetExtent(*vtk_numpy.extent_from_bbox(bbox))
        reference.SetImageToWorldMatrix(self._ijkToSegmentationMatrix())
        binary = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(segmentID, binary)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            binary, reference, resampled, False, True)
        return vtk_numpy.read_region(resampled, bbox) != 0

    def _writeSegmentRegion(self, segmentID: str, bbox: BBoxKJI, region: np.ndarray) -> None:
        """Set a segment's voxels in a box of the volume's grid; keeps its voxels elsewhere.

        The segment is handed to ``SetBinaryLabelmapToSegment`` as one binary image covering its own extent plus
        the box: that call separates it from a shared layer if needed, re-converts its closed surface (the 3D
        view stays), and fires the events views need. Cost scales with the segment's extent, not the volume.
        """
        segmentationNode = self._segmentationNode
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
        existing: BBoxKJI = ((0, 0), (0, 0), (0, 0))
        if labelmap is not None:
            existing = vtk_numpy.bbox_from_extent(labelmap.GetExtent())
        if not vtk_numpy.bbox_is_empty(existing) and self._labelmapMatchesGrid(labelmap):
            cover = union_bbox(existing, bbox)
            binary = vtk_numpy.read_region(labelmap, cover, labelValue)
        elif vtk_numpy.bbox_is_empty(existing):
            cover, binary = bbox, np.zeros(tuple(hi - lo for lo, hi in bbox), bool)
        else:  # stored on another grid: bring the whole segment onto the volume's grid once
            cover = tuple((0, n) for n in self._shapeKji)
            binary = self._readSegmentRegion(segmentID, cover)
        inner = tuple(slice(lo - c[0], hi - c[0]) for (lo, hi), c in zip(bbox, cover))
        binary[inner] = region
        image = vtk_numpy.image_from_array(binary.astype(np.uint8), tuple(lo for lo, _hi in cover),
                                           slicer.vtkOrientedImageData())
        image.SetImageToWorldMatrix(self._ijkToSegmentationMatrix())
        hadSurface = segmentationNode.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentationNode, segmentID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        if hadSurface:
            segmentationNode.CreateClosedSurfaceRepresentation()
        segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
        slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
            segment, slicer.vtkSlicerSegmentationsModuleLogic.InProgress)

    # ------------------------------------------------------------------ policy
    @staticmethod
    def editPolicyFromSegmentEditor(segmentEditorNode, otherSegments: OtherSegments = OtherSegments.PROTECT,
                                    useMasking: bool = True) -> EditPolicy:
        """The :class:`EditPolicy` of the Segment Editor's current masking/overwrite settings."""
        if segmentEditorNode is None or not useMasking:
            return EditPolicy(other_segments=otherSegments)
        maskMode = next((m for m in MaskMode if getattr(slicer.vtkMRMLSegmentationNode, "EditAllowed" + m.value)
                         == segmentEditorNode.GetMaskMode()), MaskMode.Everywhere)
        overwrite = next((o for o in OverwriteMode if getattr(slicer.vtkMRMLSegmentEditorNode, "Overwrite" + o.value)
                          == segmentEditorNode.GetOverwriteMode()), OverwriteMode.AllSegments)
        intensityRange = None
        if segmentEditorNode.GetSourceVolumeIntensityMask():
            intensityRange = tuple(segmentEditorNode.GetSourceVolumeIntensityMaskRange())
        return EditPolicy(mask_mode=maskMode, mask_segment_id=segmentEditorNode.GetMaskSegmentID() or None,
                          intensity_range=intensityRange, other_segments=otherSegments, overwrite_mode=overwrite)

    # ------------------------------------------------------------------ console
    def segmentVolume(self, volumeNode, segmentationNode, points_ras, labels, box=None,
                      segmentName: str = "", model: str = "default", device: str = "auto") -> str:
        """Segment one structure from prompts without the GUI; returns the new segment's ID.

        :param points_ras: (N, 3) world RAS points (mm), as ``arrayFromMarkupsControlPoints(node, world=True)``.
        :param labels: N values, 1 (or True) = positive, 0 = negative.
        :param box: optional ``(min_ras, max_ras)`` world box.
        Example::

            logic = slicer.util.getModuleLogic("SAMVolSegment")
            segmentID = logic.segmentVolume(volume, segmentation, [[10.0, -20.0, 35.0]], [1])
        """
        points = np.asarray(points_ras, dtype=float).reshape(-1, 3)
        signs = np.asarray(labels).reshape(-1)
        if len(points) != len(signs):
            raise ValueError(_("Give one label per point ({n} points, {m} labels).").format(n=len(points), m=len(signs)))
        if len(points) == 0 and box is None:
            raise ValueError(_("Give at least one positive point or a box."))
        self.loadModel(model, device)
        segmentID = self.setTarget(volumeNode, segmentationNode, "")
        if segmentName:
            segmentationNode.GetSegmentation().GetSegment(segmentID).SetName(segmentName)
        if box is not None:
            self.setBox(box[0], box[1])
        for point, label in zip(points, signs):
            self.addPoint(point, positive=bool(label))
        self.acceptSegment()
        return segmentID


#
# Widget
#


class SAMVolSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: node selection, place modes, shortcuts; every action is one logic call."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SAMVolSegmentLogic] = None
        self._parameterNode: Optional[SAMVolSegmentParameterNode] = None
        self._parameterNodeGuiTag = None
        self._shortcuts: List[qt.QShortcut] = []
        self._observedMarkups: List = []
        self._ignorePointEvents = False

    def setup(self) -> None:
        """Called when the module is first opened."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMVolSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SAMVolSegmentLogic()
        self.logic.statusCallback = self.ui.statusLabel.setText
        self.logic.slowCallback = self._onSlow

        for name, label in MODEL_CHOICES:
            self.ui.modelComboBox.addItem(_(label), name)
        for device in DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(device, device)
        for choice, label in ((OtherSegments.PROTECT, "Protect (never change them)"),
                              (OtherSegments.OVERLAP, "Allow overlap"),
                              (OtherSegments.OVERWRITE, "Overwrite (Segment Editor setting)")):
            self.ui.otherSegmentsComboBox.addItem(_(label), choice.value)
        settings = qt.QSettings()
        self.ui.modelComboBox.setCurrentIndex(max(0, self.ui.modelComboBox.findData(
            settings.value(SETTINGS_PREFIX + "model", SETTING_DEFAULTS["model"]))))
        self.ui.modelPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "modelPath", "")
        self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findData(
            settings.value(SETTINGS_PREFIX + "device", SETTING_DEFAULTS["device"]))))
        self.ui.progressBar.hide()
        self._updateModelPathVisibility()

        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelSettingsChanged)
        self.ui.otherSegmentsComboBox.connect("currentIndexChanged(int)", self.onOtherSegmentsChanged)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.installButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.positiveButton.connect("clicked(bool)", lambda: self.startPlacing(positive=True))
        self.ui.negativeButton.connect("clicked(bool)", lambda: self.startPlacing(positive=False))
        self.ui.boxButton.connect("clicked(bool)", self.startPlacingBox)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.redoButton.connect("clicked(bool)", self.onRedo)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self._updateButtons()

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
        if self.logic:
            self.logic.closeSession()

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists, with point lists and a default volume."""
        self.setParameterNode(self.logic.getParameterNode())
        pn = self._parameterNode
        if not pn.inputVolume:
            pn.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not pn.positivePoints:
            pn.positivePoints = self._newPointList(_("SAMVolSegment positive"), (0.2, 0.9, 0.2))
        if not pn.negativePoints:
            pn.negativePoints = self._newPointList(_("SAMVolSegment negative"), (0.95, 0.25, 0.2))

    @staticmethod
    def _newPointList(name: str, color) -> vtkMRMLMarkupsFiducialNode:
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(color)
        node.GetDisplayNode().SetPointLabelsVisibility(False)
        return node

    def setParameterNode(self, parameterNode: Optional[SAMVolSegmentParameterNode]) -> None:
        """Bind the GUI to a parameter node and observe its prompt nodes."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._unobserveMarkups()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.segmentSelector.setCurrentNode(self._parameterNode.segmentationNode)
            if self._parameterNode.segmentID:
                self.ui.segmentSelector.setCurrentSegmentID(self._parameterNode.segmentID)
            self.ui.otherSegmentsComboBox.setCurrentIndex(
                self.ui.otherSegmentsComboBox.findData(self._parameterNode.otherSegments.value))
            self._observeMarkups()

    def _observeMarkups(self) -> None:
        pn = self._parameterNode
        for node in (pn.positivePoints, pn.negativePoints):
            if node is not None:
                self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined)
                self._observedMarkups.append(node)
        if pn.boxROI is not None:
            self.addObserver(pn.boxROI, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxDefined)
            self._observedMarkups.append(pn.boxROI)

    def _unobserveMarkups(self) -> None:
        for node in self._observedMarkups:
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined)
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxDefined)
        self._observedMarkups = []

    # ------------------------------------------------------------------ shortcuts
    def _installShortcuts(self) -> None:
        self._removeShortcuts()
        actions = {"positive": lambda: self.startPlacing(True), "negative": lambda: self.startPlacing(False),
                   "box": self.startPlacingBox, "undo": self.onUndo, "redo": self.onRedo, "accept": self.onAccept,
                   "reset": self.onReset}
        for keys, action in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", actions[action])
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    # ------------------------------------------------------------------ settings and model
    def _updateModelPathVisibility(self) -> None:
        isFile = self.ui.modelComboBox.currentData == "file"
        self.ui.modelPathLineEdit.setVisible(isFile)

    def _modelSource(self) -> str:
        choice = self.ui.modelComboBox.currentData
        return self.ui.modelPathLineEdit.currentPath if choice == "file" else choice

    def onModelSettingsChanged(self, *_args) -> None:
        """Store the preferences; the model is (re)loaded on the next click or 'Load model'."""
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "model", self.ui.modelComboBox.currentData)
        settings.setValue(SETTINGS_PREFIX + "modelPath", self.ui.modelPathLineEdit.currentPath)
        settings.setValue(SETTINGS_PREFIX + "device", self.ui.deviceComboBox.currentData)
        self._updateModelPathVisibility()

    def onOtherSegmentsChanged(self, *_args) -> None:
        """Store the other-segments rule in the scene."""
        if self._parameterNode:
            self._parameterNode.otherSegments = OtherSegments(self.ui.otherSegmentsComboBox.currentData)

    def onLoadModel(self) -> bool:
        """Load the chosen model (downloading SAM-Med3D-turbo after confirmation); True on success."""
        from SAMVolSegmentLib.errors import ModelNotAvailableError

        source, device = self._modelSource(), self.ui.deviceComboBox.currentData
        with slicer.util.tryWithErrorDisplay(_("Failed to load the model."), waitCursor=True):
            try:
                self.logic.loadModel(source, device)
            except ModelNotAvailableError as exc:
                if not slicer.util.confirmOkCancelDisplay(
                        _("{error}\n\nDownload it now?").format(error=exc), windowTitle=_("Model download")):
                    return False
                self.logic.loadModel(source, device, download=True)
            self._hideProgress()
            return True
        self._hideProgress()
        return False

    def onInstallDependencies(self) -> None:
        """Install missing dependencies after the user's click (main thread, as pip requires)."""
        try:
            SAMVolSegmentLogic.installDependencies(askConfirmation=True)
        except InstallError as exc:
            if exc.restartRequired and slicer.util.confirmYesNoDisplay(
                    _("{error}\n\nOpen the Extensions Manager now?").format(error=exc)):
                slicer.app.openExtensionsManagerDialog()
            else:
                slicer.util.errorDisplay(str(exc))
            return
        self.ui.statusLabel.setText(_("Dependencies are installed."))

    # ------------------------------------------------------------------ target
    def onInputVolumeChanged(self, node) -> None:
        """Preprocessing starts as soon as a volume and a model are there, so the first click rarely waits."""
        if node is not None and self.logic.session is not None and self._segmentationNodeAndID()[0] is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to prepare the volume.")):
                self._ensureTarget()

    def onSegmentationChanged(self, node) -> None:
        """Store the chosen segmentation in the scene."""
        if self._parameterNode:
            self._parameterNode.segmentationNode = node

    def onSegmentChanged(self, segmentID: str) -> None:
        """A new target segment: its prompts start fresh (earlier ones are final)."""
        if self._parameterNode:
            self._parameterNode.segmentID = segmentID or ""
        self._clearMarkers()
        self._updateButtons()

    def _segmentationNodeAndID(self):
        node = self.ui.segmentSelector.currentNode()
        return node, (self.ui.segmentSelector.currentSegmentID() or "")

    def _ensureTarget(self) -> bool:
        """Model loaded, volume pushed, target segment created/selected; False if the user cancelled."""
        SAMVolSegmentLogic.checkDependencies()
        wanted = (self._modelSource(), self.ui.deviceComboBox.currentData)
        if (self.logic.session is None or self.logic.modelKey != wanted) and not self.onLoadModel():
            return False
        pn = self._parameterNode
        segmentationNode, segmentID = self._segmentationNodeAndID()
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", _("SAMVolSegment"))
            self.ui.segmentSelector.setCurrentNode(segmentationNode)
        segmentEditorNode = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        self.logic.editPolicy = SAMVolSegmentLogic.editPolicyFromSegmentEditor(
            segmentEditorNode, pn.otherSegments, pn.useSegmentEditorMasking)
        newID = self.logic.setTarget(pn.inputVolume, segmentationNode, segmentID)
        if newID != segmentID:
            self.ui.segmentSelector.setCurrentSegmentID(newID)
        return True

    # ------------------------------------------------------------------ prompts
    def _startPlace(self, node, persistent: bool) -> None:
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(1 if persistent else 0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def startPlacing(self, positive: bool = True) -> None:
        """Enter persistent place mode on the positive or negative point list."""
        pn = self._parameterNode
        self._startPlace(pn.positivePoints if positive else pn.negativePoints, persistent=True)
        self.ui.statusLabel.setText(_("Click {sign} points in a view (Esc or right-click to stop).").format(
            sign=_("positive") if positive else _("negative")))

    def startPlacingBox(self) -> None:
        """Place a new box: drag (or click two corners) in a slice view."""
        pn = self._parameterNode
        if pn.boxROI is None:
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("SAMVolSegment box"))
            roi.CreateDefaultDisplayNodes()
            pn.boxROI = roi
            self.addObserver(roi, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxDefined)
            self._observedMarkups.append(roi)
        pn.boxROI.RemoveAllControlPoints()
        self._startPlace(pn.boxROI, persistent=False)

    def onPointDefined(self, caller, event) -> None:
        """A point was placed: lock it and send it (clicks arriving while the engine works are dropped)."""
        if self._ignorePointEvents:
            return
        index = caller.GetNumberOfControlPoints() - 1
        if index < 0:
            return
        positive = caller is self._parameterNode.positivePoints
        markerID = caller.GetNthControlPointID(index)
        if self.logic.worker.busy:
            caller.RemoveNthControlPoint(index)
            return
        caller.SetNthControlPointLocked(index, True)
        pointWorld = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, pointWorld)
        ok = False
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            if self._ensureTarget():
                self.logic.addPoint(pointWorld, positive, markerID=f"{caller.GetID()}:{markerID}")
                ok = True
        if not ok:
            self._removeMarker(f"{caller.GetID()}:{markerID}")
        self._afterStep()

    def onBoxDefined(self, caller, event) -> None:
        """The box is complete (both corners placed): send it."""
        if caller.GetNumberOfDefinedControlPoints() < 1 or self.logic.worker.busy:
            return
        with slicer.util.tryWithErrorDisplay(_("Box prompt failed."), waitCursor=True):
            if self._ensureTarget():
                minWorld, maxWorld = self.logic.boxFromROI(caller)
                self.logic.setBox(minWorld, maxWorld, markerID=caller.GetID())
        self._afterStep()

    def _afterStep(self) -> None:
        self._hideProgress()
        timing = self.logic.lastTiming
        if timing:
            self.ui.statusLabel.setText(_("Segment updated in {total:.0f} ms (model {model:.0f} ms, write {write:.0f} ms).")
                                        .format(total=1000 * timing.get("total_s", 0.0),
                                                model=1000 * (timing.get("total_s", 0.0) - timing.get("write_s", 0.0)),
                                                write=1000 * timing.get("write_s", 0.0)))
        self._updateButtons()

    def _removeMarker(self, markerID: str) -> None:
        """Delete a point's marker (``"<nodeID>:<controlPointID>"``) or hide the box."""
        nodeID, _sep, pointID = markerID.partition(":")
        node = slicer.mrmlScene.GetNodeByID(nodeID)
        if node is None:
            return
        if pointID:
            index = node.GetNthControlPointIndexByID(pointID)
            if index >= 0:
                self._ignorePointEvents = True
                try:
                    node.RemoveNthControlPoint(index)
                finally:
                    self._ignorePointEvents = False
        else:
            node.RemoveAllControlPoints()

    def _restoreMarker(self, prompt: Prompt) -> None:
        """Show a redone point again (a new control point at the same world position)."""
        if prompt.kind != "point":
            return
        pn = self._parameterNode
        node = pn.positivePoints if prompt.positive else pn.negativePoints
        self._ignorePointEvents = True
        try:
            index = node.AddControlPointWorld(vtk.vtkVector3d(*prompt.position_ras))
            node.SetNthControlPointLocked(index, True)
        finally:
            self._ignorePointEvents = False

    def _clearMarkers(self) -> None:
        pn = self._parameterNode
        if pn is None:
            return
        self._ignorePointEvents = True
        try:
            for node in (pn.positivePoints, pn.negativePoints, pn.boxROI):
                if node is not None:
                    node.RemoveAllControlPoints()
        finally:
            self._ignorePointEvents = False

    def onUndo(self) -> None:
        """Undo the last prompt (Ctrl+Z)."""
        with slicer.util.tryWithErrorDisplay(_("Undo failed.")):
            prompt = self.logic.undo()
            if prompt is not None and prompt.marker_id:
                self._removeMarker(prompt.marker_id)
        self._updateButtons()

    def onRedo(self) -> None:
        """Redo the last undone prompt (Ctrl+Y)."""
        with slicer.util.tryWithErrorDisplay(_("Redo failed.")):
            prompt = self.logic.redo()
            if prompt is not None:
                self._restoreMarker(prompt)
        self._updateButtons()

    def onReset(self) -> None:
        """Undo all prompts of the current segment (Shift+R)."""
        with slicer.util.tryWithErrorDisplay(_("Reset failed.")):
            self.logic.reset()
            self._clearMarkers()
        self._updateButtons()

    def onAccept(self) -> None:
        """Accept the current segment and add the next one (N)."""
        segmentationNode, segmentID = self._segmentationNodeAndID()
        with slicer.util.tryWithErrorDisplay(_("Could not start the next segment.")):
            self.logic.acceptSegment()
            self._clearMarkers()
            if segmentationNode is not None:
                if segmentID:
                    slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
                        segmentationNode.GetSegmentation().GetSegment(segmentID),
                        slicer.vtkSlicerSegmentationsModuleLogic.Completed)
                newID = segmentationNode.GetSegmentation().AddEmptySegment("")
                self.ui.segmentSelector.setCurrentSegmentID(newID)
        self._updateButtons()

    # ------------------------------------------------------------------ progress
    def _onSlow(self, elapsed: float, fraction: Optional[float], message: str) -> None:
        self.ui.progressBar.show()
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)  # busy indicator
        else:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.setValue(int(100 * fraction))
        self.ui.statusLabel.setText(_("{message} ({elapsed:.1f} s)").format(
            message=message or _("Working..."), elapsed=elapsed))

    def _hideProgress(self) -> None:
        self.ui.progressBar.hide()

    def _updateButtons(self) -> None:
        self.ui.undoButton.enabled = bool(self.logic and self.logic.canUndo)
        self.ui.redoButton.enabled = bool(self.logic and self.logic.canRedo)
        missing = dependencies.missing_requirements()
        self.ui.installButton.setVisible(bool(missing))


#
# Test
#


class SAMVolSegmentTest(ScriptedLoadableModuleTest):
    """Click → segment → undo/redo → next segment on an oblique, parent-transformed volume, bundled model."""

    def setUp(self) -> None:
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run all tests (Reload and Test)."""
        self.setUp()
        self.test_click_segment_undo_oblique_transformed()
        self.setUp()
        self.test_console_segment_volume()

    @staticmethod
    def _phantom():
        """Oblique 1.2×1.0×2.0 mm volume with a bright ball, under a rotating + translating parent transform.

        Returns (volumeNode, ball centre in world RAS, ball radius mm).
        """
        shape_kji = (48, 96, 96)
        spacing_ijk = np.array([1.0, 1.2, 2.0])
        k, j, i = np.mgrid[: shape_kji[0], : shape_kji[1], : shape_kji[2]]
        centre_ijk = np.array([50.0, 44.0, 22.0])
        radius = 18.0
        dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((i, j, k), centre_ijk, spacing_ijk)))
        rng = np.random.default_rng(0)
        voxels = np.where(dist < radius, 300.0, 20.0) + rng.normal(0, 5, shape_kji)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
        slicer.util.updateVolumeFromArray(volumeNode, voxels.astype(np.int16))
        volumeNode.SetSpacing(*spacing_ijk)
        volumeNode.SetOrigin(-40.0, 25.0, -30.0)
        angle = np.deg2rad(25.0)
        directions = vtk.vtkMatrix4x4()
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        rotation = rotation @ np.array([[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)],
                                        [0, np.sin(angle / 2), np.cos(angle / 2)]])
        for r in range(3):
            for c in range(3):
                directions.SetElement(r, c, rotation[r, c])
        volumeNode.SetIJKToRASDirectionMatrix(directions)
        volumeNode.CreateDefaultDisplayNodes()
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
        transform = vtk.vtkTransform()
        transform.Translate(12.0, -7.0, 30.0)
        transform.RotateX(-15.0)
        transformNode.SetMatrixTransformToParent(transform.GetMatrix())
        volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        ijkToWorld = SAMVolSegmentLogic.volumeIjkToWorld(volumeNode)
        centreWorld = coordinates.transform_points(ijkToWorld, centre_ijk)
        return volumeNode, centreWorld, radius

    def test_click_segment_undo_oblique_transformed(self) -> None:
        """One positive click inside the ball segments it; undo empties the segment; redo restores it."""
        self.delayDisplay("Building an oblique, transformed phantom")
        volumeNode, centreWorld, radius = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        other = segmentationNode.GetSegmentation().AddEmptySegment("other")
        logic = SAMVolSegmentLogic()
        logic.processEvents = slicer.app.processEvents
        try:
            logic.loadModel("default", "cpu")
            segmentID = logic.setTarget(volumeNode, segmentationNode, "")
            self.assertNotEqual(segmentID, other)

            # The ball centre in world, computed by Slicer itself, matches the logic's matrix.
            ijkToRas = vtk.vtkMatrix4x4()
            volumeNode.GetIJKToRASMatrix(ijkToRas)
            localRas = ijkToRas.MultiplyPoint((50.0, 44.0, 22.0, 1.0))[:3]
            slicerWorld = volumeNode.GetParentTransformNode().GetTransformToParent().TransformPoint(localRas)
            self.assertTrue(np.allclose(slicerWorld, centreWorld, atol=1e-4))

            self.delayDisplay("Clicking inside the ball")
            logic.addPoint(centreWorld, positive=True)
            labelKji = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentID, volumeNode)
            self.assertEqual(labelKji.shape, slicer.util.arrayFromVolume(volumeNode).shape)
            self.assertEqual(labelKji[22, 44, 50], 1, "the clicked voxel must be inside the segment")
            voxels = slicer.util.arrayFromVolume(volumeNode)
            inside = labelKji > 0
            self.assertGreater(inside.sum(), 100)
            # Most of the segment is bright ball, not background.
            self.assertGreater(float(np.mean(voxels[inside] > 160)), 0.8)
            self.assertTrue(logic.canUndo)
            self.assertEqual(logic.lastTiming.keys() >= {"total_s", "write_s"}, True)

            self.delayDisplay("Undo")
            logic.undo()
            self.assertEqual(int(slicer.util.arrayFromSegmentBinaryLabelmap(
                segmentationNode, segmentID, volumeNode).sum()), 0)
            self.assertTrue(logic.canRedo)

            self.delayDisplay("Redo")
            logic.redo()
            redone = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentID, volumeNode)
            self.assertTrue(np.array_equal(redone > 0, inside))

            self.delayDisplay("Next segment: the first one must not change (Protect)")
            logic.acceptSegment()
            secondID = logic.setTarget(volumeNode, segmentationNode, "")
            self.assertNotEqual(secondID, segmentID)
            logic.addPoint(centreWorld, positive=True)
            after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentID, volumeNode)
            self.assertTrue(np.array_equal(after > 0, inside), "Protect must never change another segment")
            second = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, secondID, volumeNode)
            self.assertFalse(np.any((second > 0) & inside), "Protect must not overlap another segment")
            self.delayDisplay("Test passed")
        finally:
            logic.cleanup()

    def test_console_segment_volume(self) -> None:
        """``segmentVolume`` adds one segment from prompts, without the GUI."""
        volumeNode, centreWorld, _radius = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "console")
        logic = SAMVolSegmentLogic()
        try:
            segmentID = logic.segmentVolume(volumeNode, segmentationNode, [centreWorld], [1], segmentName="ball")
            self.assertEqual(segmentationNode.GetSegmentation().GetSegment(segmentID).GetName(), "ball")
            labelKji = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentID, volumeNode)
            self.assertEqual(labelKji[22, 44, 50], 1)
        finally:
            logic.cleanup()


# Names used only by annotations or tests must stay importable for ruff's unused-import check.
__all__ = ["SAMVolSegment", "SAMVolSegmentLogic", "SAMVolSegmentParameterNode", "SAMVolSegmentTest",
           "SAMVolSegmentWidget"]
