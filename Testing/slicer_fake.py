# ruff: noqa: N801, N802, N815, N816 - the stand-in mirrors Slicer's class and method names
"""A stand-in for exactly the Slicer, MRML and Qt calls SAMVolSegment.py makes, so pytest can run its Logic and
Widget without Slicer.

Each behaviour that matters for correctness follows Slicer's own source (paths in github.com/Slicer/Slicer,
checked against v5.6.0, v5.8.0 and main):

* ``slicer.util.tryWithErrorDisplay`` shows the dialog and then **re-raises** — Base/Python/slicer/util.py.
* Markups control points get IDs "1", "2", ... from ``GenerateUniqueControlPointID`` and a re-added point gets a
  new one; ``AddControlPoint`` fires ``PointAddedEvent`` then ``PointPositionDefinedEvent`` with the index as
  call data; a placed point is first a preview, then defined by ``SetNthControlPointPosition`` —
  Libs/MRML/Core/vtkMRMLMarkupsNode.cxx (v5.6: Modules/Loadable/Markups/MRML/),
  Modules/Loadable/Markups/VTKWidgets/vtkSlicerMarkupsWidget.cxx (``PlacePoint``).
* ``AddControlPointWorld(point, label)``: an empty label gets the automatic one (``autoLabel``), and the new point
  is defined, so ``PointPositionDefinedEvent`` fires (``AddNControlPoints`` -> ``AddControlPoint``);
  ``SetNthControlPointVisibility`` hides one point and keeps it (and its ID) — vtkMRMLMarkupsNode.h/.cxx;
  ``vtkMRMLDisplayNode::SetVisibility`` hides a whole node's display — Libs/MRML/Core/vtkMRMLDisplayNode.h.
* A box ROI is defined by two control points (``NUMBER_OF_BOX_CONTROL_POINTS = 2``), one click each, and
  ``PointPositionDefinedEvent`` fires per corner; its size is the corners' bounding box, a zero side padded to
  the smallest non-zero side, and once both corners are down they are replaced by one centre point —
  Libs/MRML/Core/vtkMRMLMarkupsROINode.cxx (``UpdateBoxROIFromControlPoints``, ``UpdateControlPointsFromBoxROI``).
* ``qMRMLSegmentSelectorWidget``: with ``noneEnabled`` it starts on None, repopulates on ``SegmentAdded``
  keeping the selection with signals blocked, and ``setCurrentSegmentID`` emits ``currentSegmentChanged`` —
  Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.cxx.
* Qt (and PythonQt) call the slots of one signal in connection order; an exception in a slot or a VTK observer
  is printed and swallowed by the binding (recorded here in ``errorsInCallbacks``). PythonQt passes a slot only
  as many of the signal's arguments as it declares — src/PythonQtSignalReceiver.cpp (commontk/PythonQt).
* ``vtkMRMLScene::Clear``: StartCloseEvent, every non-singleton node removed with NodeRemovedEvent, singletons
  reset, EndCloseEvent — Libs/MRML/Core/vtkMRMLScene.cxx.
* ``@parameterNodeWrapper``'s ``connectGui`` connects its own handlers when called, i.e. after the widget's
  ``setup`` connected its slots — Base/Python/slicer/parameterNodeWrapper/wrapper.py.
* ``slicer.util.arrayFromMarkupsControlPoints(markupsNode, world=False)`` returns every control point, whatever
  its position status; ``getNodesByClass`` includes subclasses (a labelmap is a ``vtkMRMLScalarVolumeNode``);
  ``getModuleLogic`` of a scripted module is its widget's ``logic`` — Base/Python/slicer/util.py.
* The Segment Editor's settings node (editable area, intensity range, *Modify other segments*), the singleton
  tagged "SegmentEditor" — vtkMRMLSegmentEditorNode.h, Modules/Scripted/SegmentEditor/SegmentEditor.py; the
  editable-area enum — vtkMRMLSegmentationNode.h.
* A parent transform: ``IsTransformToWorldLinear`` / ``GetMatrixTransformToWorld`` —
  Libs/MRML/Core/vtkMRMLTransformNode.h; ``GetParentTransformNode`` — vtkMRMLTransformableNode.h.

Real VTK (``vtk`` from the venv) provides matrices and image data; segment labelmaps are real
``vtkImageData`` with an ImageToWorld matrix, as ``vtkOrientedImageData`` is.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import vtk

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SAMVolSegment"


class FakeState:
    """Everything a test may inspect: dialogs shown, cursor depth, errors swallowed by the bindings."""

    def __init__(self) -> None:
        self.errorDialogs: List[str] = []
        self.confirmAnswers: List[bool] = []
        self.confirmQuestions: List[str] = []
        self.overrideCursorDepth = 0
        self.errorsInCallbacks: List[BaseException] = []
        self.processEventsCalls = 0
        self.progressDialogs: List[QProgressDialog] = []
        self.settings: Dict[str, Any] = {}
        self.timers: List[Callable] = []
        #: What ``slicer.util.getModuleLogic(name)`` returns (Slicer: the module widget's ``logic``).
        self.moduleLogics: Dict[str, Any] = {}


STATE = FakeState()


# ---------------------------------------------------------------------------------------------- observers
_EVENT_IDS = itertools.count(50000)


class FakeVTKObject:
    """Observer bookkeeping with VTK's call conventions: priority order, call data only for callbacks that
    declare ``CallDataType`` (``vtk.calldata_type``), exceptions printed and swallowed."""

    def __init__(self) -> None:
        self._observers: Dict[int, tuple] = {}
        self._tags = itertools.count(1)

    def AddObserver(self, event, callback, priority: float = 0.0) -> int:
        tag = next(self._tags)
        self._observers[tag] = (event, callback, priority)
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self._observers.pop(tag, None)

    def InvokeEvent(self, event, callData=None) -> None:
        entries = sorted(((-p, tag, cb) for tag, (e, cb, p) in self._observers.items() if e == event))
        for _p, tag, callback in entries:
            if tag not in self._observers:
                continue
            try:
                if hasattr(callback, "CallDataType"):
                    callback(self, event, callData)
                else:
                    callback(self, event)
            except Exception as exc:  # VTK prints the traceback and carries on
                STATE.errorsInCallbacks.append(exc)


# ---------------------------------------------------------------------------------------------- MRML nodes
class vtkMRMLNode(FakeVTKObject):
    ModifiedEvent = vtk.vtkCommand.ModifiedEvent

    def __init__(self) -> None:
        super().__init__()
        self._id = ""
        self._name = ""
        self.scene: Optional[FakeScene] = None
        self._display = None

    def GetID(self) -> str:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name

    def GetClassName(self) -> str:
        return type(self).__name__

    def IsA(self, name: str) -> bool:
        return any(cls.__name__ == name for cls in type(self).__mro__)

    def SetAndObserveTransformNodeID(self, transformNodeID) -> None:
        """vtkMRMLTransformableNode: put the node under a transform (None/"" removes it)."""
        self._transformID = transformNodeID or ""

    def GetParentTransformNode(self):
        """vtkMRMLTransformableNode::GetParentTransformNode (Libs/MRML/Core/vtkMRMLTransformableNode.h)."""
        transformID = getattr(self, "_transformID", "")
        return self.scene.GetNodeByID(transformID) if transformID and self.scene else None

    def CreateDefaultDisplayNodes(self) -> None:
        if self._display is None:
            self._display = FakeDisplayNode()

    def GetDisplayNode(self):
        return self._display

    def Modified(self) -> None:
        self.InvokeEvent(self.ModifiedEvent)


class FakeDisplayNode:
    def __init__(self) -> None:
        self.visibility: Dict[str, bool] = {}
        self.color = None
        self.displayVisibility = 1

    def SetVisibility(self, visible) -> None:
        """vtkMRMLDisplayNode::SetVisibility (Libs/MRML/Core/vtkMRMLDisplayNode.h): the node's display as a whole."""
        self.displayVisibility = int(bool(visible))

    def GetVisibility(self) -> int:
        return self.displayVisibility

    def SetSelectedColor(self, color) -> None:
        self.color = color

    def SetPointLabelsVisibility(self, visible) -> None:
        pass

    def GetSegmentVisibility(self, segmentID: str) -> bool:
        return self.visibility.get(segmentID, True)

    def SetSegmentVisibility(self, segmentID: str, visible: bool) -> None:
        self.visibility[segmentID] = bool(visible)


