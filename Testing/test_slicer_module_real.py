"""SAMVolSegment.py's Widget and Logic on Slicer's real MRML (``slicer-core``, ``real_slicer``; only the Qt parts are
stand-ins, ``slicer_fake``), on the real engine.

The engine is a real ``InteractiveSession`` with a transparent model (mask prompt ± balls around clicks), so
these tests cover the Logic ↔ session-protocol path too. Each of the six definite bugs of issue 9 has a test
here that fails on the module as it was (SAMVolSegment.py before the Logic owned a step).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import real_slicer
from test_session_initial_mask import BallModel

from SAMVolSegmentLib.engine.session import InteractiveSession

SHAPE = (30, 30, 30)

pytestmark = pytest.mark.skipif(not real_slicer.available(), reason="slicer-core is not installed (Python >= 3.10)")


def ijk_to_ras(offset: float = -15.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def ball_session(*_args) -> InteractiveSession:
    return InteractiveSession(BallModel(), auto_extend=False)


@pytest.fixture
def env():
    slicer = real_slicer.install()
    import SAMVolSegment as module

    env = types.SimpleNamespace(slicer=slicer, module=module, scene=slicer.mrmlScene, widgets=[])
    env.volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32), ijk_to_ras())

    def make_widget(factory=ball_session):
        return real_slicer.showWidget(module, factory, env.widgets)

    env.make_widget = make_widget
    yield env
    for widget in env.widgets:
        widget.cleanup()


def state():
    return real_slicer.state()


def segment_array(env, pn) -> np.ndarray:
    return real_slicer.segmentArray(pn.segmentationNode, pn.segmentID, env.volume)


CENTRE = np.array([0.0, 0.0, 0.0])  # voxel (15, 15, 15)


def assert_clean():
    assert state().errorsInCallbacks == [], "an exception escaped into a VTK observer or Qt slot"
    assert state().overrideCursorDepth == 0, "the busy cursor was not restored"


# ------------------------------------------------------------------------------------------ bug 1
def test_failed_click_shows_one_dialog_removes_its_marker_and_escapes_nowhere(env):
    """tryWithErrorDisplay re-raises (Base/Python/slicer/util.py): the old handlers leaked the exception into
    the VTK observer, left the locked marker and the progress bar."""

    class FailingSession(InteractiveSession):
        def add_click(self, point_ras, positive=True):
            raise RuntimeError("engine failed")

    widget = env.make_widget(lambda *a: FailingSession(BallModel(), auto_extend=False))
    pn = widget.logic.getParameterNode()
    widget.onAction("positive")
    widget.ui.progressBar.show()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert len(state().errorDialogs) == 1 and "engine failed" in state().errorDialogs[0]
    assert pn.positivePoints.GetNumberOfControlPoints() == 0
    assert not widget.ui.progressBar.visible and not widget.logic.busy and not widget.logic.canUndo


def test_model_load_failure_shows_one_dialog(env):
    def broken(*_args):
        raise RuntimeError("checkpoint is corrupt")

    widget = env.make_widget(broken)
    widget.onLoadModel()
    real_slicer.placePoint(widget.logic.getParameterNode().positivePoints, CENTRE)
    assert_clean()
    assert len(state().errorDialogs) == 2  # one per user action, never two for one
    assert all("checkpoint is corrupt" in text for text in state().errorDialogs)


# ------------------------------------------------------------------------------------------ bug 2
def test_box_is_sent_only_when_both_corners_are_placed(env):
    """vtkMRMLMarkupsROINode: two control points, PointPositionDefinedEvent per corner; the first corner
    leaves a zero size, which the old guard sent ("The ROI box has no volume")."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("box")
    real_slicer.placePoint(pn.boxROI, [-6.0, -6.0, -6.0])
    assert_clean()
    assert state().errorDialogs == [] and not widget.logic.canUndo
    real_slicer.placePoint(pn.boxROI, [6.0, 6.0, 6.0])
    assert_clean()
    assert state().errorDialogs == []
    assert widget.logic.canUndo
    mask = segment_array(env, pn)
    assert mask[15, 15, 15] and not mask[2, 2, 2], "the box's centre click segments inside the box only"


