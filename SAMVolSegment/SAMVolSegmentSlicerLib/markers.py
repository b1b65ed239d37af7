"""The markups that show the prompts: positive/negative point lists, the box ROI, the scribble and lasso curves
being drawn (all of the parameter node) and one locked curve per finished scribble or lasso.

MRML glue (imports ``slicer``), so it follows Slicer's camelCase. A marker is named ``"<nodeID>:<pointID>"``
(a control point), ``"<nodeID>"`` (the box ROI, or a stroke's own curve node); undo removes it by that name and
redo re-creates it.

Scribbles and lassos are drawn in the parameter node's ``scribbleCurve`` / ``lassoCurve`` (``strokes.py``). When a
placement ends, the drawn line becomes a **stroke marker**: a new locked curve of the stroke's class through the
points sent (linear, so it shows exactly the line the model got), coloured by polarity like the point lists and
tagged with :data:`STROKE_MARKER_ATTRIBUTE`; the drawing curve is emptied for the next stroke. Undo deletes the
marker node, redo creates it again (with a new ID, which the record learns, as for points). The polarity (the
include/exclude choice) is one for every tool: A and S set it, T flips it, D and L draw with it
(``positivePolarity`` of the parameter node).

Markers show the prompts of the steps in the history, which are the engine's clicks with two exceptions:

* a proposal (``Prompt.kind == "proposal"``) is one positive click the engine placed itself at the proposal's
  deepest point; it is shown as a locked positive point labelled with the class name. The proposal replaces
  the mask and every prompt before it (the engine keeps them only for undo), so their markers are hidden while
  it stands (``SetNthControlPointVisibility``; the box ROI's display node) and shown again when it is undone;
* the clicks the engine adds when a mask continues into a neighbouring region are not shown (they belong to
  the step of the user's click, and go with it).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import slicer
import vtk

from .segment_io import boxFromROI
from .strokes import CURVE_CLASSES, STROKE_KINDS, curvePointsWorld
from .undo_stack import Prompt

#: Marker colour of each polarity (points, strokes and the curve being drawn).
POLARITY_COLORS = {True: (0.2, 0.9, 0.2), False: (0.95, 0.25, 0.2)}
_POINT_LISTS = (("positivePoints", "SAMVolSegment positive", POLARITY_COLORS[True]),
                ("negativePoints", "SAMVolSegment negative", POLARITY_COLORS[False]))
#: Parameter node attribute and name of each tool's drawing curve.
_DRAWING_CURVES = {"scribble": ("scribbleCurve", "SAMVolSegment scribble"),
                   "lasso": ("lassoCurve", "SAMVolSegment lasso")}
#: Node attribute of a finished stroke's marker curve (its value: ``"scribble"`` or ``"lasso"``); saved with the scene.
STROKE_MARKER_ATTRIBUTE = "SAMVolSegment.strokeMarker"

#: Node attribute set on a point list while code (any Logic, any reload of this module) adds a control point
#: to it: ``AddControlPoint*`` fires ``PointPositionDefinedEvent`` (vtkMRMLMarkupsNode.cxx) as a user's click does,
#: and every panel observing the list must tell the two apart. Kept on the node, so a second Logic (a console
#: script, Reload and Test) is recognised too; removed again right after the point is added.
ADDING_ATTRIBUTE = "SAMVolSegment.addingPoint"


@contextlib.contextmanager
def keepingActivePlaceNode() -> Iterator[None]:
    """Keep the active place node while a marker node is added: the Markups logic makes every markups node added
    to the scene the active place node (vtkSlicerMarkupsLogic.cxx ``OnMRMLSceneNodeAdded`` -> ``SetActiveList``),
    so a stroke's marker, made when a stroke ends or is redone, would otherwise take the next clicks of the tool
    in use (e.g. persistent point placement)."""
    selectionNode = slicer.app.applicationLogic().GetSelectionNode()
    className, activeID = selectionNode.GetActivePlaceNodeClassName(), selectionNode.GetActivePlaceNodeID()
    try:
        yield
    finally:
        if className:
            selectionNode.SetReferenceActivePlaceNodeClassName(className)
        selectionNode.SetActivePlaceNodeID(activeID)


def isProgrammaticPoint(markupsNode) -> bool:
    """True while code adds a control point to ``markupsNode`` (see :data:`ADDING_ATTRIBUTE`)."""
    return markupsNode.GetAttribute(ADDING_ATTRIBUTE) is not None


class BoxPlacement:
    """When the panel sends the box ROI: once per placement, when its second corner is placed.

    The ROI is observed for ``PointPositionDefinedEvent`` and ``PointAddedEvent``. When code adds the second
    corner (``AddControlPoint*``: a script, the console, the tests), Slicer fires ``PointPositionDefinedEvent``
    only by chance: the ROI turns its two corners into one centre point inside ``AddControlPoint``, deleting the
    added point, and ``AddControlPoint`` then reads that point's position status (vtkMRMLMarkupsNode.cxx
    ``AddControlPoint``; vtkMRMLMarkupsROINode.cxx ``UpdateControlPointsFromBoxROI``), so whether the event
    comes depends on whether the freed memory was reused meanwhile, i.e. on what ran before. ``PointAddedEvent``
    is fired unconditionally, after the corners became one. A click in a view defines a preview point instead,
    which fires ``PointPositionDefinedEvent`` only. A placement fires one or both; it is sent once, and dragging
    the placed box's handles (neither event) sends nothing.
    """

    def __init__(self) -> None:
        #: True once the ROI was seen without its box (a corner missing or only previewed) since the last send.
        self.armed = True

    def observations(self, roiNode, method: Callable) -> List[tuple]:
        """(node, event, method) to observe; a box the ROI already has (a loaded scene) is not sent."""
        self.armed = boxFromROI(roiNode) is None
        return [(roiNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, method),
                (roiNode, slicer.vtkMRMLMarkupsNode.PointAddedEvent, method)]

    def completedBy(self, roiNode) -> bool:
        """An observed event of the ROI: True when it completes a new placement (send its box now)."""
        if boxFromROI(roiNode) is None:
            self.armed = True
            return False
        completed, self.armed = self.armed, False
        return completed


class PromptMarkers:
    """Creates, places, removes and re-creates prompt markers for the parameter node ``getParameterNode()``."""

    def __init__(self, getParameterNode: Callable) -> None:
        self._getParameterNode = getParameterNode
        #: True while this class adds a control point itself: ``AddControlPoint`` fires
        #: ``PointPositionDefinedEvent`` (vtkMRMLMarkupsNode.cxx) and that is not a user's click.
        self.adding = False

    def ensureNodes(self) -> None:
        """Point lists, the box ROI and the scribble and lasso drawing curves, created when missing (or deleted)."""
        pn = self._getParameterNode()
        for attribute, name, color in _POINT_LISTS:
            if getattr(pn, attribute) is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(color)
                node.GetDisplayNode().SetPointLabelsVisibility(False)
                setattr(pn, attribute, node)
        if pn.boxROI is None:
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "SAMVolSegment box")
            roi.CreateDefaultDisplayNodes()
            pn.boxROI = roi
        for kind, (attribute, name) in _DRAWING_CURVES.items():
            if getattr(pn, attribute) is None:
                setattr(pn, attribute, self._newCurve(kind, name, pn.positivePolarity))

    @staticmethod
    def _newCurve(kind: str, name: str, positive: bool):
        """A curve of the tool's class coloured by polarity, without point or length labels."""
        node = slicer.mrmlScene.AddNewNodeByClass(CURVE_CLASSES[kind], name)
        node.CreateDefaultDisplayNodes()
        displayNode = node.GetDisplayNode()
        displayNode.SetSelectedColor(POLARITY_COLORS[bool(positive)])
        displayNode.SetPointLabelsVisibility(False)
        displayNode.SetPropertiesLabelVisibility(False)
        return node

    def _node(self, kind: str):
        pn = self._getParameterNode()
        return {"positive": pn.positivePoints, "negative": pn.negativePoints, "box": pn.boxROI,
                "scribble": pn.scribbleCurve, "lasso": pn.lassoCurve}[kind]

    @property
    def positive(self) -> bool:
        """The polarity the scribble and lasso tools draw with (A and S set it, T flips it)."""
        return bool(self._getParameterNode().positivePolarity)

    def setPolarity(self, positive: bool) -> None:
        """Set the include/exclude choice; the curves being drawn take its colour at once."""
        pn = self._getParameterNode()
        pn.positivePolarity = bool(positive)
        for kind in STROKE_KINDS:
            node = self._node(kind)
            if node is not None and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetSelectedColor(POLARITY_COLORS[bool(positive)])

    def startPlacing(self, kind: str) -> None:
        """Enter place mode: ``"positive"``/``"negative"`` points (persistent, setting the polarity), a new
        ``"box"`` (two clicks), or a new ``"scribble"``/``"lasso"`` of the current polarity (clicks along it; a
        right-click or double-click ends it, see ``strokes.py``). A stroke being drawn and not finished is dropped."""
        self.ensureNodes()
        node = self._node(kind)
        for stroke in STROKE_KINDS:
            self._node(stroke).RemoveAllControlPoints()
        if kind in ("positive", "negative"):
            self.setPolarity(kind == "positive")
        elif kind in STROKE_KINDS:
            self.setPolarity(self.positive)  # the drawing curve takes the polarity's colour
        if kind == "box":
            node.RemoveAllControlPoints()
            # Once its two corners are placed, a box ROI keeps one centre point and allows no more
            # (vtkMRMLMarkupsROINode.cxx: Required/MaximumNumberOfControlPoints become 1), so a second box could
            # not get its second corner; setting the ROI type again restores the two-corner placement.
            roiType = node.GetROIType()
            node.SetROIType(node.ROITypeBoundingBox if roiType == node.ROITypeBox else node.ROITypeBox)
            node.SetROIType(roiType)
            self._setBoxVisible(True)  # a proposal may have hidden the previous box
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(0 if kind in ("box", *STROKE_KINDS) else 1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def placingKind(self) -> str:
        """``"positive"``, ``"negative"``, ``"box"``, ``"scribble"``, ``"lasso"`` or ``""``: what a click in a view
        places now."""
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() != interactionNode.Place:
            return ""
        return self._activeKind()

    def _activeKind(self) -> str:
        activeID = slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID()
        for kind in ("positive", "negative", "box", *STROKE_KINDS):
            node = self._node(kind)
            if node is not None and node.GetID() == activeID:
                return kind
        return ""

    def togglePolarity(self) -> str:
        """Flip the polarity (T): points switch to the other list; a scribble or lasso being drawn keeps its
        points and takes the other polarity. Returns the kind now placed."""
        kind = self.placingKind()
        if kind in STROKE_KINDS:
            self.setPolarity(not self.positive)
            return kind
        kind = "negative" if kind == "positive" else "positive"
        self.startPlacing(kind)
        return kind

    def endedStroke(self):
        """The scribble or lasso curve whose placement just ended (``EndPlacementEvent``: it is still the active
        place node), when it holds points; else None."""
        kind = self._activeKind()
        node = self._node(kind) if kind in STROKE_KINDS else None
        return node if node is not None and node.GetNumberOfControlPoints() > 0 else None

    def takeStroke(self, curveNode) -> Tuple[str, np.ndarray]:
        """``(kind, points)`` of a finished stroke in a drawing curve (``strokes.curvePointsWorld``), which is
        emptied for the next one; ``("", no points)`` for any other node."""
        kind = next((kind for kind in STROKE_KINDS if curveNode is not None and curveNode is self._node(kind)), "")
        if not kind:
            return "", np.zeros((0, 3))
        points = curvePointsWorld(curveNode)
        curveNode.RemoveAllControlPoints()
        return kind, points

    def showStroke(self, kind: str, positive: bool, pointsWorld) -> str:
        """A finished stroke's marker: a new locked curve through ``pointsWorld`` (see the module doc); its name."""
        points = np.asarray(pointsWorld, dtype=float).reshape(-1, 3)
        if kind == "lasso" and len(points) > 3 and np.array_equal(points[0], points[-1]):
            points = points[:-1]  # the closed curve closes itself
        with keepingActivePlaceNode():
            node = self._newCurve(kind, f"SAMVolSegment {kind} {'+' if positive else '-'}", positive)
        node.SetAttribute(STROKE_MARKER_ATTRIBUTE, kind)
        node.GetDisplayNode().SetGlyphType(node.GetDisplayNode().Vertex2D)  # the line, not hundreds of glyphs
        node.SetCurveTypeToLinear()
        slicer.util.updateMarkupsControlPointsFromArray(node, points, world=True)
        node.SetLocked(True)
        return node.GetID()

    @staticmethod
    def _strokeMarkers() -> list:
        scene = slicer.mrmlScene
        nodes = [scene.GetNthNodeByClass(index, "vtkMRMLMarkupsCurveNode")
                 for index in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsCurveNode"))]
        return [node for node in nodes if node.GetAttribute(STROKE_MARKER_ATTRIBUTE) is not None]

    def remove(self, markerID: str) -> None:
        """Delete a point's or a stroke's marker or clear the box ROI; a marker already gone is ignored."""
        if not markerID:
            return
        nodeID, _sep, pointID = markerID.partition(":")
        node = slicer.mrmlScene.GetNodeByID(nodeID)
        if node is None:
            return
        if pointID:
            index = node.GetNthControlPointIndexByID(pointID)
            if index >= 0:
                node.RemoveNthControlPoint(index)
        elif node.GetAttribute(STROKE_MARKER_ATTRIBUTE) is not None:
            slicer.mrmlScene.RemoveNode(node)
        else:
            node.RemoveAllControlPoints()

    def restore(self, prompt: Prompt) -> Prompt:
        """Show a redone prompt again; returns it with the names of its new markers.

        A point gets a new control point, whose ID Slicer generates (``GenerateUniqueControlPointID``), so the
        returned prompt names it for the next undo. A proposal (also when it is first made) hides every marker
        shown now (the prompts it replaces) and shows its own click.
        """
        if prompt.kind == "proposal":
            hidden = self.hideAll()
            return self._addPoint(replace(prompt, marker_id="", hidden_markers=hidden))
        if prompt.kind in STROKE_KINDS and prompt.marker_id:
            return replace(prompt, marker_id=self.showStroke(prompt.kind, prompt.positive, prompt.position_ras))
        if prompt.kind != "point" or not prompt.marker_id:
            return prompt
        return self._addPoint(prompt)

    def withdraw(self, prompt: Prompt) -> None:
        """Undo of a prompt: remove its marker and show again the markers it hid (a proposal's)."""
        self.remove(prompt.marker_id)
        self.show(prompt.hidden_markers)

    def _addPoint(self, prompt: Prompt) -> Prompt:
        """A locked control point at the prompt's position (labelled with ``prompt.label`` when it has one)."""
        if len(prompt.position_ras) != 3:
            return replace(prompt, marker_id="")
        self.ensureNodes()
        node = self._node("positive" if prompt.positive else "negative")
        self.adding = True
        node.SetAttribute(ADDING_ATTRIBUTE, "1")
        try:
            # An empty label gets Slicer's automatic one (vtkMRMLMarkupsNode::AddControlPoint, autoLabel);
            # AddControlPointWorld fires PointPositionDefinedEvent (AddControlPoint), hence ``adding``.
            index = node.AddControlPointWorld(vtk.vtkVector3d(*prompt.position_ras), prompt.label)
        finally:
            self.adding = False
            node.RemoveAttribute(ADDING_ATTRIBUTE)
        node.SetNthControlPointLocked(index, True)
        return replace(prompt, marker_id=f"{node.GetID()}:{node.GetNthControlPointID(index)}")

    def hideAll(self) -> Tuple[str, ...]:
        """Hide every marker shown now (points, strokes and the box); returns their names for :meth:`show`."""
        hidden: List[str] = []
        for kind in ("positive", "negative"):
            node = self._node(kind)
            if node is None:
                continue
            for index in range(node.GetNumberOfControlPoints()):
                if node.GetNthControlPointVisibility(index):
                    node.SetNthControlPointVisibility(index, False)
                    hidden.append(f"{node.GetID()}:{node.GetNthControlPointID(index)}")
        box = self._node("box")
        if box is not None and box.GetNumberOfControlPoints() > 0 and self._boxVisible():
            self._setBoxVisible(False)
            hidden.append(box.GetID())
        for node in self._strokeMarkers():
            if node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility():
                node.GetDisplayNode().SetVisibility(False)
                hidden.append(node.GetID())
        return tuple(hidden)

    def show(self, markerIDs: Sequence[str]) -> None:
        """Show markers hidden by :meth:`hideAll` again; a marker already gone is ignored."""
        for markerID in markerIDs:
            nodeID, _sep, pointID = markerID.partition(":")
            node = slicer.mrmlScene.GetNodeByID(nodeID)
            if node is None:
                continue
            if pointID:
                index = node.GetNthControlPointIndexByID(pointID)
                if index >= 0:
                    node.SetNthControlPointVisibility(index, True)
            elif node is self._node("box"):
                self._setBoxVisible(True)
            elif node.GetAttribute(STROKE_MARKER_ATTRIBUTE) is not None and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility(True)

    def _boxVisible(self) -> bool:
        displayNode = self._node("box").GetDisplayNode()
        return displayNode is None or bool(displayNode.GetVisibility())

    def _setBoxVisible(self, visible: bool) -> None:
        # The ROI's display node (vtkMRMLDisplayNode::SetVisibility, Libs/MRML/Core/vtkMRMLDisplayNode.h): a box
        # is drawn from the ROI's size, so hiding its one control point would not hide it.
        box = self._node("box")
        displayNode = box.GetDisplayNode() if box is not None else None
        if displayNode is not None:
            displayNode.SetVisibility(bool(visible))

    def clear(self, keep: str = "") -> None:
        """Remove every prompt marker (a new target starts without them), except the one named ``keep``."""
        for kind in ("positive", "negative", "box"):
            node = self._node(kind)
            if node is None or (kind == "box" and keep == node.GetID()):
                continue
            if kind == "box" or not keep.startswith(node.GetID() + ":"):
                node.RemoveAllControlPoints()
                continue
            for index in reversed(range(node.GetNumberOfControlPoints())):
                if f"{node.GetID()}:{node.GetNthControlPointID(index)}" != keep:
                    node.RemoveNthControlPoint(index)
        for node in self._strokeMarkers():
            if node.GetID() != keep:
                slicer.mrmlScene.RemoveNode(node)
        self._setBoxVisible(True)