class FakeImageData:
    _mtime = itertools.count(1)

    def __init__(self) -> None:
        self.mtime = next(self._mtime)

    def GetMTime(self) -> int:
        return self.mtime


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self.array: Optional[np.ndarray] = None
        self.ijkToRas = np.eye(4)
        self._image: Optional[FakeImageData] = None

    def setArray(self, arrayKji: np.ndarray, ijkToRas: Optional[np.ndarray] = None) -> None:
        """Test helper (``slicer.util.updateVolumeFromArray`` + geometry)."""
        self.array = np.asarray(arrayKji)
        if ijkToRas is not None:
            self.ijkToRas = np.asarray(ijkToRas, float)
        self._image = FakeImageData()

    def GetImageData(self):
        return self._image

    def GetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        matrix.DeepCopy(self.ijkToRas.ravel().tolist())


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLTransformNode(vtkMRMLNode):
    """A parent transform (Libs/MRML/Core/vtkMRMLTransformNode.h): ``IsTransformToWorldLinear`` and
    ``GetMatrixTransformToWorld``; ``linear = False`` stands for a grid/B-spline transform. Nesting is not
    modelled: the matrix given is the transform to world."""

    def __init__(self) -> None:
        super().__init__()
        self.toWorld = np.eye(4)
        self.linear = True

    def SetMatrixTransformToParent(self, matrix: vtk.vtkMatrix4x4) -> None:
        self.toWorld = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def IsTransformToWorldLinear(self) -> int:
        return int(self.linear)

    def GetMatrixTransformToWorld(self, matrix: vtk.vtkMatrix4x4) -> int:
        if not self.linear:
            return 0
        matrix.DeepCopy(self.toWorld.ravel().tolist())
        return 1


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    pass


