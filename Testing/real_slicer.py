# ruff: noqa: N802 - Slicer's camelCase
"""The SAMVolSegment module on Slicer's own core: the ``slicer-core`` wheel (Kitware, Slicer's non-Qt libraries:
MRML scene and nodes, segmentations, markups, transforms, storage nodes, module logics, ``slicer/util.py``), and
small stand-ins (``slicer_fake``) only for what needs PythonQt.

``install()`` sets up, as Slicer's application does at start-up (Base/QTCore/qSlicerCoreApplication.cxx
``setMRMLScene``; the module logics as ``trame_slicer.core.SlicerApp`` registers them):

* ``slicer.mrmlScene``: a new real ``vtkMRMLScene`` (with the default crosshair, colour nodes, slice presets);
* a cache and data I/O manager on the scene (``.mrb`` reading needs them);
* a real ``vtkSlicerApplicationLogic`` on it (interaction and selection singletons), with the Volumes,
  Segmentations, Markups, Colors, Subject Hierarchy and Transforms logics registered (``SetModuleLogic``),
  reachable as ``slicer.modules.<name>.logic()`` and ``slicer.app.moduleManager().module(name).logic()``;
* ``slicer.app`` (``slicer_fake.FakeApp``: its GUI side recorded), a ``qt`` module of stand-ins, dialogs,
  ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n``; the Qt dialog functions of
  the real ``slicer.util`` (``errorDisplay``, ``confirmOkCancelDisplay``, ``confirmYesNoDisplay``, ``loadUI``,
  ``childWidgetVariables``, ``mainWindow``) are replaced by the stand-ins; the rest of ``slicer.util`` is real.

After it ``import SAMVolSegment`` works and ``SAMVolSegment.SAMVolSegmentLogic()`` runs on real nodes, also from a
plain script::

    import sys; sys.path.insert(0, "Testing")
    import real_slicer
    slicer = real_slicer.install()
    import SAMVolSegment
    logic = SAMVolSegment.SAMVolSegmentLogic()

Each ``install()`` starts a new scene, application logic and stand-in state; the module objects are kept
(``SAMVolSegment`` keeps the ``slicer`` it imported). Exceptions that VTK swallows in Python observers
(vtkPythonCommand prints them through ``sys.excepthook``) are recorded in ``state().errorsInCallbacks``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import types
from typing import Optional

import numpy as np
import slicer_fake

MODULE_DIR = slicer_fake.MODULE_DIR


def available() -> bool:
    """True when the ``slicer-core`` wheel is installed (Python >= 3.10)."""
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "vtkMRMLScene")


_CACHE_DIR = tempfile.TemporaryDirectory(prefix="real_slicer_cache_")


def _newScene():
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()  # qSlicerCoreApplication::setMRMLScene adds the default one
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    # qSlicerCoreApplication gives the scene a cache and a data I/O manager (ReadFromMRB unpacks through them).
    cacheManager = slicer.vtkCacheManager()
    cacheManager.SetRemoteCacheDirectory(_CACHE_DIR.name)
    dataIOManager = slicer.vtkDataIOManager()
    dataIOManager.SetCacheManager(cacheManager)
    scene.SetCacheManager(cacheManager)
    scene.SetDataIOManager(dataIOManager)
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.GetColorLogic().SetMRMLScene(scene)
    appLogic.GetColorLogic().AddDefaultColorNodes()
    appLogic.SetSliceLogics(vtk.vtkCollection())
    appLogic.SetViewLogics(vtk.vtkCollection())
    colors = appLogic.GetColorLogic()  # registered as the Colors module's logic, which the Volumes logic asks for
    appLogic.SetModuleLogic("Colors", colors)
    logics = {"Colors": colors}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("Transforms", slicer.vtkSlicerTransformLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(name, logic)
        logics[name] = logic
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    return scene, appLogic, logics


_ORIGINAL_EXCEPTHOOK = sys.excepthook


def _recordingExcepthook(kind, value, tb) -> None:
    slicer_fake.state().errorsInCallbacks.append(value)
    _ORIGINAL_EXCEPTHOOK(kind, value, tb)


def _qtModule() -> types.ModuleType:
    qt = sys.modules.get("qt")
    if qt is not None and getattr(qt, "isStandIn", False):
        return qt
    qt = types.ModuleType("qt")
    qt.isStandIn = True
    for name in ("Qt", "QSettings", "QProgressDialog", "QTimer", "QShortcut", "QKeySequence"):
        setattr(qt, name, getattr(slicer_fake, name))
    return qt


def install():
    """Real scene and logics, stand-ins for the Qt parts; returns the ``slicer`` package. See the module doc."""
    import slicer
    import slicer.util

    if not hasattr(slicer, "vtkMRMLScene"):
        raise ImportError("slicer-core is not installed (pip install slicer-core; Python >= 3.10)")
    state = slicer_fake.reset()
    scene, appLogic, logics = _newScene()
    app = slicer_fake.FakeApp(appLogic, scene)
    for name, logic in logics.items():
        app.moduleManager().modules[name] = slicer_fake.qSlicerCoreModule(name, logic)
    app.moduleManager().modules["SAMVolSegment"] = slicer_fake.qSlicerScriptedLoadableModule("SAMVolSegment")
    slicer.app, slicer.mrmlScene, slicer.fake = app, scene, state
    slicer.modules = types.SimpleNamespace(**{name.lower(): module
                                              for name, module in app.moduleManager().modules.items()})
    slicer.qSlicerScriptedLoadableModule = slicer_fake.qSlicerScriptedLoadableModule
    slicer.qSlicerScriptedLoadableModuleWidget = slicer_fake.qSlicerScriptedLoadableModuleWidget

    util = slicer.util
    for name in ("errorDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay", "loadUI", "childWidgetVariables"):
        setattr(util, name, getattr(slicer_fake, name))
        setattr(slicer, name, getattr(slicer_fake, name))
    util.mainWindow = lambda: None
    i18n = types.ModuleType("slicer.i18n")  # Base/Python/slicer/i18n.py translates through Qt
    i18n.tr = lambda text: text
    i18n.translate = slicer_fake.translate
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = slicer_fake.parameterNodeWrapper
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, getattr(slicer_fake, name))
    slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule = i18n, wrapper, scripted
    sys.modules.update({"slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper,
                        "slicer.ScriptedLoadableModule": scripted, "qt": _qtModule()})
    sys.excepthook = _recordingExcepthook
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return slicer


def state() -> slicer_fake.FakeState:
    return slicer_fake.state()


def registerWidget(widget) -> None:
    """What Slicer does when the module panel is created: ``slicer.util.getModuleLogic("SAMVolSegment")`` then
    returns the widget's ``logic`` (Base/Python/slicer/util.py)."""
    import slicer

    slicer.app.moduleManager().modules["SAMVolSegment"].widget = widget


