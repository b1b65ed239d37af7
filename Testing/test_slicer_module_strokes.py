"""Scribbles and lassos (issue 24) in the module, on Slicer's real MRML (``slicer-core`` through ``real_slicer``):
real markups curve and closed-curve nodes, the real interaction node's ``EndPlacementEvent``, the real engine
(``InteractiveSession.add_scribble`` / ``add_lasso``) with the transparent ``BallModel``.

A stroke is drawn as the markups widget draws it (``real_slicer.drawCurve``: one defined control point per click,
then the right-click that ends the placement). Expected segments are read back from MRML independently of the
module (``real_slicer.segmentArray``) and compared with a reference session given the curve's own world points
(``slicer.util.arrayFromMarkupsCurvePoints(node, world=True)`` of a twin curve).
"""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest
import real_slicer
from test_session_initial_mask import BallModel
from test_slicer_module_real import (
    SHAPE,
    assert_clean,
    ball_session,
    ijk_to_ras,
    press_key,
    segment_array,
    state,
)
from test_slicer_module_scenarios import oblique_ijk_to_ras, rotation_translation

from SAMVolSegmentLib.engine.session import InteractiveSession

pytestmark = pytest.mark.skipif(not real_slicer.available(), reason="slicer-core is not installed (Python >= 3.10)")

#: A straight scribble along i through voxel (k, j) = (15, 15) (RAS = ijk - 15 on the test volume).
SCRIBBLE = [[-7.0, 0.0, 0.0], [0.0, 0.0, 0.0], [7.0, 0.0, 0.0]]
#: A lasso on the slice k = 15 (S = 0) around the centre.
LASSO = [[-6.0, -6.0, 0.0], [6.0, -6.0, 0.0], [6.0, 6.0, 0.0], [-6.0, 6.0, 0.0]]
#: A closed curve whose points lie up to 5 mm off their best plane.
NON_PLANAR = [[-6.0, -6.0, -5.0], [6.0, -6.0, 5.0], [6.0, 6.0, -5.0], [-6.0, 6.0, 5.0]]


class Counting:
    """A session wrapper counting the engine's prompt calls (one user action must be one session step)."""

    def __init__(self, session) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "threads", set())

    def __getattr__(self, name):
        attribute = getattr(self._session, name)
        if name in ("add_click", "add_scribble", "add_lasso", "set_box", "propose"):
            def counted(*args, **kwargs):
                self.calls.append(name)
                self.threads.add(threading.current_thread())
                return attribute(*args, **kwargs)
            return counted
        return attribute


class WithoutStrokes(Counting):
    """A session of a backend that has no scribbles or lassos (an older remote server): ``hasattr`` says no."""

    def __getattr__(self, name):
        if name in ("add_scribble", "add_lasso"):
            raise AttributeError(name)
        return super().__getattr__(name)


@pytest.fixture
def env():
    slicer = real_slicer.install()
    import SAMVolSegment as module

    env = types.SimpleNamespace(slicer=slicer, module=module, scene=slicer.mrmlScene, widgets=[], sessions=[])
    env.volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32), ijk_to_ras())

    def make_widget(wrapper=Counting):
        def factory(*args):
            session = wrapper(ball_session(*args))
            env.sessions.append(session)
            return session

        return real_slicer.showWidget(module, factory, env.widgets)

    env.make_widget = make_widget
    yield env
    for widget in env.widgets:
        widget.cleanup()


def stroke_markers(env) -> list:
    from SAMVolSegmentSlicerLib.markers import STROKE_MARKER_ATTRIBUTE

    nodes = env.slicer.util.getNodesByClass("vtkMRMLMarkupsCurveNode")
    return [node for node in nodes if node.GetAttribute(STROKE_MARKER_ATTRIBUTE) is not None]


def twin_curve_points(env, className: str, pointsWorld, transformNode=None) -> np.ndarray:
    """The world points Slicer computes for a curve of these control points (a twin of the drawn curve). Added
    without taking the active place node, which the Markups logic gives every new markups node."""
    from SAMVolSegmentSlicerLib.markers import keepingActivePlaceNode

    with keepingActivePlaceNode():
        node = env.scene.AddNewNodeByClass(className, "twin")
    if transformNode is not None:
        node.SetAndObserveTransformNodeID(transformNode.GetID())
    for point in pointsWorld:
        real_slicer.placePoint(node, point)
    points = np.array(env.slicer.util.arrayFromMarkupsCurvePoints(node, world=True), float)
    env.scene.RemoveNode(node)
    return points