class vtkMRMLMarkupsNode(vtkMRMLNode):
    """Control points with IDs, lock and position status (vtkMRMLMarkupsNode.cxx)."""

    PointAddedEvent = next(_EVENT_IDS)
    PointModifiedEvent = next(_EVENT_IDS)
    PointRemovedEvent = next(_EVENT_IDS)
    PointPositionDefinedEvent = next(_EVENT_IDS)
    PositionUndefined, PositionPreview, PositionDefined, PositionMissing = range(4)

    def __init__(self) -> None:
        super().__init__()
        self.points: List[dict] = []
        self.lastUsedControlPointNumber = 0

    def _generateUniqueControlPointID(self) -> str:
        self.lastUsedControlPointNumber += 1
        return str(self.lastUsedControlPointNumber)

    def _afterPointsChanged(self) -> None:
        """Subclass hook: vtkMRMLMarkupsROINode recomputes its box from the points here."""

    def AddControlPoint(self, position, status: int = 2, label: str = "") -> int:
        pointID = self._generateUniqueControlPointID()
        self.points.append({"id": pointID, "pos": np.array(list(position), float), "locked": False,
                            "visible": True, "status": status, "label": label or f"{self.GetName()}-{pointID}"})
        self._afterPointsChanged()
        index = len(self.points) - 1
        self.InvokeEvent(self.PointAddedEvent, index)
        self.InvokeEvent(self.PointModifiedEvent, index)
        if status == self.PositionDefined:
            self.InvokeEvent(self.PointPositionDefinedEvent, index)
        return index

    def AddControlPointWorld(self, position, label: str = "") -> int:
        """An empty label gets the automatic one (AddControlPoint's autoLabel); the point is defined."""
        return self.AddControlPoint([position[0], position[1], position[2]], label=label)

    def SetNthControlPointPositionWorld(self, n: int, position, status: int = 2) -> None:
        point = self.points[n]
        old = point["status"]
        point["pos"] = np.array(list(position), float)
        point["status"] = status
        self._afterPointsChanged()
        self.InvokeEvent(self.PointModifiedEvent, n)
        if old != self.PositionDefined and status == self.PositionDefined:
            self.InvokeEvent(self.PointPositionDefinedEvent, n)

    def GetNumberOfControlPoints(self) -> int:
        return len(self.points)

    def GetNumberOfDefinedControlPoints(self, includePreview: bool = False) -> int:
        ok = (self.PositionDefined, self.PositionPreview) if includePreview else (self.PositionDefined,)
        return sum(p["status"] in ok for p in self.points)

    def GetNthControlPointID(self, n: int) -> str:
        return self.points[n]["id"]

    def GetNthControlPointIndexByID(self, pointID: str) -> int:
        return next((i for i, p in enumerate(self.points) if p["id"] == pointID), -1)

    def SetNthControlPointLocked(self, n: int, locked: bool) -> None:
        self.points[n]["locked"] = bool(locked)

    def GetNthControlPointLocked(self, n: int) -> bool:
        return self.points[n]["locked"]

    def SetNthControlPointVisibility(self, n: int, visible: bool) -> None:
        self.points[n]["visible"] = bool(visible)
        self.InvokeEvent(self.PointModifiedEvent, n)

    def GetNthControlPointVisibility(self, n: int) -> bool:
        return self.points[n]["visible"]

    def GetNthControlPointLabel(self, n: int) -> str:
        return self.points[n]["label"]

    def SetNthControlPointLabel(self, n: int, label: str) -> None:
        self.points[n]["label"] = str(label)

    def GetNthControlPointPositionStatus(self, n: int) -> int:
        return self.points[n]["status"]

    def GetNthControlPointPosition(self, n: int, out) -> None:
        out[:] = self.points[n]["pos"].tolist()  # the fake's markups have no parent transform: local = world

    def GetNthControlPointPositionWorld(self, n: int, out) -> None:
        out[:] = self.points[n]["pos"].tolist()

    def RemoveNthControlPoint(self, n: int) -> None:
        del self.points[n]
        self._afterPointsChanged()
        self.InvokeEvent(self.PointRemovedEvent, n)

    def RemoveAllControlPoints(self) -> None:
        while self.points:
            self.RemoveNthControlPoint(len(self.points) - 1)
        self._afterPointsChanged()


class vtkMRMLMarkupsFiducialNode(vtkMRMLMarkupsNode):
    pass


class vtkMRMLMarkupsROINode(vtkMRMLMarkupsNode):
    """A box ROI: size/centre from control points as vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints."""

    NUMBER_OF_BOX_CONTROL_POINTS = 2

    def __init__(self) -> None:
        super().__init__()
        self.size = np.zeros(3)
        self.center = np.zeros(3)
        self._updating = False

    def _afterPointsChanged(self) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            active = [p["pos"] for p in self.points if p["status"] in (self.PositionDefined, self.PositionPreview)]
            if not active:
                self.size = np.zeros(3)
                return
            lo, hi = np.min(active, axis=0), np.max(active, axis=0)
            size = hi - lo
            if len(self.points) >= self.NUMBER_OF_BOX_CONTROL_POINTS:
                positive = size[size > 0]
                size = np.where(size == 0, positive.min() if positive.size else 0.0, size)
            self.size, self.center = size, (lo + hi) / 2
            if self.GetNumberOfDefinedControlPoints() >= self.NUMBER_OF_BOX_CONTROL_POINTS:
                # UpdateControlPointsFromBoxROI: the corners are replaced by one point at the centre; inside a
                # modify blocker, so its events are deferred and carry no call data.
                self.points = [dict(self.points[0], pos=self.center.copy())]
        finally:
            self._updating = False

    def GetSize(self):
        return tuple(float(v) for v in self.size)

    def GetCenter(self, out) -> None:
        out[:] = self.center.tolist()

    def GetObjectToNodeMatrix(self) -> vtk.vtkMatrix4x4:
        return vtk.vtkMatrix4x4()


class FakeSegment:
    def __init__(self, name: str) -> None:
        self.name = name
        self.labelmap = None
        self.status = None

    def GetName(self) -> str:
        return self.name

    def SetName(self, name: str) -> None:
        self.name = name

    def GetLabelValue(self) -> int:
        return 1


class FakeSegmentation:
    def __init__(self, owner: vtkMRMLSegmentationNode) -> None:
        self.owner = owner
        self.segments: Dict[str, FakeSegment] = {}
        self.parameters: Dict[str, str] = {}
        self.sourceRepresentation = "Binary labelmap"
        self._ids = itertools.count(1)

    def AddEmptySegment(self, segmentID: str = "", name: str = "") -> str:
        number = next(self._ids)
        segmentID = segmentID or f"Segment_{number}"
        self.segments[segmentID] = FakeSegment(name or f"Segment_{number}")
        self.owner.InvokeEvent(vtkMRMLSegmentationNode.SegmentAdded, segmentID)
        return segmentID

    def RemoveSegment(self, segmentID: str) -> None:
        del self.segments[segmentID]
        self.owner.InvokeEvent(vtkMRMLSegmentationNode.SegmentRemoved, segmentID)

    def GetSegment(self, segmentID: str):
        return self.segments.get(segmentID)

    def GetSegmentIDs(self) -> List[str]:
        return list(self.segments)

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)

    def GetSourceRepresentationName(self) -> str:
        return self.sourceRepresentation

    def ContainsRepresentation(self, name: str) -> bool:
        return name == self.sourceRepresentation

    def GetConversionParameter(self, name: str) -> str:
        return self.parameters.get(name, "")

    def SetConversionParameter(self, name: str, value: str) -> None:
        self.parameters[name] = value