# ---------------------------------------------------------------------------------------------- data on real nodes
def showWidget(module, sessionFactory, widgets: list):
    """The module's widget set up and entered (as Slicer does when the module is shown), its Logic's sessions
    from ``sessionFactory``; appended to ``widgets``, which the test's teardown cleans up."""
    widget = module.SAMVolSegmentWidget()
    widget.setup()
    widget.enter()
    widget.logic.sessionFactory = sessionFactory
    widgets.append(widget)
    return widget


def addVolume(arrayKji: np.ndarray, ijkToRas: Optional[np.ndarray] = None, name: str = "ct"):
    """A scalar volume with these voxels ((k, j, i)) and IJK -> RAS matrix (spacing and directions included)."""
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    setVolume(node, arrayKji, ijkToRas)
    node.CreateDefaultDisplayNodes()
    return node


def setVolume(node, arrayKji: np.ndarray, ijkToRas: Optional[np.ndarray] = None) -> None:
    """Replace a volume's voxels (any shape) and optionally its IJK -> RAS matrix."""
    import slicer

    if ijkToRas is not None:
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijkToRas, float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(arrayKji))


def addLinearTransform(matrix: np.ndarray, name: str = "transform"):
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(matrix, float)))
    return node


def nodeToWorld(node) -> np.ndarray:
    """4x4 node -> world matrix of a node's (linear) parent transforms, read from MRML."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    transformNode = node.GetParentTransformNode()
    if transformNode is not None:
        transformNode.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ijkToWorld(volumeNode) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return nodeToWorld(volumeNode) @ slicer.util.arrayFromVTKMatrix(matrix)


def labelmapArray(segmentationNode, segmentID: str):
    """(bool (k, j, i) array, IJK -> world matrix) of a segment as stored: its (possibly shared) labelmap layer,
    voxels equal to its label value, the layer's image-to-world composed with the segmentation's transforms."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
    if labelmap is None:
        return np.zeros((0, 0, 0), bool), np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    extent = labelmap.GetExtent()
    toWorld = nodeToWorld(segmentationNode) @ slicer.util.arrayFromVTKMatrix(matrix)
    shift = np.eye(4)
    shift[:3, 3] = extent[0::2]
    if extent[1] < extent[0]:
        return np.zeros((0, 0, 0), bool), toWorld @ shift
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1])
    label = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
    return values == label, toWorld @ shift


