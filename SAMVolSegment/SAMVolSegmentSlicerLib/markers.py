"""The markups that show the prompts: positive/negative point lists and the box ROI of the parameter node.

MRML glue (imports ``slicer``), so it follows Slicer's camelCase. A marker is named ``"<nodeID>:<pointID>"``
(a control point) or ``"<nodeID>"`` (the box ROI); undo removes it by that name and redo re-creates it.
"""

from __future__ import annotations

from typing import Callable

import slicer
import vtk

from .undo_stack import Prompt

_POINT_LISTS = (("positivePoints", "SAMVolSegment positive", (0.2, 0.9, 0.2)),
                ("negativePoints", "SAMVolSegment negative", (0.95, 0.25, 0.2)))


class PromptMarkers:
    """Creates, places, removes and re-creates prompt markers for the parameter node ``getParameterNode()``."""

    def __init__(self, getParameterNode: Callable) -> None:
        self._getParameterNode = getParameterNode
        #: True while this class adds a control point itself: ``AddControlPoint`` fires
        #: ``PointPositionDefinedEvent`` (vtkMRMLMarkupsNode.cxx) and that is not a user's click.
        self.adding = False

    def ensureNodes(self) -> None:
        """Point lists and the box ROI, created when missing (or deleted)."""
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

    def _node(self, kind: str):
        pn = self._getParameterNode()
        return {"positive": pn.positivePoints, "negative": pn.negativePoints, "box": pn.boxROI}[kind]

    def startPlacing(self, kind: str) -> None:
        """Enter place mode: ``"positive"``/``"negative"`` points (persistent) or a new ``"box"`` (two clicks)."""
        self.ensureNodes()
        node = self._node(kind)
        if kind == "box":
            node.RemoveAllControlPoints()
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(0 if kind == "box" else 1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def placingKind(self) -> str:
        """``"positive"``, ``"negative"``, ``"box"`` or ``""``: what a click in a view places now."""
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() != interactionNode.Place:
            return ""
        activeID = slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID()
        for kind in ("positive", "negative", "box"):
            node = self._node(kind)
            if node is not None and node.GetID() == activeID:
                return kind
        return ""

    def togglePolarity(self) -> str:
        """Switch between placing positive and negative points; returns the kind now placed."""
        kind = "negative" if self.placingKind() == "positive" else "positive"
        self.startPlacing(kind)
        return kind

    def remove(self, markerID: str) -> None:
        """Delete a point's marker or clear the box ROI; a marker already gone is ignored."""
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
        else:
            node.RemoveAllControlPoints()

    def restore(self, prompt: Prompt) -> Prompt:
        """Show a redone point again. Slicer gives the new control point a new ID
        (``GenerateUniqueControlPointID``), so the returned prompt names it for the next undo."""
        if prompt.kind != "point" or not prompt.marker_id:
            return prompt
        node = self._node("positive" if prompt.positive else "negative")
        if node is None:
            return prompt
        self.adding = True
        try:
            index = node.AddControlPointWorld(vtk.vtkVector3d(*prompt.position_ras))
        finally:
            self.adding = False
        node.SetNthControlPointLocked(index, True)
        return Prompt(prompt.kind, prompt.positive, prompt.position_ras,
                      f"{node.GetID()}:{node.GetNthControlPointID(index)}")

    def clear(self) -> None:
        """Remove every prompt marker (a new target starts without them)."""
        for kind in ("positive", "negative", "box"):
            node = self._node(kind)
            if node is not None:
                node.RemoveAllControlPoints()