class vtkMRMLSegmentationNode(vtkMRMLNode):
    SegmentAdded = next(_EVENT_IDS)
    SegmentRemoved = next(_EVENT_IDS)
    # The Segment Editor's editable-area enum, in its order (Libs/MRML/Core/vtkMRMLSegmentationNode.h).
    (EditAllowedEverywhere, EditAllowedInsideAllSegments, EditAllowedInsideVisibleSegments,
     EditAllowedOutsideAllSegments, EditAllowedOutsideVisibleSegments, EditAllowedInsideSingleSegment) = range(6)

    def __init__(self) -> None:
        super().__init__()
        self.segmentation = FakeSegmentation(self)

    def GetSegmentation(self) -> FakeSegmentation:
        return self.segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode) -> None:
        self.segmentation.SetConversionParameter("ReferenceImageGeometry", f"geometry of {volumeNode.GetID()}")

    @staticmethod
    def GetReferenceImageGeometryReferenceRole() -> str:
        return "referenceImageGeometryRef"

    def GetNodeReference(self, role: str):
        return None  # the module never sets node references; the geometry lives in the conversion parameter

    def GetBinaryLabelmapInternalRepresentation(self, segmentID: str):
        segment = self.segmentation.GetSegment(segmentID)
        return None if segment is None else segment.labelmap

    def CreateClosedSurfaceRepresentation(self) -> bool:
        return True

    def segmentArray(self, segmentID: str, shapeKji) -> np.ndarray:
        """Test helper: a segment on the volume grid (the module writes on that grid)."""
        from SAMVolSegmentSlicerLib import vtk_numpy

        labelmap = self.GetBinaryLabelmapInternalRepresentation(segmentID)
        full = tuple((0, n) for n in shapeKji)
        if labelmap is None:
            return np.zeros(shapeKji, bool)
        return vtk_numpy.read_region(labelmap, full, 1)


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self.values: Dict[str, Any] = {}


class vtkMRMLSegmentEditorNode(vtkMRMLNode):
    """The Segment Editor's settings (Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h): editable
    area (``MaskMode``, default Everywhere, and ``MaskSegmentID``), editable intensity range
    (``SourceVolumeIntensityMask`` + ``Range``) and *Modify other segments* (``OverwriteMode``, default All).
    The Segment Editor module keeps it as the scene's singleton tagged "SegmentEditor"
    (Modules/Scripted/SegmentEditor/SegmentEditor.py, ``selectParameterNode``)."""

    OverwriteAllSegments, OverwriteVisibleSegments, OverwriteNone = range(3)

    def __init__(self) -> None:
        super().__init__()
        self.maskMode, self.maskSegmentID = vtkMRMLSegmentationNode.EditAllowedEverywhere, None
        self.intensityMask, self.intensityMaskRange = False, (0.0, 0.0)
        self.overwriteMode = self.OverwriteAllSegments

    def GetMaskMode(self) -> int:
        return self.maskMode

    def SetMaskMode(self, mode: int) -> None:
        self.maskMode = int(mode)

    def GetMaskSegmentID(self):
        return self.maskSegmentID

    def SetMaskSegmentID(self, segmentID) -> None:
        self.maskSegmentID = segmentID

    def GetSourceVolumeIntensityMask(self) -> bool:
        return self.intensityMask

    def SetSourceVolumeIntensityMask(self, enabled: bool) -> None:
        self.intensityMask = bool(enabled)

    def GetSourceVolumeIntensityMaskRange(self):
        return self.intensityMaskRange

    def SetSourceVolumeIntensityMaskRange(self, low: float, high: float) -> None:
        self.intensityMaskRange = (float(low), float(high))

    def GetOverwriteMode(self) -> int:
        return self.overwriteMode

    def SetOverwriteMode(self, mode: int) -> None:
        self.overwriteMode = int(mode)


class vtkOrientedImageData(vtk.vtkImageData):
    """vtkImageData with an ImageToWorld matrix, as Slicer's vtkOrientedImageData."""

    def __init__(self) -> None:
        super().__init__()
        self._imageToWorld = np.eye(4)

    def SetImageToWorldMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._imageToWorld = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def GetImageToWorldMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        matrix.DeepCopy(self._imageToWorld.ravel().tolist())


class vtkSegmentationConverter:
    @staticmethod
    def GetReferenceImageGeometryParameterName() -> str:
        return "ReferenceImageGeometry"

    @staticmethod
    def GetSegmentationBinaryLabelmapRepresentationName() -> str:
        return "Binary labelmap"

    @staticmethod
    def GetSegmentationClosedSurfaceRepresentationName() -> str:
        return "Closed surface"


class vtkSlicerSegmentationsModuleLogic:
    MODE_REPLACE, MODE_MERGE_MAX, MODE_MERGE_MIN, MODE_MERGE_MASK = range(4)
    NotStarted, InProgress, Completed, Flagged = range(4)
    refuseWrites = False  # a test sets it to see the module handle a False return

    @classmethod
    def SetBinaryLabelmapToSegment(cls, image, segmentationNode, segmentID, mode, extent=None) -> bool:
        if cls.refuseWrites:
            return False
        copy = vtkOrientedImageData()
        copy.DeepCopy(image)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        copy.SetImageToWorldMatrix(matrix)
        segmentationNode.GetSegmentation().GetSegment(segmentID).labelmap = copy
        return True

    @staticmethod
    def SetSegmentStatus(segment, status) -> None:
        segment.status = status


class vtkOrientedImageDataResample:
    @staticmethod
    def ResampleOrientedImageToReferenceOrientedImage(*args) -> bool:
        raise NotImplementedError("the fake writes segments on the volume grid only")