def reference_mask(volume, call: str, points, positive=True, initial=None, before=()) -> np.ndarray:
    """What the engine alone makes of the stroke on the volume's voxels and world geometry (after the strokes
    ``before``: (call, points, positive) each)."""
    session = InteractiveSession(BallModel(), auto_extend=False)
    session.set_volume(np.array(real_slicer.env_slicer().util.arrayFromVolume(volume)), real_slicer.ijkToWorld(volume))
    if initial is not None:
        session.set_initial_mask(initial.astype(np.uint8))
    for step in (*before, (call, points, positive)):
        getattr(session, step[0])(np.asarray(step[1]), positive=step[2])
    return session.mask_array_kji() > 0


# ------------------------------------------------------------------------------------------ scribble
def test_a_scribble_from_a_real_curve_is_one_step_and_undo_redo_restore_exactly(env):
    expected = reference_mask(env.volume, "add_scribble", twin_curve_points(env, "vtkMRMLMarkupsCurveNode", SCRIBBLE))
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("scribble")
    assert widget.logic.markers.placingKind() == "scribble"
    assert "positive scribble" in widget.ui.statusLabel.text
    curve = pn.scribbleCurve
    assert curve.IsA("vtkMRMLMarkupsCurveNode") and not curve.IsA("vtkMRMLMarkupsClosedCurveNode")
    real_slicer.drawCurve(curve, SCRIBBLE, finish=False)
    assert not widget.logic.canUndo and not env.sessions, "placing the curve's points runs nothing"
    real_slicer.finishPlacement()
    assert_clean()
    assert state().errorDialogs == []
    (session,) = env.sessions
    assert session.calls == ["add_scribble"], "one user action, one session step"
    assert session.threads == {widget.logic.worker.thread}, "on the module's one worker thread, as clicks"
    after = segment_array(env, pn)
    np.testing.assert_array_equal(after, expected)
    assert after[15, 15, 8:23].all(), "every voxel the stroke passes is in the segment"
    assert curve.GetNumberOfControlPoints() == 0, "the drawing curve is emptied for the next stroke"
    (marker,) = stroke_markers(env)
    assert marker.GetLocked() and not marker.IsA("vtkMRMLMarkupsClosedCurveNode")
    assert marker.GetDisplayNode().GetSelectedColor() == pytest.approx((0.2, 0.9, 0.2))
    np.testing.assert_allclose(env.slicer.util.arrayFromMarkupsControlPoints(marker, world=True)[[0, -1]],
                               [SCRIBBLE[0], SCRIBBLE[-1]], atol=1e-6)
    assert "Segment updated" in widget.ui.statusLabel.text
    shown = np.array(env.slicer.util.arrayFromMarkupsControlPoints(marker, world=True))

    widget.onAction("undo")
    assert not segment_array(env, pn).any() and stroke_markers(env) == [] and not widget.logic.canUndo
    widget.onAction("redo")
    np.testing.assert_array_equal(segment_array(env, pn), after)
    (redone,) = stroke_markers(env)
    assert redone.GetLocked()
    np.testing.assert_allclose(env.slicer.util.arrayFromMarkupsControlPoints(redone, world=True), shown)
    widget.onAction("undo")
    assert not segment_array(env, pn).any() and stroke_markers(env) == [], "undo after redo removes the new marker"
    assert session.calls == ["add_scribble"]
    assert_clean()