def test_a_box_drawn_again_replaces_the_first_and_undo_goes_back_to_it(env):
    """X clears the ROI and places a new one (two corners); dragging handles sends nothing (PointEndInteraction
    is not observed), so drawing again is how a box changes (docs/SLICER.md)."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("box")
    real_slicer.placeROICorners(pn.boxROI, [-6.0, -6.0, -6.0], [6.0, 6.0, 6.0])
    first = segment_array(env, pn)
    widget.onAction("box")
    assert pn.boxROI.GetNumberOfControlPoints() == 0
    real_slicer.placeROICorners(pn.boxROI, [-3.0, -3.0, -3.0], [3.0, 3.0, 3.0])
    assert_clean()
    assert state().errorDialogs == []
    second = segment_array(env, pn)
    assert second[15, 15, 15] and not np.array_equal(first, second) and not (second & ~first).any()
    widget.onAction("undo")
    np.testing.assert_array_equal(segment_array(env, pn), first)


def test_a_box_placement_is_one_step_and_a_previewed_corner_sends_nothing(env):
    """The ROI is observed for PointAddedEvent and PointPositionDefinedEvent (the latter is not always fired,
    see the next test): a placement that fires both is one step; dragging the placed box sends nothing; a corner
    that is only previewed (vtkSlicerMarkupsWidget: the point follows the mouse until the click) already gives
    the ROI a size, and is not sent until it is placed."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    roi = pn.boxROI
    widget.onAction("box")
    real_slicer.placeROICorners(roi, [-6.0, -6.0, -6.0], [6.0, 6.0, 6.0])
    assert_clean()
    assert state().errorDialogs == [] and widget.logic.canUndo
    roi.SetNthControlPointPositionWorld(0, 1.0, 1.0, 1.0)  # a handle dragged
    widget.onAction("undo")
    assert not widget.logic.canUndo, "one placement, one step"

    widget.onAction("box")
    real_slicer.placePoint(roi, [-6.0, -6.0, -6.0])
    roi.SetNthControlPointPositionWorld(0, -6.0, -6.0, -6.0, roi.PositionPreview)
    real_slicer.placePoint(roi, [6.0, 6.0, 6.0])  # one corner placed, one previewed: the ROI has a size
    assert roi.GetSize()[0] > 0 and roi.GetNumberOfDefinedControlPoints() == 1
    assert not widget.logic.canUndo
    roi.SetNthControlPointPositionWorld(0, -6.0, -6.0, -6.0)  # the click (PointPositionDefinedEvent only)
    assert_clean()
    assert state().errorDialogs == [] and widget.logic.canUndo
    mask = segment_array(env, pn)
    assert mask[15, 15, 15] and not mask[2, 2, 2]


POISONED_FREE = "glibc.malloc.tcache_count=0:glibc.malloc.perturb=170"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="poisons freed memory through glibc's malloc tunables")
def test_box_tests_pass_when_slicer_does_not_fire_point_position_defined_for_the_second_corner():
    """Slicer's AddControlPoint reads the added point after a box ROI deleted it (its two corners become one
    centre point: vtkMRMLMarkupsNode.cxx AddControlPoint, vtkMRMLMarkupsROINode.cxx
    UpdateControlPointsFromBoxROI), so PointPositionDefinedEvent of a second corner added by code comes only
    while the freed memory still holds the point. The box tests failed when earlier test files had reused it
    (test_label_map_warning.py, test_model_fixtures.py); freed memory poisoned by glibc makes that
    deterministic, in a fresh process."""
    env = dict(os.environ, GLIBC_TUNABLES=POISONED_FREE)
    probe = ("import slicer, vtk; roi = slicer.vtkMRMLScene().AddNewNodeByClass('vtkMRMLMarkupsROINode'); "
             "seen = []; roi.AddObserver(roi.PointPositionDefinedEvent, lambda *a: seen.append(1)); "
             "roi.AddControlPointWorld(vtk.vtkVector3d(0, 0, 0), ''); roi.AddControlPointWorld(vtk.vtkVector3d(5, 5, 5), ''); "
             "print(len(seen))")
    fired = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert fired.returncode == 0, fired.stderr
    # 1: Slicer fired no event for the second corner (the condition tested); 2: a Slicer with the read fixed.
    assert fired.stdout.strip() in ("1", "2"), fired.stdout
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
         "box_is_sent_only_when_both_corners or box_drawn_again or box_placement_is_one_step"],
        env=env, capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0 and re.search(r"\b3 passed", result.stdout), result.stdout[-3000:] + result.stderr[-2000:]