# ---------------------------------------------------------------------------------------------- scene
class FakeScene(FakeVTKObject):
    NodeAddedEvent = next(_EVENT_IDS)
    NodeRemovedEvent = next(_EVENT_IDS)
    StartCloseEvent = next(_EVENT_IDS)
    EndCloseEvent = next(_EVENT_IDS)

    def __init__(self) -> None:
        super().__init__()
        self.nodes: Dict[str, vtkMRMLNode] = {}
        self._ids = itertools.count(1)
        self.singletons: Dict[str, vtkMRMLNode] = {}

    def AddNewNodeByClass(self, className: str, name: str = ""):
        node = getattr(sys.modules["slicer"], className)()
        node._id = f"{className}{next(self._ids)}"
        node._name = name
        node.scene = self
        self.nodes[node._id] = node
        self.InvokeEvent(self.NodeAddedEvent, node)
        return node

    def RemoveNode(self, node) -> None:
        self.nodes.pop(node.GetID(), None)
        node.scene = None
        self.InvokeEvent(self.NodeRemovedEvent, node)

    def GetNodeByID(self, nodeID: str):
        return self.nodes.get(nodeID)

    def IsNodePresent(self, node) -> bool:
        return node in self.nodes.values()

    def GetNumberOfNodesByClass(self, className: str) -> int:
        return sum(node.IsA(className) for node in self.nodes.values())

    def GetNthNodeByClass(self, n: int, className: str):
        return [node for node in self.nodes.values() if node.IsA(className)][n]

    def GetFirstNodeByClass(self, className: str):
        matches = [node for node in self.nodes.values() if node.IsA(className)]
        return matches[0] if matches else None

    def GetFirstNode(self, byName=None, byClass=None, byHideFromEditors=None, exactNameMatch=True):
        """vtkMRMLScene::GetFirstNode (Libs/MRML/Core/vtkMRMLScene.h); ``byHideFromEditors`` is not modelled."""
        for node in self.nodes.values():
            if byClass and not node.IsA(byClass):
                continue
            if byName is not None and not (node.GetName() == byName if exactNameMatch
                                           else node.GetName().startswith(byName)):
                continue
            return node
        return None

    def GetSingletonNode(self, tag: str, className: str):
        return self.singletons.get(tag)

    def IsClosing(self) -> bool:
        """vtkMRMLScene::IsClosing: true between StartCloseEvent and EndCloseEvent of ``Clear``."""
        return getattr(self, "_closing", False)

    def Clear(self, removeSingletons: int = 0) -> None:
        """vtkMRMLScene::Clear (Libs/MRML/Core/vtkMRMLScene.cxx): ``StartState(CloseState)`` fires StartCloseEvent,
        ``RemoveAllNodes`` removes every node but the singletons one by one (``RemoveNode``: NodeRemovedEvent each),
        ``ResetNodes`` gives the singletons a new node's content (vtkMRMLNode::Reset: a scripted module node loses
        its parameters, so the module's parameter node is empty again), then ``EndState`` fires EndCloseEvent."""
        self._closing = True
        try:
            self.InvokeEvent(self.StartCloseEvent)
            kept = set() if removeSingletons else {id(node) for node in self.singletons.values()}
            for node in [n for n in self.nodes.values() if id(n) not in kept]:
                if node.GetID() in self.nodes:
                    self.RemoveNode(node)
            for node in self.nodes.values():
                if isinstance(node, vtkMRMLScriptedModuleNode):
                    node.values = {}
        finally:
            self._closing = False
        self.InvokeEvent(self.EndCloseEvent)


# ---------------------------------------------------------------------------------------------- Qt widgets
def _pythonQtArgumentCount(slot: Callable, available: int) -> int:
    """How many of a signal's arguments PythonQt passes to a Python slot: a plain function or a bound method with a
    fixed parameter list gets only as many as it declares (``self`` not counted); anything else gets them all —
    PythonQtSignalTarget::call, src/PythonQtSignalReceiver.cpp in commontk/PythonQt (Slicer's PythonQt). So
    ``connect("clicked(bool)", self.onApply)`` with ``def onApply(self)`` works, as Slicer's module template
    relies on (Utilities/Templates/Modules/Scripted/TemplateKey.py)."""
    function = getattr(slot, "__func__", slot)
    code = getattr(function, "__code__", None)
    if code is None or code.co_flags & 0x04:  # not a Python function, or *args (CO_VARARGS)
        return available
    return min(available, code.co_argcount - (1 if hasattr(slot, "__self__") else 0))


class FakeWidget:
    """A Qt widget with PythonQt-style ``connect(signature, slot)``; slots run in connection order."""

    def __init__(self, className: str, name: str, properties: Optional[Dict[str, Any]] = None) -> None:
        self.className, self.name = className, name
        self.properties = properties or {}
        self.slots: Dict[str, List[Callable]] = {}
        self.enabled = True
        self.visible = True
        self.text = str(self.properties.get("text", ""))
        self.checked = bool(self.properties.get("checked", False))

    def connect(self, signature: str, slot: Callable) -> None:
        self.slots.setdefault(signature, []).append(slot)

    def disconnect(self, signature: str, slot: Optional[Callable] = None) -> None:
        if slot is None:
            self.slots.pop(signature, None)
        else:
            self.slots[signature] = [s for s in self.slots.get(signature, []) if s is not slot]

    def emit(self, signature: str, *args) -> None:
        for slot in list(self.slots.get(signature, [])):
            try:
                slot(*args[:_pythonQtArgumentCount(slot, len(args))])
            except Exception as exc:  # PythonQt prints it; the signal's other slots still run
                STATE.errorsInCallbacks.append(exc)

    def setText(self, text: str) -> None:
        self.text = text

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setMRMLScene(self, scene) -> None:
        pass

    def setRange(self, lo, hi) -> None:
        self.range = (lo, hi)

    def setValue(self, value) -> None:
        self.value = value

    def property(self, name: str):
        return self.properties.get(name)