def test_negative_scribble_removes_voxels_of_an_existing_segment_and_polarity_follows_a_s_t(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    segmentation, segmentID, cube = real_slicer.selectExistingCube(widget, env.volume)

    press_key(widget, "S")  # negative points: the include/exclude choice is one for every tool
    press_key(widget, "D")
    assert widget.logic.markers.placingKind() == "scribble" and not widget.logic.markers.positive
    assert "negative scribble" in widget.ui.statusLabel.text
    assert pn.scribbleCurve.GetDisplayNode().GetSelectedColor() == pytest.approx((0.95, 0.25, 0.2))
    real_slicer.drawCurve(pn.scribbleCurve, SCRIBBLE)
    assert_clean()
    mask = segment_array(env, pn)
    expected = reference_mask(env.volume, "add_scribble", twin_curve_points(env, "vtkMRMLMarkupsCurveNode", SCRIBBLE),
                              positive=False, initial=cube)
    np.testing.assert_array_equal(mask, expected)
    assert not mask[15, 15, 8:23].any() and mask[6, 6, 6], "the stroke's voxels go, the rest of the cube stays"
    (marker,) = stroke_markers(env)
    assert marker.GetDisplayNode().GetSelectedColor() == pytest.approx((0.95, 0.25, 0.2))

    # T while drawing keeps the stroke and flips its polarity; A sets positive again.
    press_key(widget, "D")
    real_slicer.placePoint(pn.scribbleCurve, [0.0, -7.0, 5.0])
    press_key(widget, "T")
    assert widget.logic.markers.placingKind() == "scribble" and widget.logic.markers.positive
    assert pn.scribbleCurve.GetNumberOfControlPoints() == 1 and "positive scribble" in widget.ui.statusLabel.text
    real_slicer.drawCurve(pn.scribbleCurve, [[0.0, 7.0, 5.0]])
    assert segment_array(env, pn)[20, 15, 15] and segment_array(env, pn)[20, 8:23, 15].all()
    press_key(widget, "S")
    press_key(widget, "A")
    assert widget.logic.markers.positive and widget.logic.markers.placingKind() == "positive"
    widget.onAction("undo")
    widget.onAction("undo")
    np.testing.assert_array_equal(segment_array(env, pn), cube > 0)
    assert stroke_markers(env) == []
    assert_clean()


# ------------------------------------------------------------------------------------------ lasso
def test_a_lasso_fills_its_polygon_on_the_slice_and_undo_redo_restore_exactly(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.ui.scribbleButton.emit("clicked(bool)", False)
    assert widget.logic.markers.placingKind() == "scribble"
    widget.ui.lassoButton.emit("clicked(bool)", False)
    assert widget.logic.markers.placingKind() == "lasso"
    press_key(widget, "L")
    assert widget.logic.markers.placingKind() == "lasso" and "positive lasso" in widget.ui.statusLabel.text
    curve = pn.lassoCurve
    assert curve.IsA("vtkMRMLMarkupsClosedCurveNode")
    expected = reference_mask(env.volume, "add_lasso", twin_curve_points(env, "vtkMRMLMarkupsClosedCurveNode", LASSO))
    real_slicer.drawCurve(curve, LASSO)
    assert_clean()
    assert state().errorDialogs == []
    assert env.sessions[0].calls == ["add_lasso"]
    after = segment_array(env, pn)
    np.testing.assert_array_equal(after, expected)
    assert after[15, 11:20, 11:20].all(), "the filled polygon on its slice"
    assert not after[15, 2, 2] and not after[15, 28, 28], "nothing outside the contour on that slice"
    (marker,) = stroke_markers(env)
    assert marker.IsA("vtkMRMLMarkupsClosedCurveNode") and marker.GetLocked()
    assert curve.GetNumberOfControlPoints() == 0

    widget.onAction("undo")
    assert not segment_array(env, pn).any() and stroke_markers(env) == []
    widget.onAction("redo")
    np.testing.assert_array_equal(segment_array(env, pn), after)
    assert len(stroke_markers(env)) == 1 and stroke_markers(env)[0].IsA("vtkMRMLMarkupsClosedCurveNode")
    assert_clean()


def test_a_non_planar_lasso_is_refused_with_one_dialog_and_changes_nothing(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, [0.0, 0.0, 8.0])  # a first step, so there is a segment to keep
    before = segment_array(env, pn)
    assert before.any()
    widget.onAction("lasso")
    real_slicer.drawCurve(pn.lassoCurve, NON_PLANAR)
    assert_clean()
    assert len(state().errorDialogs) == 1 and "plane" in state().errorDialogs[0]
    np.testing.assert_array_equal(segment_array(env, pn), before)
    assert stroke_markers(env) == [] and pn.lassoCurve.GetNumberOfControlPoints() == 0, "the curve is removed"
    assert env.sessions[0].calls == ["add_click", "add_lasso"]
    widget.onAction("undo")  # the history holds the click only
    assert not segment_array(env, pn).any() and not widget.logic.canUndo
    assert pn.positivePoints.GetNumberOfControlPoints() == 0
    assert_clean()


def test_a_backend_without_strokes_says_so_and_creates_nothing(env):
    widget = env.make_widget(WithoutStrokes)
    pn = widget.logic.getParameterNode()
    widget.onAction("scribble")
    real_slicer.drawCurve(pn.scribbleCurve, SCRIBBLE)
    assert_clean()
    assert len(state().errorDialogs) == 1 and "does not take scribbles" in state().errorDialogs[0]
    assert pn.segmentationNode is None, "refused before a segmentation is created"
    assert stroke_markers(env) == [] and pn.scribbleCurve.GetNumberOfControlPoints() == 0
    real_slicer.placePoint(pn.positivePoints, [0.0, 0.0, 0.0])  # clicks still work on that backend
    assert segment_array(env, pn)[15, 15, 15]


# ------------------------------------------------------------------------------------------ markers
def test_stroke_markers_are_cleared_by_reset_and_a_new_segment_and_hidden_by_a_proposal(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("scribble")
    real_slicer.drawCurve(pn.scribbleCurve, SCRIBBLE)
    widget.onAction("lasso")
    real_slicer.drawCurve(pn.lassoCurve, [[x, y, 8.0] for x, y, _z in LASSO])
    assert len(stroke_markers(env)) == 2
    hidden = widget.logic.markers.hideAll()  # what a proposal does to the prompts it replaces
    assert set(hidden) == {node.GetID() for node in stroke_markers(env)}
    assert not any(node.GetDisplayNode().GetVisibility() for node in stroke_markers(env))
    widget.logic.markers.show(hidden)
    assert all(node.GetDisplayNode().GetVisibility() for node in stroke_markers(env))

    widget.onAction("reset")
    assert stroke_markers(env) == [] and not segment_array(env, pn).any()
    widget.onAction("redo")
    assert len(stroke_markers(env)) == 1
    first = pn.segmentID
    widget.onAction("accept")
    assert pn.segmentID != first and stroke_markers(env) == [], "a new segment starts without markers"
    assert_clean()


def test_switching_tools_drops_an_unfinished_stroke_and_a_stroke_during_a_step_is_dropped(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("lasso")
    real_slicer.drawCurve(pn.lassoCurve, LASSO[:2], finish=False)
    press_key(widget, "A")  # another tool: the unfinished lasso is dropped, place mode stays on (no end event)
    assert pn.lassoCurve.GetNumberOfControlPoints() == 0 and widget.logic.markers.placingKind() == "positive"
    real_slicer.finishPlacement()
    assert not env.sessions and state().errorDialogs == [], "ending point placement sends nothing"

    widget.onLoadModel()
    session = env.sessions[0]
    original = session._session.add_click
    pumped = []

    def pump():  # the user finishes a scribble while the click runs
        if not pumped:
            pumped.append(True)
            widget.logic.startPlacing("scribble")
            real_slicer.drawCurve(pn.scribbleCurve, SCRIBBLE)

    def slow_click(*args, **kwargs):
        import time

        time.sleep(0.1)
        return original(*args, **kwargs)

    session._session.add_click = slow_click
    widget.logic.processEvents = pump
    real_slicer.placePoint(pn.positivePoints, [0.0, 0.0, 8.0])
    assert_clean()
    assert pumped and state().errorDialogs == []
    assert session.calls == ["add_click"] and stroke_markers(env) == []
    assert pn.scribbleCurve.GetNumberOfControlPoints() == 0


def test_a_preview_point_left_under_the_mouse_is_not_part_of_the_stroke(env):
    """The markups widget previews the next point under the mouse (``PositionPreview``); the displayable manager
    removes it when place mode ends, before ``EndPlacementEvent`` (vtkSlicerMarkupsWidget::Leave). Were it left,
    it must not become part of the stroke."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("scribble")
    curve = pn.scribbleCurve
    real_slicer.drawCurve(curve, SCRIBBLE, finish=False)
    import vtk

    index = curve.AddControlPointWorld(vtk.vtkVector3d(0.0, 12.0, 12.0), "")
    curve.SetNthControlPointPositionWorld(index, 0.0, 12.0, 12.0, curve.PositionPreview)
    real_slicer.finishPlacement()
    assert_clean()
    mask = segment_array(env, pn)
    expected = reference_mask(env.volume, "add_scribble", twin_curve_points(env, "vtkMRMLMarkupsCurveNode", SCRIBBLE))
    np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------------------------------ geometry
def test_strokes_under_parent_transforms_use_world_coordinates(env):
    """An oblique volume under a parent transform, and the drawing curves under another one: the stroke is the
    curve in world coordinates, as for points (``GetCurvePointsWorld``)."""
    real_slicer.setVolume(env.volume, np.random.default_rng(3).normal(100, 10, SHAPE).astype(np.float32),
                          oblique_ijk_to_ras())
    volumeTransform = real_slicer.addLinearTransform(rotation_translation(30.0, 2, [5.0, -8.0, 12.0]), "moved")
    env.volume.SetAndObserveTransformNodeID(volumeTransform.GetID())
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("scribble")
    curveTransform = real_slicer.addLinearTransform(rotation_translation(-15.0, 0, [2.0, 3.0, -4.0]), "curves")
    pn.scribbleCurve.SetAndObserveTransformNodeID(curveTransform.GetID())
    pn.lassoCurve.SetAndObserveTransformNodeID(curveTransform.GetID())
    centre = (real_slicer.ijkToWorld(env.volume) @ np.array([15.0, 15.0, 15.0, 1.0]))[:3]
    scribbleWorld = [centre + offset for offset in ([-6.0, 0, 0], [0, 0, 0], [6.0, 2.0, 0])]
    # placePoint gives world positions; the curve stores them in its own (transformed) coordinates.
    scribbleCurve = twin_curve_points(env, "vtkMRMLMarkupsCurveNode", scribbleWorld, curveTransform)
    expected = reference_mask(env.volume, "add_scribble", scribbleCurve)
    real_slicer.drawCurve(pn.scribbleCurve, scribbleWorld)
    assert_clean()
    assert state().errorDialogs == []
    after = segment_array(env, pn)
    np.testing.assert_array_equal(after, expected)
    assert after[15, 15, 15] and expected.sum() > 10
    marker = stroke_markers(env)[0]
    np.testing.assert_allclose(env.slicer.util.arrayFromMarkupsControlPoints(marker, world=True)[0], scribbleWorld[0],
                               atol=1e-6)

    # A lasso on the volume's own slice k = 15 (planar in world): its filled polygon on that slice.
    lassoWorld = [(real_slicer.ijkToWorld(env.volume) @ np.array([i, j, 15.0, 1.0]))[:3]
                  for i, j in ((9, 9), (21, 9), (21, 21), (9, 21))]
    widget.onAction("lasso")
    expected = reference_mask(env.volume, "add_lasso",
                              twin_curve_points(env, "vtkMRMLMarkupsClosedCurveNode", lassoWorld, curveTransform),
                              before=[("add_scribble", scribbleCurve, True)])
    before = segment_array(env, pn)
    real_slicer.drawCurve(pn.lassoCurve, lassoWorld)
    assert_clean()
    assert state().errorDialogs == []
    lasso = segment_array(env, pn)
    np.testing.assert_array_equal(lasso, expected)
    assert lasso[15, 10:21, 10:21].all(), "the filled polygon on the volume's slice"
    widget.onAction("undo")
    np.testing.assert_array_equal(segment_array(env, pn), before)


# ------------------------------------------------------------------------------------------ console
def test_console_add_scribble_and_add_lasso_on_the_logic(env):
    logic = env.module.SAMVolSegmentLogic()
    try:
        logic.sessionFactory = ball_session
        logic.loadModel()
        segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "console")
        segmentID = logic.setTarget(env.volume, segmentation, "")
        logic.addLasso(LASSO, positive=True)
        lasso = real_slicer.segmentArray(segmentation, segmentID, env.volume)
        assert lasso[15, 11:20, 11:20].all()
        from SAMVolSegmentLib.errors import InvalidPromptError

        with pytest.raises(InvalidPromptError, match="plane"):
            logic.addLasso(NON_PLANAR)
        with pytest.raises(InvalidPromptError):
            logic.addScribble([[0.0, 0.0]])
        np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, segmentID, env.volume), lasso)
        logic.addScribble(SCRIBBLE, positive=False)
        scribbled = real_slicer.segmentArray(segmentation, segmentID, env.volume)
        assert not scribbled[15, 15, 8:23].any() and scribbled[15, 12, 12]
        assert stroke_markers(env) == [], "a console step without a marker name shows none (as addPoint)"
        logic.undo()
        np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, segmentID, env.volume), lasso)
        logic.undo()
        assert not real_slicer.segmentArray(segmentation, segmentID, env.volume).any() and not logic.canUndo
    finally:
        logic.cleanup()


def test_a_stroke_marker_made_during_point_placement_does_not_take_its_clicks(env):
    """Every markups node added to the scene becomes the active place node (vtkSlicerMarkupsLogic
    ``OnMRMLSceneNodeAdded``): a stroke's marker re-created by redo while positive points are being placed must
    leave the point list active, or the next click would go into the marker."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("scribble")
    real_slicer.drawCurve(pn.scribbleCurve, SCRIBBLE)
    widget.onAction("positive")
    widget.onAction("undo")
    widget.onAction("redo")
    assert len(stroke_markers(env)) == 1
    assert widget.logic.markers.placingKind() == "positive"
    assert_clean()


@pytest.mark.parametrize("bundle", [False, True])
def test_save_clear_reload_and_draw_again(env, tmp_path, bundle):
    """The drawing curves and a stroke's marker are saved with the scene (.mrml with .mrk.json, or one .mrb);
    after loading, the loaded curves are the tools' curves and a new stroke works on the loaded segment."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("lasso")
    real_slicer.drawCurve(pn.lassoCurve, LASSO)
    saved = segment_array(env, pn)
    assert saved[15, 12, 12]
    path = real_slicer.saveScene(tmp_path / ("scene.mrb" if bundle else "scene"))
    env.scene.Clear(0)
    real_slicer.loadScene(path)
    assert_clean()
    pn = widget.logic.getParameterNode()
    volume, segmentation = pn.inputVolume, pn.segmentationNode
    assert pn.scribbleCurve is not None and pn.lassoCurve is not None and pn.lassoCurve.IsA("vtkMRMLMarkupsClosedCurveNode")
    (loadedMarker,) = stroke_markers(env)
    assert loadedMarker.GetAttribute("SAMVolSegment.strokeMarker") == "lasso"
    widget.onAction("scribble")
    real_slicer.drawCurve(pn.scribbleCurve, [[x, 0.0, 8.0] for x, _y, _z in SCRIBBLE])
    assert_clean()
    assert state().errorDialogs == []
    mask = real_slicer.segmentArray(segmentation, pn.segmentID, volume)
    assert mask[23, 15, 8:23].all() and mask[15, 12, 12], "the new scribble edits the loaded segment"
    widget.onAction("accept")
    assert stroke_markers(env) == [], "a new segment starts without markers, loaded ones included"


def test_a_proposal_hides_stroke_markers_until_it_is_undone(env):
    """A proposal replaces the prompts before it (markers.py): a stroke's marker is hidden while the proposal
    stands, shown again when it is undone, and hidden again by its redo."""
    pytest.importorskip("torch")
    from test_slicer_module_propose import proposing_session

    widget = env.make_widget()
    widget.logic.sessionFactory = proposing_session  # BallModel with a proposal head, before the first step
    pn = widget.logic.getParameterNode()
    widget.onAction("lasso")
    real_slicer.drawCurve(pn.lassoCurve, LASSO)
    (marker,) = stroke_markers(env)
    widget.logic.loadModel()
    widget.logic.propose("ball")
    assert not marker.GetDisplayNode().GetVisibility()
    widget.onAction("undo")
    assert marker.GetDisplayNode().GetVisibility() and env.scene.IsNodePresent(marker)
    widget.onAction("redo")
    assert not marker.GetDisplayNode().GetVisibility()
    widget.onAction("undo")
    widget.onAction("undo")
    assert stroke_markers(env) == [] and not segment_array(env, pn).any()
    assert_clean()