def segmentArray(segmentationNode, segmentID: str, volumeNode) -> np.ndarray:
    """A segment's voxels at ``volumeNode``'s voxel centres (bool (k, j, i)), computed here independently of the
    module: every voxel centre goes to world (the volume's IJK -> RAS and parent transforms) and into the
    segment's stored labelmap (nearest voxel), so a segment written at the wrong place or doubly transformed
    shows."""
    import slicer

    shape = slicer.util.arrayFromVolume(volumeNode).shape
    stored, labelToWorld = labelmapArray(segmentationNode, segmentID)
    out = np.zeros(shape, bool)
    if not stored.size:
        return out
    k, j, i = np.indices(shape).reshape(3, -1)
    world = ijkToWorld(volumeNode) @ np.stack([i, j, k, np.ones_like(i)]).astype(float)
    index = np.rint((np.linalg.inv(labelToWorld) @ world)[:3]).astype(int)  # (i, j, k) in the stored labelmap
    inside = np.all((index >= 0) & (index < np.array(stored.shape[::-1])[:, None]), axis=0)
    flat = out.reshape(-1)
    flat[inside] = stored[index[2, inside], index[1, inside], index[0, inside]]
    return out


def writeSegment(segmentationNode, segmentID: str, maskKji: np.ndarray, volumeNode) -> None:
    """Put a (k, j, i) mask on ``volumeNode``'s grid into a segment, transform-safe: the labelmap's image-to-world
    is the volume's IJK -> segmentation-local matrix (both nodes' parent transforms included), written with
    ``SetBinaryLabelmapToSegment`` (vtkSlicerSegmentationsModuleLogic.h), as the module writes."""
    import slicer
    from SAMVolSegmentSlicerLib import segment_io, vtk_numpy

    image = vtk_numpy.image_from_array(np.asarray(maskKji, np.uint8), (0, 0, 0), slicer.vtkOrientedImageData())
    local = np.linalg.inv(segment_io.nodeToWorldMatrix(segmentationNode)) @ segment_io.volumeIjkToWorld(volumeNode)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(local))
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentationNode, segmentID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert ok, "SetBinaryLabelmapToSegment refused the mask"


def selectExistingCube(widget, volumeNode, name: str = "liver"):
    """A segmentation holding one segment ``name``: a cube 22 voxels wide 4 voxels in from the volume's corner,
    selected in ``widget`` as the user picks an existing segment to edit. Returns (segmentation, segmentID, cube
    (k, j, i) uint8)."""
    import slicer

    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentID = segmentation.GetSegmentation().AddEmptySegment("", name)
    shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    cube = np.zeros(shape, np.uint8)
    cube[4:26, 4:26, 4:26] = 1
    writeSegment(segmentation, segmentID, cube, volumeNode)
    widget.ui.segmentSelector.setCurrentNode(segmentation)
    widget.ui.segmentSelector.userSelects(segmentID)
    return segmentation, segmentID, cube


# ---------------------------------------------------------------------------------------------- user gestures
def placePoint(node, positionWorld) -> int:
    """A click in a view in place mode: the markups widget ends with a defined control point, which fires
    ``PointAddedEvent`` and ``PointPositionDefinedEvent`` with the point's index as call data
    (vtkMRMLMarkupsNode.cxx ``AddControlPoint``; vtkSlicerMarkupsWidget.cxx ``PlacePoint``). Except for a box ROI's
    second corner: the ROI deletes the added point (its corners become one centre point) before
    ``AddControlPoint`` reads the point's status for ``PointPositionDefinedEvent``, so that event comes only while
    the freed memory is unchanged (test_slicer_module_real.py runs the box tests with it poisoned)."""
    import vtk

    return node.AddControlPointWorld(vtk.vtkVector3d(*[float(v) for v in positionWorld]), "")


def placeROICorners(roi, cornerA, cornerB) -> None:
    """Two clicks placing a box ROI (vtkMRMLMarkupsROINode: one defined control point per click; the size comes
    from ``UpdateBoxROIFromControlPoints``)."""
    placePoint(roi, cornerA)
    placePoint(roi, cornerB)