class QComboBox(FakeWidget):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: List[tuple] = []
        self.currentIndex = -1

    def addItem(self, text, data=None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def clear(self) -> None:
        """QComboBox::clear: no items, current index -1 (currentIndexChanged(-1) when it had one)."""
        self.items = []
        self.setCurrentIndex(-1)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def currentText(self) -> str:
        return self.items[self.currentIndex][0] if 0 <= self.currentIndex < len(self.items) else ""

    def findData(self, data) -> int:
        return next((i for i, (_t, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None


class qMRMLNodeComboBox(FakeWidget):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class qMRMLSegmentSelectorWidget(FakeWidget):
    """qMRMLSegmentSelectorWidget.cxx: combo of segments (with a None item when noneEnabled)."""

    NONE = "None"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noneEnabled = bool(self.properties.get("noneEnabled", False))
        self._node = None
        self._tags: List[int] = []
        self.comboItems: List[str] = []
        self.comboIndex = -1
        self.currentID = ""

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is self._node:
            return
        if self._node is not None:
            for tag in self._tags:
                self._node.RemoveObserver(tag)
        self._node = node
        self._tags = []
        if node is not None:
            for event in (vtkMRMLSegmentationNode.SegmentAdded, vtkMRMLSegmentationNode.SegmentRemoved):
                self._tags.append(node.AddObserver(event, lambda *a: self.populateSegmentCombobox()))
        # The node combo box's currentNodeChanged reaches onCurrentNodeChanged (which repopulates the segments,
        # possibly emitting currentSegmentChanged) before it is forwarded as the widget's own signal: connection
        # order in qMRMLSegmentSelectorWidgetPrivate::init.
        self.populateSegmentCombobox()
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)

    def _setComboIndex(self, index: int, blocked: bool) -> None:
        if index == self.comboIndex:
            return
        self.comboIndex = index
        if not blocked:
            self._onCurrentSegmentChanged(index)

    def _onCurrentSegmentChanged(self, index: int) -> None:
        if self._node is None:
            return
        data = self.comboItems[index] if 0 <= index < len(self.comboItems) else ""
        self.currentID = "" if data == self.NONE else data
        self.emit("currentSegmentChanged(QString)", self.currentID)

    def populateSegmentCombobox(self) -> None:
        self.comboItems, self.comboIndex = [], -1
        if self._node is None or self._node.GetSegmentation().GetNumberOfSegments() == 0:
            return
        ids = self._node.GetSegmentation().GetSegmentIDs()
        self.comboItems = ([self.NONE] if self.noneEnabled else []) + ids
        if (self.noneEnabled and not self.currentID) or (self.currentID and self.currentID in ids):
            self._setCurrentSegmentID(self.currentID, blocked=True)
        else:
            self._setComboIndex(-1, blocked=True)
            self._setComboIndex(1 if self.noneEnabled else 0, blocked=False)

    def _setCurrentSegmentID(self, segmentID: str, blocked: bool) -> None:
        if not segmentID and self.noneEnabled:
            self._setComboIndex(0, blocked)
            return
        if segmentID in self.comboItems:
            self._setComboIndex(self.comboItems.index(segmentID), blocked)

    def setCurrentSegmentID(self, segmentID: str) -> None:
        self._setCurrentSegmentID(segmentID, blocked=False)

    def currentSegmentID(self) -> str:
        return self.currentID

    def userSelects(self, segmentID: str) -> None:
        """Test helper: the user picks a segment in the combo box."""
        self.setCurrentSegmentID(segmentID)


class ctkPathLineEdit(FakeWidget):
    """``currentPath`` only; a test that plays the user choosing a file also emits ``currentPathChanged``."""

    currentPath = ""

    def userChooses(self, path: str) -> None:
        """Test helper: the user picks a file (the widget then emits currentPathChanged, ctkPathLineEdit.h)."""
        self.currentPath = path
        self.emit("currentPathChanged(QString)", path)


class QLineEdit(FakeWidget):
    """``setText`` emits ``textChanged`` when the text changes, for the user and for code alike (qlineedit.cpp;
    ``textEdited`` would be the user-only signal)."""

    def setText(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self.emit("textChanged(QString)", text)


class QCheckBox(FakeWidget):
    """Setting ``checked`` (PythonQt maps the property to ``setChecked``) emits ``toggled`` on a change
    (QAbstractButton::setChecked)."""

    @property
    def checked(self) -> bool:
        return self.__dict__.get("_checked", False)

    @checked.setter
    def checked(self, value: bool) -> None:
        changed = bool(value) != self.__dict__.get("_checked", False)
        self.__dict__["_checked"] = bool(value)
        if changed:
            self.emit("toggled(bool)", bool(value))

    def setChecked(self, value: bool) -> None:
        self.checked = value


WIDGET_CLASSES = {"QComboBox": QComboBox, "qMRMLNodeComboBox": qMRMLNodeComboBox,
                  "qMRMLSegmentSelectorWidget": qMRMLSegmentSelectorWidget, "ctkPathLineEdit": ctkPathLineEdit,
                  "QLineEdit": QLineEdit, "QCheckBox": QCheckBox}


def _propertyValue(prop: ET.Element):
    child = list(prop)[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def loadUI(path: str):
    """The .ui file's widgets as fakes (root first); ``childWidgetVariables`` names them."""
    root = ET.parse(path).getroot()
    widgets = []
    for element in root.iter("widget"):
        properties = {p.get("name"): _propertyValue(p) for p in element.findall("property")}
        cls = WIDGET_CLASSES.get(element.get("class"), FakeWidget)
        widgets.append(cls(element.get("class"), element.get("name"), properties))
    top = widgets[0]
    top.children = widgets
    return top


def childWidgetVariables(top) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{w.name: w for w in top.children})


# ---------------------------------------------------------------------------------------------- parameter node
def parameterNodeWrapper(cls):
    """``@parameterNodeWrapper``: typed fields stored on a scripted module node; node fields by reference."""
    annotations = dict(cls.__annotations__)
    defaults = {name: getattr(cls, name, None) for name in annotations}

    class Wrapped:
        __name__ = cls.__name__

        def __init__(self, node) -> None:
            object.__setattr__(self, "_node", node)

        def __getattr__(self, name):
            if name not in annotations:
                raise AttributeError(name)
            value = self._node.values.get(name, defaults[name])
            if str(annotations[name]).startswith("vtkMRML"):
                return None if not value else self._node.scene.GetNodeByID(value) if self._node.scene else None
            return value

        def __setattr__(self, name, value):
            if name not in annotations:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            if str(annotations[name]).startswith("vtkMRML"):
                value = value.GetID() if value is not None else ""
            self._node.values[name] = value
            self._node.Modified()

        def connectGui(self, ui) -> int:
            """Bind widgets that name a parameter; their handlers come after the ones connected before."""
            bindings = []
            for widget in vars(ui).values():
                parameter = widget.properties.get("SlicerParameterName")
                if not parameter:
                    continue
                if isinstance(widget, qMRMLNodeComboBox):
                    widget.setCurrentNode(getattr(self, parameter))
                    slot = (lambda p: lambda node: setattr(self, p, node))(parameter)
                    signature = "currentNodeChanged(vtkMRMLNode*)"
                else:
                    widget.checked = bool(getattr(self, parameter))
                    slot = (lambda p: lambda checked: setattr(self, p, bool(checked)))(parameter)
                    signature = "toggled(bool)"
                widget.connect(signature, slot)
                bindings.append((widget, signature, slot))
            tag = id(bindings)
            _GUI_BINDINGS[tag] = bindings
            return tag

        def disconnectGui(self, tag) -> None:
            for widget, signature, slot in _GUI_BINDINGS.pop(tag, []):
                widget.disconnect(signature, slot)

    return Wrapped


_GUI_BINDINGS: Dict[int, list] = {}


# ---------------------------------------------------------------------------------------------- slicer.util
@contextlib.contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    """Copy of Base/Python/slicer/util.py: shows the error, then re-raises."""
    try:
        if waitCursor:
            app.setOverrideCursor(Qt.WaitCursor)
        yield
        if waitCursor:
            app.restoreOverrideCursor()
    except Exception as e:
        if waitCursor:
            app.restoreOverrideCursor()
        if show and not app.testingEnabled():
            errorDisplay(f"{message}\n\n{e}" if message is not None else str(e))
        raise


def errorDisplay(text, **kwargs) -> None:
    STATE.errorDialogs.append(str(text))


def confirmOkCancelDisplay(text, **kwargs) -> bool:
    STATE.confirmQuestions.append(str(text))
    return STATE.confirmAnswers.pop(0) if STATE.confirmAnswers else False


confirmYesNoDisplay = confirmOkCancelDisplay


def arrayFromVTKMatrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtkMatrixFromArray(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(np.asarray(array, float).ravel().tolist())
    return matrix


def arrayFromVolume(volumeNode) -> np.ndarray:
    return volumeNode.array


def arrayFromMarkupsControlPoints(markupsNode, world=False) -> np.ndarray:
    """Copy of Base/Python/slicer/util.py: every control point (whatever its position status) as an (N, 3)
    copy, world coordinates with ``world=True``."""
    narray = np.zeros([markupsNode.GetNumberOfControlPoints(), 3])
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if world:
            markupsNode.GetNthControlPointPositionWorld(index, narray[index, :])
        else:
            markupsNode.GetNthControlPointPosition(index, narray[index, :])
    return narray


def getNodesByClass(className, scene=None) -> List[Any]:
    """Base/Python/slicer/util.py: every node of the class or a subclass, in scene order."""
    scene = sys.modules["slicer"].mrmlScene if scene is None else scene
    return [node for node in scene.nodes.values() if node.IsA(className)]


def getFirstNodeByClassByName(className, name, scene=None):
    """Base/Python/slicer/util.py: ``scene.GetFirstNode(name, className)``."""
    scene = sys.modules["slicer"].mrmlScene if scene is None else scene
    return scene.GetFirstNode(name, className)


def getModuleLogic(module):
    """Base/Python/slicer/util.py returns the scripted module widget's ``logic`` and raises RuntimeError when
    there is none; here a test registers it in ``state().moduleLogics``."""
    logic = STATE.moduleLogics.get(module)
    if not logic:
        raise RuntimeError(f"Could not find module widget representation with name '{module}'")
    return logic


class RenderBlocker:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class VTKObservationMixin:
    """Slicer's mixin (Base/Python/slicer/util.py), reduced to what the module calls."""

    def __init__(self) -> None:
        self._observations: Dict[tuple, int] = {}

    def addObserver(self, obj, event, method, group="none", priority=0.0) -> None:
        key = (obj, event, method)
        if key not in self._observations:
            self._observations[key] = obj.AddObserver(event, method, priority)

    def removeObserver(self, obj, event, method) -> None:
        tag = self._observations.pop((obj, event, method), None)
        if tag is not None:
            obj.RemoveObserver(tag)

    def removeObservers(self, method=None) -> None:
        for (obj, _event, _method), tag in list(self._observations.items()):
            obj.RemoveObserver(tag)
        self._observations.clear()


# ---------------------------------------------------------------------------------------------- app and qt
class FakeInteractionNode:
    Place, ViewTransform = 1, 2

    def __init__(self) -> None:
        self.mode = self.ViewTransform
        self.persistence = 0

    def SetPlaceModePersistence(self, value) -> None:
        self.persistence = value

    def SetCurrentInteractionMode(self, mode) -> None:
        self.mode = mode

    def GetCurrentInteractionMode(self):
        return self.mode


class FakeSelectionNode:
    def __init__(self) -> None:
        self.activeID = ""
        self.className = ""

    def SetReferenceActivePlaceNodeClassName(self, name) -> None:
        self.className = name

    def SetActivePlaceNodeID(self, nodeID) -> None:
        self.activeID = nodeID

    def GetActivePlaceNodeID(self) -> str:
        return self.activeID


class FakeApp:
    def __init__(self) -> None:
        self.interaction = FakeInteractionNode()
        self.selection = FakeSelectionNode()

    def processEvents(self) -> None:
        STATE.processEventsCalls += 1

    def setOverrideCursor(self, cursor) -> None:
        STATE.overrideCursorDepth += 1

    def restoreOverrideCursor(self) -> None:
        STATE.overrideCursorDepth -= 1

    def testingEnabled(self) -> bool:
        return False

    def applicationLogic(self):
        return self

    def GetInteractionNode(self):
        return self.interaction

    def GetSelectionNode(self):
        return self.selection

    def openExtensionsManagerDialog(self) -> None:
        pass


app = FakeApp()


class Qt:
    WaitCursor = 3
    WindowModal = 1


class QSettings:
    """Values as Slicer's .ini file gives them back after a restart: a bool is stored as "true"/"false" and read
    back as that string (QSettingsPrivate::variantToString in Qt's qsettings.cpp; the reason
    ``slicer.util.toBool`` exists, Base/Python/slicer/util.py)."""

    def value(self, key, default=None):
        return STATE.settings.get(key, default)

    def setValue(self, key, value) -> None:
        STATE.settings[key] = ("true" if value else "false") if isinstance(value, bool) else value

    def contains(self, key) -> bool:
        return key in STATE.settings

    def remove(self, key) -> None:
        STATE.settings.pop(key, None)


class QProgressDialog:
    def __init__(self, text, cancel, lo, hi, parent=None) -> None:
        self.text, self.visible = text, False
        STATE.progressDialogs.append(self)

    def setCancelButton(self, button) -> None:
        pass

    def setWindowModality(self, modality) -> None:
        pass

    def setWindowTitle(self, title) -> None:
        pass

    def show(self) -> None:
        self.visible = True

    def close(self) -> None:
        self.visible = False

    def setLabelText(self, text) -> None:
        self.text = text

    def setRange(self, lo, hi) -> None:
        pass

    def setValue(self, value) -> None:
        pass


class QTimer:
    @staticmethod
    def singleShot(ms, callback) -> None:
        STATE.timers.append(callback)


class QShortcut(FakeWidget):
    def __init__(self, keys, parent=None) -> None:
        super().__init__("QShortcut", str(keys))

    def setParent(self, parent) -> None:
        pass


def QKeySequence(keys: str) -> str:
    return keys


# ---------------------------------------------------------------------------------------------- ScriptedLoadableModule
class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        pass

    def getParameterNode(self):
        scene = sys.modules["slicer"].mrmlScene
        node = scene.singletons.get("SAMVolSegmentParameters")
        if node is None or not scene.IsNodePresent(node):
            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SAMVolSegment")
            scene.singletons["SAMVolSegmentParameters"] = node
        return node


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self) -> None:
        pass

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=0) -> None:
        pass


# ---------------------------------------------------------------------------------------------- install
def install() -> types.ModuleType:
    """Put the ``slicer``/``qt`` stand-ins into ``sys.modules``; each call starts a new scene, app and state.

    The module objects are created once and then reused, because ``SAMVolSegment`` keeps the ``slicer`` it
    imported: resetting their contents reaches it, replacing them would not.
    """
    global STATE, app
    STATE = FakeState()
    app = FakeApp()
    vtkSlicerSegmentationsModuleLogic.refuseWrites = False
    existing = sys.modules.get("slicer")
    if existing is not None and getattr(existing, "isFake", False):
        existing.app, existing.mrmlScene, existing.fake = app, FakeScene(), STATE
        return existing
    this = sys.modules[__name__]
    slicer = types.ModuleType("slicer")
    slicer.isFake = True
    for name in ("vtkMRMLNode", "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLMarkupsNode",
                 "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode", "vtkMRMLSegmentationNode",
                 "vtkMRMLScriptedModuleNode", "vtkMRMLSegmentEditorNode", "vtkOrientedImageData",
                 "vtkMRMLTransformNode", "vtkMRMLLinearTransformNode",
                 "vtkSegmentationConverter", "vtkSlicerSegmentationsModuleLogic", "vtkOrientedImageDataResample"):
        setattr(slicer, name, getattr(this, name))
    slicer.app, slicer.mrmlScene, slicer.fake = app, FakeScene(), STATE
    util = types.ModuleType("slicer.util")
    for name in ("tryWithErrorDisplay", "errorDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay",
                 "arrayFromVTKMatrix", "vtkMatrixFromArray", "arrayFromVolume", "RenderBlocker",
                 "VTKObservationMixin", "loadUI", "childWidgetVariables", "arrayFromMarkupsControlPoints",
                 "getNodesByClass", "getFirstNodeByClassByName", "getModuleLogic"):
        setattr(util, name, getattr(this, name))
    util.mainWindow = lambda: None
    slicer.util = util
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    slicer.i18n = i18n
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    slicer.parameterNodeWrapper = wrapper
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, getattr(this, name))
    slicer.ScriptedLoadableModule = scripted
    qt = types.ModuleType("qt")
    for name in ("Qt", "QSettings", "QProgressDialog", "QTimer", "QShortcut", "QKeySequence"):
        setattr(qt, name, getattr(this, name))
    sys.modules.update({"slicer": slicer, "slicer.util": util, "slicer.i18n": i18n,
                        "slicer.parameterNodeWrapper": wrapper, "slicer.ScriptedLoadableModule": scripted, "qt": qt})
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return slicer


def state() -> FakeState:
    return STATE


# ---------------------------------------------------------------------------------------------- user gestures
def placePoint(node: vtkMRMLMarkupsNode, positionWorld) -> int:
    """A click in a view in place mode (vtkSlicerMarkupsWidget::PlacePoint): preview point, then defined."""
    index = node.AddControlPoint(positionWorld, status=node.PositionPreview)
    node.SetNthControlPointPositionWorld(index, positionWorld, node.PositionDefined)
    return index


def placeROICorners(roi: vtkMRMLMarkupsROINode, cornerA, cornerB) -> None:
    """Two clicks placing a box ROI, as the ROI widget does: one defined control point per click."""
    placePoint(roi, cornerA)
    placePoint(roi, cornerB)
