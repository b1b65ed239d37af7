"""Scribbles and lassos drawn as markups curves: which curve a finished placement drew, the line it sends, and the
session call it becomes.

MRML glue (imports ``slicer``), so it follows Slicer's camelCase. A **scribble** is drawn as an open curve
(``vtkMRMLMarkupsCurveNode``), a **lasso** as a closed curve (``vtkMRMLMarkupsClosedCurveNode``): the user clicks
points along it in a view, and the placement ends with a right-click or a double-click
(``vtkSlicerMarkupsWidget``: ``WidgetEventStopPlace`` calls ``vtkMRMLInteractionNode::SwitchToViewTransformMode``,
Modules/Loadable/Markups/VTKWidgets/vtkSlicerMarkupsWidget.cxx) or when another mouse mode is chosen. Either way
``vtkMRMLInteractionNode::SetCurrentInteractionMode`` leaves *Place* and fires ``EndPlacementEvent``
(Libs/MRML/Core/vtkMRMLInteractionNode.cxx, Slicer 5.6 to 5.10), after ``InteractionModeChangedEvent``, on which
the markups displayable manager has removed the point previewed under the mouse (``vtkSlicerMarkupsWidget::Leave``).
A curve never ends its placement by itself: its ``RequiredNumberOfControlPoints`` is 1e6 "to remain in place mode
after placing a curve point" (Libs/MRML/Core/vtkMRMLMarkupsCurveNode.cxx). So ``EndPlacementEvent`` while one of
the module's curves is the active place node is when a stroke is finished, and the one moment the panel makes its
one Logic call (``SAMVolSegmentLogic.addStrokeFromCurve``).

What is sent is the line the views draw: the curve's interpolated points (``GetCurvePointsWorld``: the spline
through the control points, 10 points per segment by default, parent transforms applied), not only the clicked
control points. A lasso's filled polygon then matches the outline the user sees, and the spline through points
on one slice stays on that slice (it is an affine combination of them), so a lasso drawn on a slice is planar.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import numpy as np
import slicer
from slicer.i18n import tr as _

from SAMVolSegmentLib.engine.mask_update import MaskUpdate
from SAMVolSegmentLib.engine.strokes import STROKE_METHODS, as_polyline_ras

#: The two stroke tools, as ``Prompt.kind`` and the place-mode names of ``PromptMarkers``.
STROKE_KINDS = ("scribble", "lasso")
#: Markups class of each tool's curve (its drawing curve and the markers of its finished strokes).
CURVE_CLASSES = {"scribble": "vtkMRMLMarkupsCurveNode", "lasso": "vtkMRMLMarkupsClosedCurveNode"}


class StrokesNotSupportedError(RuntimeError):
    """The session's backend has no scribbles or lassos (an older remote server or client); nothing changed."""


def curvePointsWorld(curveNode) -> np.ndarray:
    """The line a scribble or lasso curve shows, (N, 3) world RAS mm (see the module doc).

    A control point that is not placed (a preview following the mouse, ``PositionPreview``; an unplaced one) is
    removed first. A curve of one point has no interpolated points: that point is the stroke.
    """
    for index in reversed(range(curveNode.GetNumberOfControlPoints())):
        if curveNode.GetNthControlPointPositionStatus(index) != curveNode.PositionDefined:
            curveNode.RemoveNthControlPoint(index)
    if curveNode.GetNumberOfControlPoints() == 0:
        return np.zeros((0, 3))
    points = np.array(slicer.util.arrayFromMarkupsCurvePoints(curveNode, world=True), dtype=float)
    if len(points) < curveNode.GetNumberOfControlPoints():
        points = np.array(slicer.util.arrayFromMarkupsControlPoints(curveNode, world=True), dtype=float)
    return points.reshape(-1, 3)


def strokeCall(session, kind: str, pointsWorld: Sequence[Sequence[float]], positive: bool
               ) -> Tuple[np.ndarray, Callable]:
    """``(points, call)``: the stroke's (N, 3) world points and ``call(session) -> MaskUpdate`` running it.

    Raises :class:`StrokesNotSupportedError` when ``session`` lacks the stroke (checked with ``hasattr``: the
    protocol's older implementations, e.g. a remote server of an earlier version), and
    ``InvalidPromptError`` for points that are not (N, 3) finite numbers; both before anything changes.
    """
    if kind not in STROKE_METHODS:
        raise ValueError(f"Unknown stroke {kind!r}; expected one of {STROKE_KINDS}")
    method = STROKE_METHODS[kind]
    if not hasattr(session, method):
        raise StrokesNotSupportedError(
            _("This backend ({name}) does not take scribbles or lassos yet; update it (a remote server: its "
              "SAMVolSegment version) or use points and boxes. Nothing was changed.").format(
                name=type(session).__name__))
    points = as_polyline_ras(pointsWorld, kind, min_points=1)
    sign = bool(positive)

    def call(target) -> MaskUpdate:
        return getattr(target, method)(points, positive=sign)

    return points, call