def drawCurve(node, pointsWorld, finish: bool = True) -> None:
    """A scribble or lasso drawn in a view with the module's tool active (place mode, the curve the active place
    node): one click per point (``placePoint``: ``vtkSlicerMarkupsWidget::PlacePoint`` defines the point
    previewed under the mouse), then a right-click or double-click, which ends the placement:
    ``WidgetEventStopPlace`` calls ``vtkMRMLInteractionNode::SwitchToViewTransformMode`` (vtkSlicerMarkupsWidget.cxx
    ``ProcessInteractionEvent``), whose mode change fires ``EndPlacementEvent`` (vtkMRMLInteractionNode.cxx
    ``SetCurrentInteractionMode``)."""
    for point in pointsWorld:
        placePoint(node, point)
    if finish:
        finishPlacement()


def finishPlacement() -> None:
    """A right-click or double-click in place mode (see ``drawCurve``)."""
    import slicer

    slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()


@contextlib.contextmanager
def refusingWrites():
    """Slicer refuses every labelmap write meanwhile (``SetBinaryLabelmapToSegment`` returns false, as it does for
    a segmentation whose source is not a labelmap): the real logic class is swapped for a subclass."""
    import slicer

    real = slicer.vtkSlicerSegmentationsModuleLogic

    class Refusing(real):
        @staticmethod
        def SetBinaryLabelmapToSegment(*args):
            return False

    slicer.vtkSlicerSegmentationsModuleLogic = Refusing
    try:
        yield
    finally:
        slicer.vtkSlicerSegmentationsModuleLogic = real


def segmentEditorNode():
    """The Segment Editor's parameter node as its module creates it: the singleton ``vtkMRMLSegmentEditorNode``
    tagged "SegmentEditor" (Modules/Scripted/SegmentEditor/SegmentEditor.py)."""
    import slicer

    node = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag("SegmentEditor")
        node = slicer.mrmlScene.AddNode(node)
    return node


def env_slicer():
    """The ``slicer`` package (after ``install()``)."""
    import slicer

    return slicer


def addThinPlateSplineTransform(name: str = "warp"):
    """A non-linear transform node (a thin-plate spline that moves one landmark), as a registration makes."""
    import slicer
    import vtk

    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, moved in (([0, 0, 0], [0, 0, 0]), ([100, 0, 0], [100, 0, 0]), ([0, 100, 0], [0, 100, 0]),
                         ([0, 0, 100], [0, 0, 100]), ([50, 50, 50], [55, 50, 50])):
        source.InsertNextPoint(point)
        target.InsertNextPoint(moved)
    spline = vtk.vtkThinPlateSplineTransform()
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", name)
    node.SetAndObserveTransformToParent(spline)
    return node


def saveScene(path):
    """Save the scene as Slicer does (File > Save Data): every storable node's data next to the ``.mrml``
    (``.nrrd``, ``.seg.nrrd``, ``.mrk.json`` from each node's default storage node) or all in one ``.mrb``
    (``vtkMRMLScene::WriteToMRB``). ``path``: a folder (the scene goes to ``scene.mrml`` in it) or an ``.mrb``
    file; returns the file to load."""
    import os

    import slicer

    scene = slicer.mrmlScene
    path = str(path)
    if path.endswith(".mrb"):
        assert scene.WriteToMRB(path), "WriteToMRB failed"
        return path
    os.makedirs(path, exist_ok=True)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if node.GetHideFromEditors() and not node.IsA("vtkMRMLMarkupsNode"):
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        storage = node.GetStorageNode()
        fileName = os.path.join(path, f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}")
        storage.SetFileName(fileName)
        assert storage.WriteData(node), f"could not write {node.GetName()}"
    mrml = os.path.join(path, "scene.mrml")
    scene.SetRootDirectory(path)
    scene.SetURL(mrml)
    assert scene.Commit(), "could not write the .mrml"
    return mrml


def loadScene(path) -> None:
    """Load a saved scene into the current one (File > Add Data of a scene: ``vtkMRMLScene::Import``, or
    ``ReadFromMRB`` for a bundle)."""
    import slicer

    scene = slicer.mrmlScene
    path = str(path)
    if path.endswith(".mrb"):
        assert scene.ReadFromMRB(path, False), "ReadFromMRB failed"
        return
    scene.SetURL(path)
    assert scene.Import(), "Import failed"