# ------------------------------------------------------------------------------------------ bug 3
@pytest.mark.parametrize("existing_segment", [False, True])
def test_first_click_with_selector_on_none_keeps_its_marker(env, existing_segment):
    """noneEnabled selector on None: creating and selecting the target emits currentSegmentChanged
    (qMRMLSegmentSelectorWidget.cxx); the old onSegmentChanged then deleted the point being placed."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    if existing_segment:
        segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        segmentation.GetSegmentation().AddEmptySegment("", "other")
        widget.ui.segmentSelector.setCurrentNode(segmentation)
        assert widget.ui.segmentSelector.currentSegmentID() == ""  # None
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert state().errorDialogs == []
    assert pn.positivePoints.GetNumberOfControlPoints() == 1
    assert pn.positivePoints.GetNthControlPointLocked(0)
    assert pn.segmentID and widget.ui.segmentSelector.currentSegmentID() == pn.segmentID
    assert segment_array(env, pn)[15, 15, 15]


# ------------------------------------------------------------------------------------------ bug 4
def test_undo_after_redo_removes_the_recreated_marker(env):
    """Redo re-creates the control point with a new ID (vtkMRMLMarkupsNode::GenerateUniqueControlPointID)."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    widget.onAction("undo")
    assert pn.positivePoints.GetNumberOfControlPoints() == 0 and not segment_array(env, pn).any()
    widget.onAction("redo")
    assert pn.positivePoints.GetNumberOfControlPoints() == 1 and segment_array(env, pn)[15, 15, 15]
    widget.onAction("undo")
    assert_clean()
    assert pn.positivePoints.GetNumberOfControlPoints() == 0
    assert not segment_array(env, pn).any()


# ------------------------------------------------------------------------------------------ bug 5
def test_volume_change_prepares_the_volume_just_selected(env):
    """Qt runs slots in connection order: connectGui's handler (which updates the parameter node) runs after
    the widget's, so the old handler read the previous volume from the parameter node."""
    widget = env.make_widget()
    widget.onLoadModel()
    other = real_slicer.addVolume(np.random.default_rng(1).normal(50, 5, (12, 20, 24)).astype(np.float32), ijk_to_ras(-5.0), name="mr")
    widget.ui.inputVolumeSelector.setCurrentNode(other)
    assert_clean()
    assert widget.logic.session.mask_array_kji().shape == (12, 20, 24)


# ------------------------------------------------------------------------------------------ bug 6
def load_self_test():
    path = real_slicer.MODULE_DIR / "Testing" / "Python" / "SAMVolSegmentSelfTest.py"
    spec = importlib.util.spec_from_file_location("SAMVolSegmentSelfTest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_self_test_skips_without_torch_and_is_registered_once(env, monkeypatch):
    from SAMVolSegmentSlicerLib import dependencies

    torch_req = next(r for r in dependencies.ENGINE_REQUIREMENTS if r.provider == "pytorch")
    monkeypatch.setattr(dependencies, "missing_requirements", lambda *a, **k: [torch_req])
    module = load_self_test()
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(module.SAMVolSegmentSelfTest).run(result)
    assert result.testsRun >= 3 and len(result.skipped) == result.testsRun
    assert not result.errors and not result.failures
    cmake = "".join(p.read_text() for p in real_slicer.MODULE_DIR.rglob("CMakeLists.txt"))
    registered = re.findall(r"slicer_add_python_unittest\(\s*SCRIPT\s+(\S+?)\)", cmake)
    assert registered == ["SAMVolSegmentSelfTest.py"], registered


# ------------------------------------------------------------------------------------------ workflow
def test_editing_an_existing_segment_negative_click_removes_its_voxels(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    segmentation, segmentID, cube = real_slicer.selectExistingCube(widget, env.volume)
    assert pn.segmentID == segmentID
    real_slicer.placePoint(pn.negativePoints, CENTRE)
    assert_clean()
    mask = segment_array(env, pn)
    assert not mask[15, 15, 15] and mask[6, 6, 6], "the click removes voxels there and keeps the rest"
    widget.onAction("undo")
    np.testing.assert_array_equal(segment_array(env, pn), cube > 0)


def test_in_flight_guard_drops_clicks_and_shortcuts_during_a_step(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onLoadModel()
    reentered = []

    def pump():  # the user keeps clicking and pressing keys while the step runs
        if not reentered:
            reentered.append(True)
            real_slicer.placePoint(pn.positivePoints, [5.0, 5.0, 5.0])
            widget.onAction("undo")
            widget.onAction("accept")

    widget.logic.processEvents = pump
    widget.logic.worker.run  # noqa: B018 - the step below pumps at least once while the worker runs
    original = widget.logic.session.add_click

    def slow_click(*args, **kwargs):
        import time

        time.sleep(0.1)
        return original(*args, **kwargs)

    widget.logic.session.add_click = slow_click
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert reentered and state().errorDialogs == []
    assert pn.positivePoints.GetNumberOfControlPoints() == 1, "the click placed during the step is removed"
    assert widget.logic.canUndo and pn.segmentID  # the first step stands, no accept happened
    assert segment_array(env, pn)[15, 15, 15]


def press_key(widget, keys: str) -> None:
    """The user presses a shortcut: its QShortcut on the main window emits activated()."""
    (shortcut,) = [s for s in widget.shortcuts._shortcuts if s.name == keys]
    shortcut.emit("activated()")


def test_t_toggles_polarity_and_v_toggles_visibility(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onAction("positive")
    assert widget.logic.markers.placingKind() == "positive"
    press_key(widget, "T")
    assert widget.logic.markers.placingKind() == "negative"
    assert "negative" in widget.ui.statusLabel.text, "the status line says it at once, not after the next step"
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    display = pn.segmentationNode.GetDisplayNode()
    press_key(widget, "V")
    assert display.GetSegmentVisibility(pn.segmentID) is False
    widget.onAction("toggleVisibility")
    assert display.GetSegmentVisibility(pn.segmentID) is True
    assert_clean()


def test_deleted_segmentation_and_point_list_are_recovered(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    old = pn.segmentationNode
    env.scene.RemoveNode(old)
    env.scene.RemoveNode(pn.negativePoints)
    assert pn.negativePoints is not None, "a deleted point list is re-created"
    real_slicer.placePoint(pn.positivePoints, [3.0, 0.0, 0.0])
    assert_clean()
    assert state().errorDialogs == []
    assert pn.segmentationNode is not None and pn.segmentationNode is not old
    assert segment_array(env, pn)[15, 15, 18]


def test_progress_dialog_appears_after_two_seconds_and_closes(env):
    widget = env.make_widget()
    widget.progress.onSlow(0.6, None, "Encoding")
    assert widget.ui.progressBar.visible and not state().progressDialogs
    widget.progress.onSlow(2.1, 0.5, "Encoding")
    assert state().progressDialogs and state().progressDialogs[0].visible
    widget.progress.hide()
    assert not state().progressDialogs[0].visible and not widget.ui.progressBar.visible


def test_refused_write_leaves_the_segment_unchanged_and_the_step_undoable(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    with real_slicer.refusingWrites():
        real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert len(state().errorDialogs) == 1 and "undo" in state().errorDialogs[0].lower()
    assert not segment_array(env, pn).any()
    widget.onAction("undo")
    assert not widget.logic.canUndo and pn.positivePoints.GetNumberOfControlPoints() == 0


def add_segment(segmentation, name: str, mask: np.ndarray, volume) -> str:
    """A segment holding ``mask`` on the volume grid, written as Slicer would store it."""
    segmentID = segmentation.GetSegmentation().AddEmptySegment("", name)
    real_slicer.writeSegment(segmentation, segmentID, mask, volume)
    return segmentID


def segment_editor(env):
    """The Segment Editor's settings node, found as Slicer's module keeps it (singleton tag "SegmentEditor")."""
    return real_slicer.segmentEditorNode()


@pytest.mark.parametrize("masking", [True, False])
def test_the_segment_editor_intensity_range_limits_a_click_unless_masking_is_off(env, masking):
    """editPolicyFromSegmentEditor reads vtkMRMLSegmentEditorNode's SourceVolumeIntensityMask(Range)."""
    voxels = np.where(np.arange(SHAPE[2]) < 15, 0.0, 200.0)[None, None, :] * np.ones(SHAPE)
    real_slicer.setVolume(env.volume, voxels.astype(np.float32), ijk_to_ras())
    editor = segment_editor(env)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(150.0, 250.0)
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    pn.useSegmentEditorMasking = masking
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    mask = segment_array(env, pn)
    assert mask[15, 15, 15] and mask[:, :, 15:].any()
    assert bool(mask[:, :, :15].any()) == (not masking), "voxels below the range are left out only with masking on"


def test_overwrite_follows_the_segment_editor_and_spares_hidden_segments(env):
    """Other segments: Overwrite with the Segment Editor's OverwriteVisibleSegments takes voxels from visible
    segments only; undo gives them back."""
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    slab = np.zeros(SHAPE, bool)
    slab[:, :, 13:17] = True
    visible = add_segment(segmentation, "visible", slab, env.volume)
    hidden = add_segment(segmentation, "hidden", slab, env.volume)
    segmentation.GetDisplayNode().SetSegmentVisibility(hidden, False)
    segment_editor(env).SetOverwriteMode(env.slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments)
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    pn.segmentationNode = segmentation
    pn.otherSegments = env.module.OtherSegments.OVERWRITE
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert segment_array(env, pn)[15, 15, 15]
    assert not real_slicer.segmentArray(segmentation, visible, env.volume)[15, 15, 15], "the visible segment gave its voxels"
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, hidden, env.volume), slab)
    widget.onAction("undo")
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, visible, env.volume), slab)


def test_a_deleted_masking_segment_is_refused_before_the_engine_runs(env):
    """Editable area 'Inside single segment' whose segment is gone: one dialog naming the fix, nothing changes."""
    editor = segment_editor(env)
    editor.SetMaskMode(env.slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID("Segment_gone")
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert len(state().errorDialogs) == 1 and "Editable area" in state().errorDialogs[0]
    assert pn.positivePoints.GetNumberOfControlPoints() == 0 and not widget.logic.canUndo
    assert not segment_array(env, pn).any()


def test_loaded_segmentation_keeps_its_reference_geometry(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    other = real_slicer.addVolume(np.zeros((10, 12, 14), np.float32), np.diag([0.5, 0.5, 0.5, 1.0]), name="fine")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(other)  # as a .seg.nrrd brings its own
    name = env.slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    loaded = segmentation.GetSegmentation().GetConversionParameter(name)
    pn.segmentationNode = segmentation
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert segmentation.GetSegmentation().GetConversionParameter(name) == loaded


def test_default_volume_is_a_scalar_volume_not_a_labelmap(env):
    env.scene.RemoveNode(env.volume)
    labels = env.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    real_slicer.setVolume(labels, np.zeros(SHAPE, np.uint8), ijk_to_ras())
    env.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    scalar = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct2")
    assert __import__("SAMVolSegmentSlicerLib.segment_io").segment_io.firstScalarVolume(env.scene) is scalar


def test_reset_and_accept(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    real_slicer.placePoint(pn.negativePoints, [6.0, 6.0, 6.0])
    first = pn.segmentID
    widget.onAction("reset")
    assert not segment_array(env, pn).any() and pn.positivePoints.GetNumberOfControlPoints() == 0
    widget.onAction("redo")
    assert segment_array(env, pn)[15, 15, 15]
    widget.onAction("accept")
    assert pn.segmentID != first and widget.ui.segmentSelector.currentSegmentID() == pn.segmentID
    segmentationsLogic = env.slicer.vtkSlicerSegmentationsModuleLogic
    assert segmentationsLogic.GetSegmentStatus(pn.segmentationNode.GetSegmentation().GetSegment(first)) == \
        segmentationsLogic.Completed
    real_slicer.placePoint(pn.positivePoints, [6.0, 0.0, 0.0])
    assert_clean()
    first_mask = real_slicer.segmentArray(pn.segmentationNode, first, env.volume)
    assert first_mask[15, 15, 15], "Protect: the accepted segment keeps its voxels"


# ------------------------------------------------------------------------------------------ probable bugs
def test_the_point_defined_is_the_event_index_not_the_last_point(env):
    """PointPositionDefinedEvent carries the defined point's index (vtkMRMLMarkupsNode.cxx,
    SetNthControlPointPosition); a point defined before the last one (an unplaced point of the list placed from
    the Markups module) must be the one segmented, not the list's last point."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    points = pn.positivePoints
    wasModifying = points.StartModify()  # the events come after EndModify, deferred, without an index
    points.AddControlPoint([6.0, 6.0, 6.0])
    points.UnsetNthControlPointPosition(0)  # unplaced, index 0
    points.EndModify(wasModifying)
    assert points.GetNumberOfControlPoints() == 1 and not widget.logic.canUndo
    real_slicer.placePoint(points, CENTRE)  # index 1: the first step
    assert not segment_array(env, pn)[15, 15, 3]
    points.SetNthControlPointPositionWorld(0, -12.0, 0.0, 0.0)  # voxel (15, 15, 3): defined now
    assert_clean()
    assert state().errorDialogs == []
    assert segment_array(env, pn)[15, 15, 3], "the point defined at index 0 was segmented"
    assert points.GetNthControlPointLocked(0) and points.GetNumberOfControlPoints() == 2
    widget.onAction("undo")
    assert points.GetNumberOfControlPoints() == 1 and not segment_array(env, pn)[15, 15, 3]


def test_after_a_failed_step_undo_and_redo_stay_on_one_history(env):
    """A step that fails leaves no second history to go stale: redo still replays the undone click, undo
    removes it again, and the failed click's marker is gone."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    widget.onAction("undo")
    session = widget.logic.session
    original = session.add_click

    def fails_once(*args, **kwargs):
        session.add_click = original
        raise RuntimeError("engine failed")

    session.add_click = fails_once
    real_slicer.placePoint(pn.positivePoints, [6.0, 0.0, 0.0])
    assert len(state().errorDialogs) == 1 and pn.positivePoints.GetNumberOfControlPoints() == 0
    assert widget.logic.canRedo
    widget.onAction("redo")
    assert segment_array(env, pn)[15, 15, 15] and pn.positivePoints.GetNumberOfControlPoints() == 1
    widget.onAction("undo")
    assert not segment_array(env, pn).any() and pn.positivePoints.GetNumberOfControlPoints() == 0
    assert_clean()


def test_closing_the_scene_during_a_step_writes_nothing_and_the_next_scene_works(env):
    """vtkMRMLScene::Clear (StartCloseEvent, NodeRemovedEvent per node, EndCloseEvent) while the engine runs a
    click: the step ends without writing into the closed scene's nodes and without a dialog or a traceback."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onLoadModel()
    session = widget.logic.session
    original = session.add_click
    inClick, closed = [], []

    def slow_click(*args, **kwargs):
        inClick.append(True)
        import time

        time.sleep(0.1)
        return original(*args, **kwargs)

    def pump():  # the user closes the scene while the click runs
        if inClick and not closed:
            closed.append(True)
            env.scene.Clear()

    session.add_click = slow_click
    widget.logic.processEvents = pump
    old_points = pn.positivePoints
    real_slicer.placePoint(old_points, CENTRE)
    assert closed, "the scene closed during the step"
    assert_clean()
    assert state().errorDialogs == []
    assert not widget.logic.busy and not widget.logic.canUndo
    assert "removed" in widget.ui.statusLabel.text
    # The new scene: a new volume, a click, a new segmentation.
    pn = widget.logic.getParameterNode()
    assert pn.segmentationNode is None and pn.positivePoints is not None and pn.positivePoints is not old_points
    volume = real_slicer.addVolume(np.random.default_rng(2).normal(100, 10, SHAPE).astype(np.float32), ijk_to_ras(), name="ct")
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert state().errorDialogs == [] and segment_array(env, pn)[15, 15, 15]


def test_install_dependencies_runs_in_the_background_and_a_failure_shows_one_dialog(env, monkeypatch):
    """The Install button starts the torch install on a thread and polls it with QTimer.singleShot; a failed
    pip run becomes one error dialog (never an escaping CalledProcessError), and the button comes back."""
    import threading

    from SAMVolSegmentSlicerLib import dependencies

    threads, release = [], threading.Event()

    def pip(command, onLine):
        threads.append(threading.current_thread())
        onLine("Collecting torch")
        release.wait(5)
        return 1

    monkeypatch.setattr(dependencies.TorchInstallJob, "fromSlicer",
                        classmethod(lambda cls, confirm: cls([["python", "-m", "pip", "install", "torch"]], run=pip)))
    widget = env.make_widget()
    widget.ui.installButton.emit("clicked(bool)", False)
    assert not widget.ui.installButton.enabled and widget.ui.progressBar.visible
    assert state().timers, "the main thread polls instead of waiting"
    release.set()
    widget.settingsPanel._installJob.wait(5)
    while state().timers:
        state().timers.pop(0)()
    assert threads and threads[0] is not threading.current_thread()
    assert len(state().errorDialogs) == 1 and "exited with 1" in state().errorDialogs[0]
    assert widget.ui.installButton.enabled and not widget.ui.progressBar.visible
    assert_clean()


def test_a_label_map_as_input_is_segmented_with_a_warning_in_the_status_line(env):
    """Issue 25: the engine's label-map check reaches the status line; an ordinary image gets no warning."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert "Segment updated" in widget.ui.statusLabel.text and "Warning" not in widget.ui.statusLabel.text
    labels = (np.random.default_rng(1).random(SHAPE) > 0.5).astype(np.float32)
    widget.ui.inputVolumeSelector.setCurrentNode(real_slicer.addVolume(labels, ijk_to_ras(), name="labels"))
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    status = widget.ui.statusLabel.text
    assert status.startswith("Warning: ") and "label map" in status and "Segment updated" in status
