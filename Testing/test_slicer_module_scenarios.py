"""Scenarios of issue 21 on Slicer's real MRML (``slicer-core`` through ``real_slicer``), with the real engine and
a transparent model (``BallModel``: a ball around each click, so where a click lands can be read off the segment).

Every expectation is read back from MRML independently of the module (``real_slicer.segmentArray`` maps voxel
centres through the nodes' own matrices and transforms; ``real_slicer.labelmapArray`` gives a segment as stored).
The bugs of the issue each have a test here that failed on the module before its fix (see the commit messages).
"""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
import real_slicer
from test_slicer_module_real import SHAPE, ball_session, ijk_to_ras

pytestmark = pytest.mark.skipif(not real_slicer.available(), reason="slicer-core is not installed (Python >= 3.10)")


@pytest.fixture
def env():
    slicer = real_slicer.install()
    import SAMVolSegment as module

    env = types.SimpleNamespace(slicer=slicer, module=module, scene=slicer.mrmlScene, logics=[], widgets=[])
    env.volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32), ijk_to_ras())

    def make_logic(factory=ball_session):
        logic = module.SAMVolSegmentLogic()
        logic.sessionFactory = factory
        logic.loadModel()
        env.logics.append(logic)
        return logic

    def make_widget(factory=ball_session):
        return real_slicer.showWidget(module, factory, env.widgets)

    env.make_logic, env.make_widget = make_logic, make_widget
    yield env
    for widget in env.widgets:
        widget.cleanup()
    for logic in env.logics:
        logic.cleanup()


def world_of(volume, kji) -> np.ndarray:
    """World RAS of a voxel centre, from the volume's own IJK -> RAS and parent transforms."""
    k, j, i = kji
    return (real_slicer.ijkToWorld(volume) @ np.array([i, j, k, 1.0]))[:3]


def contains_world(segmentation, segmentID, point) -> bool:
    """Whether the stored segment holds the voxel at a world point (nearest voxel of its own labelmap)."""
    stored, toWorld = real_slicer.labelmapArray(segmentation, segmentID)
    if not stored.size:
        return False
    i, j, k = np.rint((np.linalg.inv(toWorld) @ np.append(point, 1.0))[:3]).astype(int)
    return bool(0 <= k < stored.shape[0] and 0 <= j < stored.shape[1] and 0 <= i < stored.shape[2]
                and stored[k, j, i])


def centroid_world(mask, volume) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return (real_slicer.ijkToWorld(volume) @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3].mean(axis=1)


def oblique_ijk_to_ras() -> np.ndarray:
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    tilt = np.array([[1.0, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)], [0, np.sin(angle / 2), np.cos(angle / 2)]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ tilt @ np.diag([1.2, 1.0, 1.5])
    matrix[:3, 3] = [-20.0, 10.0, -5.0]
    return matrix


def rotation_translation(angle_deg: float, axis: int, shift) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    c, s = np.cos(angle), np.sin(angle)
    a, b = [x for x in range(3) if x != axis]
    matrix = np.eye(4)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    matrix[:3, 3] = shift
    return matrix


# ------------------------------------------------------------------------------------------ geometry
def test_oblique_volume_under_a_parent_transform_click_lands_on_the_voxel(env):
    """Oblique voxels under a rotating + translating parent transform, the segmentation under another transform:
    the click's marker, the engine's click and the segment's voxels are where the voxel is in world RAS."""
    real_slicer.setVolume(env.volume, np.random.default_rng(1).normal(100, 10, SHAPE).astype(np.float32),
                          oblique_ijk_to_ras())
    parent = real_slicer.addLinearTransform(rotation_translation(-15.0, 0, [12.0, -7.0, 30.0]), "parent")
    env.volume.SetAndObserveTransformNodeID(parent.GetID())
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    other = real_slicer.addLinearTransform(rotation_translation(10.0, 2, [-5.0, 3.0, 1.0]), "seg parent")
    segmentation.SetAndObserveTransformNodeID(other.GetID())
    logic = env.make_logic()
    segmentID = logic.setTarget(env.volume, segmentation, "")
    voxel = (14, 17, 12)
    point = world_of(env.volume, voxel)
    logic.addPoint(point, positive=True)
    engineClick = logic.session.clicks[-1].point_ras
    np.testing.assert_allclose(engineClick, point, atol=1e-6)
    mask = real_slicer.segmentArray(segmentation, segmentID, env.volume)
    assert mask[voxel] and contains_world(segmentation, segmentID, point)
    assert 50 < mask.sum() < mask.size // 3
    assert np.linalg.norm(centroid_world(mask, env.volume) - point) < 2.0, "the ball is centred on the click"


def test_volume_moved_after_the_first_click_next_click_lands_at_its_new_place(env):
    """Bug 1 (stale geometry): SegmentIO kept the IJK -> world of its creation; after the volume's parent
    transform moved 40 mm the next click was refused ("outside the input volume"), after 15 mm it landed at
    the old place."""
    transform = real_slicer.addLinearTransform(np.eye(4), "parent")
    env.volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic = env.make_logic()
    segmentID = logic.setTarget(env.volume, segmentation, "")
    first = world_of(env.volume, (15, 15, 8))
    logic.addPoint(first, positive=True)
    for shift in (40.0, 15.0):
        matrix = np.eye(4)
        matrix[0, 3] = shift
        transform.SetMatrixTransformToParent(env.slicer.util.vtkMatrixFromArray(matrix))
        voxel = (15, 15, 22)
        point = world_of(env.volume, voxel)
        logic.addPoint(point, positive=True)
        assert contains_world(segmentation, segmentID, point), f"the click after a {shift} mm move"
        assert real_slicer.segmentArray(segmentation, segmentID, env.volume)[voxel]
        assert contains_world(segmentation, segmentID, first), "the first click's voxels stay where they were"


def test_volume_rotated_after_the_first_click_writes_on_the_stored_grid(env):
    """The parent transform rotates after the first click: the segment stays on the grid it is stored on (now
    oblique to the volume's), the next click's voxels land around the click in world, the first click's stay,
    and undo restores the stored voxels exactly."""
    transform = real_slicer.addLinearTransform(np.eye(4), "parent")
    env.volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic = env.make_logic()
    segmentID = logic.setTarget(env.volume, segmentation, "")
    first = world_of(env.volume, (15, 15, 8))
    logic.addPoint(first, positive=True)
    before, beforeToWorld = real_slicer.labelmapArray(segmentation, segmentID)
    transform.SetMatrixTransformToParent(env.slicer.util.vtkMatrixFromArray(rotation_translation(25.0, 2, [3, 0, 0])))
    voxel = (15, 15, 22)
    point = world_of(env.volume, voxel)
    logic.addPoint(point, positive=True)
    assert contains_world(segmentation, segmentID, point) and contains_world(segmentation, segmentID, first)
    mask = real_slicer.segmentArray(segmentation, segmentID, env.volume)
    assert mask[voxel] and mask[15, 15, 16:].sum() > 5
    logic.undo()
    after, afterToWorld = real_slicer.labelmapArray(segmentation, segmentID)
    np.testing.assert_allclose(afterToWorld, beforeToWorld)
    np.testing.assert_array_equal(after, before)


def test_markers_of_clicks_before_a_volume_move_are_removed_with_their_history(env):
    """Moving the volume restarts the engine's history (the volume is sent again): the earlier clicks cannot be
    undone any more, so their markers go; the click after the move keeps its marker and undoes exactly."""
    transform = real_slicer.addLinearTransform(np.eye(4), "parent")
    env.volume.SetAndObserveTransformNodeID(transform.GetID())
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 8)))
    stored = real_slicer.labelmapArray(pn.segmentationNode, pn.segmentID)
    matrix = np.eye(4)
    matrix[0, 3] = 15.0
    transform.SetMatrixTransformToParent(env.slicer.util.vtkMatrixFromArray(matrix))
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 22)))
    assert pn.positivePoints.GetNumberOfControlPoints() == 1, "the marker of the click before the move is stale"
    widget.onAction("undo")
    assert pn.positivePoints.GetNumberOfControlPoints() == 0 and not widget.logic.canUndo
    after = real_slicer.labelmapArray(pn.segmentationNode, pn.segmentID)
    np.testing.assert_array_equal(after[0], stored[0])
    assert real_slicer.state().errorDialogs == [] and real_slicer.state().errorsInCallbacks == []


def test_volume_spacing_changed_after_the_first_click(env):
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic = env.make_logic()
    segmentID = logic.setTarget(env.volume, segmentation, "")
    logic.addPoint(world_of(env.volume, (15, 15, 15)), positive=True)
    env.volume.SetSpacing(2.0, 1.0, 1.0)
    voxel = (15, 15, 25)
    point = world_of(env.volume, voxel)  # x = -15 + 2 * 25 = 35 mm: outside the old grid
    logic.addPoint(point, positive=True)
    assert real_slicer.segmentArray(segmentation, segmentID, env.volume)[voxel]
    assert contains_world(segmentation, segmentID, point)


def test_voxels_replaced_with_a_new_shape(env):
    """After the volume's voxels are replaced with another shape, every click failed (the cached shape)."""
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic = env.make_logic()
    segmentID = logic.setTarget(env.volume, segmentation, "")
    logic.addPoint(world_of(env.volume, (15, 15, 15)), positive=True)
    real_slicer.setVolume(env.volume, np.random.default_rng(3).normal(100, 10, (20, 34, 40)).astype(np.float32))
    voxel = (10, 30, 36)
    point = world_of(env.volume, voxel)
    logic.addPoint(point, positive=True)
    assert real_slicer.segmentArray(segmentation, segmentID, env.volume)[voxel]


# ------------------------------------------------------------------------------------------ data loss
def test_click_on_a_cropped_volume_keeps_the_segment_outside_the_crop_and_undo_restores_it(env):
    """Bug (data loss): segment A made on the full volume; the input switched to a cropped copy (as Crop Volume
    makes one: the same grid, fewer voxels) with A as target; a click inside the crop erased every voxel of A
    outside it, and undo left A empty."""
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic = env.make_logic()
    segmentID = logic.setTarget(env.volume, segmentation, "")
    logic.addPoint(world_of(env.volume, (15, 15, 6)), positive=True)
    before, beforeToWorld = real_slicer.labelmapArray(segmentation, segmentID)
    full = real_slicer.segmentArray(segmentation, segmentID, env.volume)
    assert full[:, :, :12].sum() > 500, "most of A lies outside the crop"

    cropMatrix = ijk_to_ras()
    cropMatrix[0, 3] += 12.0
    voxels = env.slicer.util.arrayFromVolume(env.volume)[:, :, 12:].copy()
    cropped = real_slicer.addVolume(voxels, cropMatrix, name="ct cropped")
    logic.setTarget(cropped, segmentation, segmentID)
    logic.addPoint(world_of(cropped, (15, 15, 12)), positive=True)  # full-grid voxel (15, 15, 24)

    after = real_slicer.segmentArray(segmentation, segmentID, env.volume)
    np.testing.assert_array_equal(after[:, :, :12], full[:, :, :12], err_msg="voxels outside the crop changed")
    assert after[15, 15, 24], "the click inside the crop segmented"
    logic.undo()
    restored, restoredToWorld = real_slicer.labelmapArray(segmentation, segmentID)
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, segmentID, env.volume), full)
    assert restored.sum() == before.sum()


def oversampled_geometry(env, factor: int = 2) -> str:
    """The Segment Editor's geometry with oversampling: the volume's grid, each voxel split in ``factor``³."""
    slicer = env.slicer
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, SHAPE[2] * factor - 1, 0, SHAPE[1] * factor - 1, 0, SHAPE[0] * factor - 1)
    fine = ijk_to_ras()
    fine[:3, :3] /= factor
    fine[:3, 3] -= 0.5 - 0.5 / factor
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(fine))
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(image), fine


def oversampled_segment(env, detail: np.ndarray, name: str):
    """A segmentation on the 2x oversampled geometry holding one segment ``name`` with the fine voxels ``detail``
    (stored on that fine grid). Returns (segmentation node, segment ID, fine IJK -> world)."""
    slicer = env.slicer
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "fine")
    geometry, fine = oversampled_geometry(env)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    segmentation.GetSegmentation().SetConversionParameter(parameter, geometry)
    segmentID = segmentation.GetSegmentation().AddEmptySegment("", name)
    from SAMVolSegmentSlicerLib import vtk_numpy

    image = vtk_numpy.image_from_array(detail, (0, 0, 0), slicer.vtkOrientedImageData())
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(fine))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation, segmentID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return segmentation, segmentID, fine


def test_oversampled_segmentation_keeps_the_detail_of_its_other_segments(env):
    """Bug (detail loss): a segmentation on a 2x oversampled geometry holds segment X with fine detail; a click
    creating a new target segment resampled the shared layer onto the volume's grid and X lost its detail,
    which undo did not bring back."""
    detail = np.zeros((SHAPE[0] * 2, SHAPE[1] * 2, SHAPE[2] * 2), np.uint8)
    detail[20:40, 20:40, 4:20:2] = 1  # thin sheets, one fine voxel thick: lost on the volume's grid
    segmentation, xID, _fine = oversampled_segment(env, detail, "X")
    storedX, xToWorld = real_slicer.labelmapArray(segmentation, xID)
    assert storedX.sum() == detail.sum()

    logic = env.make_logic()
    pn = logic.getParameterNode()
    pn.otherSegments = env.module.OtherSegments.PROTECT
    targetID = logic.setTarget(env.volume, segmentation, "")
    point = world_of(env.volume, (15, 15, 22))
    logic.addPoint(point, positive=True)
    assert contains_world(segmentation, targetID, point)
    afterX, afterToWorld = real_slicer.labelmapArray(segmentation, xID)
    assert afterX.sum() == detail.sum(), f"X has {afterX.sum()} fine voxels, it had {detail.sum()}"
    np.testing.assert_allclose(afterToWorld[:3, :3], xToWorld[:3, :3], err_msg="X's layer was resampled")
    logic.undo()
    assert real_slicer.labelmapArray(segmentation, xID)[0].sum() == detail.sum()
    assert not contains_world(segmentation, targetID, point)


def edit_after_fine(edit) -> np.ndarray:
    """A RegionEdit's result on the 2x fine grid (each volume voxel's value in its 8 fine voxels)."""
    coarse = np.zeros(SHAPE, bool)
    coarse[tuple(slice(lo, hi) for lo, hi in edit.bbox_kji)] = edit.after
    return coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)


def test_editing_a_segment_of_an_oversampled_segmentation_undo_restores_its_fine_voxels(env):
    """The edited segment itself on the fine grid: fine voxels inside volume voxels the click did not change keep
    their detail (a volume voxel counts as set when any of its fine voxels is), those it changed follow it, and
    undo gives back exactly what was stored."""
    detail = np.zeros((SHAPE[0] * 2, SHAPE[1] * 2, SHAPE[2] * 2), np.uint8)
    detail[10:50, 10:50, 4:56:2] = 1
    segmentation, segmentID, fine = oversampled_segment(env, detail, "edited")
    before, beforeToWorld = real_slicer.labelmapArray(segmentation, segmentID)
    logic = env.make_logic()
    logic.setTarget(env.volume, segmentation, segmentID)
    point = world_of(env.volume, (15, 15, 15))
    logic.addPoint(point, positive=False)
    assert not contains_world(segmentation, segmentID, point), "the negative click removed voxels there"

    def on_fine_grid(stored, toWorld, pad=4):
        """The stored voxels on the fine reference grid (the layer's extent may differ from it)."""
        full = np.zeros(tuple(n + 2 * pad for n in detail.shape), bool)
        i0, j0, k0 = np.rint((np.linalg.inv(fine) @ toWorld)[:3, 3]).astype(int) + pad
        full[k0:k0 + stored.shape[0], j0:j0 + stored.shape[1], i0:i0 + stored.shape[2]] = stored
        return full[pad:-pad, pad:-pad, pad:-pad]

    clicked = on_fine_grid(*real_slicer.labelmapArray(segmentation, segmentID))
    (edit,) = [e for e in logic.session.last_annotation.edits if e.segment_id == segmentID]
    changedCoarse = np.zeros(SHAPE, bool)  # the volume voxels the step changed
    changedCoarse[tuple(slice(lo, hi) for lo, hi in edit.bbox_kji)] = edit.before != edit.after
    assert changedCoarse.any()
    changedFine = changedCoarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # fine voxel (k, j, i) lies in (k//2, ...)
    np.testing.assert_array_equal(clicked[~changedFine], detail[~changedFine] > 0,
                                  err_msg="fine voxels of volume voxels the click did not change")
    assert not clicked[changedFine & ~edit_after_fine(edit)].any()
    logic.undo()
    after, afterToWorld = real_slicer.labelmapArray(segmentation, segmentID)
    assert after.sum() == before.sum()
    np.testing.assert_allclose(afterToWorld, beforeToWorld)
    np.testing.assert_array_equal(after, before)


# ------------------------------------------------------------------------------------------ shared layer cost
def labelmap_import(env, count: int, shape=(96, 128, 128)):
    """A segmentation made by importing a label map with ``count`` labels: one shared labelmap layer
    (vtkSlicerSegmentationsModuleLogic::ImportLabelmapToSegmentationNode)."""
    slicer = env.slicer
    labels = np.zeros(shape, np.uint8)
    side = int(np.ceil(count ** (1 / 3)))
    step = [s // side for s in shape]
    for n in range(count):
        a, b, c = n // (side * side), (n // side) % side, n % side
        labels[a * step[0] + 1:(a + 1) * step[0] - 1, b * step[1] + 1:(b + 1) * step[1] - 1,
               c * step[2] + 1:(c + 1) * step[2] - 1] = n + 1
    volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, shape).astype(np.float32),
                                   np.diag([1.0, 1.0, 1.0, 1.0]), name="big")
    labelNode = env.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    real_slicer.setVolume(labelNode, labels, np.diag([1.0, 1.0, 1.0, 1.0]))
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "imported")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation)
    return volume, segmentation, labels


@pytest.mark.slow
def test_click_and_undo_in_a_large_shared_layer_scale_with_the_segment_not_the_layer(env):
    """A label map import puts every segment in one shared layer, and Slicer's SetBinaryLabelmapToSegment passes
    over the whole layer at each write there (18-50 ms for 1.5-4.7 M voxels here, against 1-2 ms for the segment
    on its own layer). The first write moves the edited segment to its own layer (as Slicer does when segments
    overlap); from then on its writes (undo and redo here) cost what the segment-alone case costs. The other
    segments never change. (A click also reads every other segment's box for the merge: that cost follows the
    number of segments and the box, not the layer.)"""
    volume, segmentation, labels = labelmap_import(env, 60, shape=(128, 192, 192))
    segmentIDs = list(segmentation.GetSegmentation().GetSegmentIDs())
    assert len(segmentIDs) == 60
    layer = segmentation.GetBinaryLabelmapInternalRepresentation(segmentIDs[0])
    assert all(segmentation.GetBinaryLabelmapInternalRepresentation(s) is layer for s in segmentIDs)
    others = {sid: real_slicer.labelmapArray(segmentation, sid)[0].sum() for sid in segmentIDs[1:]}

    def costs(segmentationNode, segmentID):
        """(undo, redo) seconds of a click, the fastest of three, after a first click and its undo. Both are pure
        segment writes (the click's write also reads every other segment's box for the merge)."""
        logic = env.make_logic()
        logic.setTarget(volume, segmentationNode, segmentID)
        point = world_of(volume, (14, 20, 20))
        logic.addPoint(point, positive=True)
        logic.undo()
        undos, redos = [], []
        for _ in range(3):
            logic.addPoint(point, positive=True)
            start = time.perf_counter()
            logic.undo()
            undos.append(time.perf_counter() - start)
            start = time.perf_counter()
            logic.redo()
            redos.append(time.perf_counter() - start)
            logic.undo()
        return min(undos), min(redos)

    alone = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "alone")
    alone.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    aloneID = alone.GetSegmentation().AddEmptySegment("", "alone")
    real_slicer.writeSegment(alone, aloneID, labels == 1, volume)
    aloneUndo, aloneRedo = costs(alone, aloneID)
    sharedUndo, sharedRedo = costs(segmentation, segmentIDs[0])
    assert {sid: real_slicer.labelmapArray(segmentation, sid)[0].sum() for sid in segmentIDs[1:]} == others
    assert sharedUndo < 4 * aloneUndo + 0.01, (sharedUndo, aloneUndo)
    assert sharedRedo < 4 * aloneRedo + 0.01, (sharedRedo, aloneRedo)


# ------------------------------------------------------------------------------------------ markers and observers
def test_a_second_logic_adding_points_is_not_taken_for_a_user_click(env):
    """Bug 2: a second Logic (Reload and Test, a console script) adds a control point with AddControlPointWorld,
    which fires PointPositionDefinedEvent (vtkMRMLMarkupsNode.cxx): the panel's observer took it for a click."""
    from test_slicer_module_propose import proposing_session

    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    console = env.make_logic(proposing_session)
    pn.inputVolume = env.volume
    console.propose("ball")  # shows the proposal's click: a control point added by code
    assert real_slicer.state().errorsInCallbacks == [] and real_slicer.state().errorDialogs == []
    assert pn.positivePoints.GetNumberOfControlPoints() == 1
    assert widget.logic.session is None and not widget.logic.canUndo, "the panel ran a step for it"


def test_reused_control_point_ids_undo_removes_the_right_marker(env):
    """Real markups give a point added after RemoveNthControlPoint the removed point's ID again
    (GenerateUniqueControlPointID counts the points there are); undo must still remove the marker of the step
    undone, for a reused ID and a new one alike."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    points = pn.positivePoints
    real_slicer.placePoint(points, world_of(env.volume, (15, 15, 8)))
    real_slicer.placePoint(points, world_of(env.volume, (15, 15, 22)))
    firstIDs = [points.GetNthControlPointID(i) for i in range(2)]
    widget.onAction("undo")
    assert points.GetNumberOfControlPoints() == 1
    real_slicer.placePoint(points, world_of(env.volume, (15, 8, 15)))
    reused = points.GetNthControlPointID(1)
    assert reused == firstIDs[1], "Slicer reuses the ID (as this test assumes)"
    widget.onAction("undo")
    assert [points.GetNthControlPointID(i) for i in range(points.GetNumberOfControlPoints())] == firstIDs[:1]
    widget.onAction("redo")
    widget.onAction("undo")
    widget.onAction("undo")
    assert points.GetNumberOfControlPoints() == 0
    assert not real_slicer.segmentArray(pn.segmentationNode, pn.segmentID, env.volume).any()
    assert real_slicer.state().errorsInCallbacks == [] and real_slicer.state().errorDialogs == []


def test_target_segment_deleted_elsewhere_next_click_edits_no_other_segment(env):
    """The target segment deleted (Segmentations module, Segment Editor): the selector picks another segment by
    itself (qMRMLSegmentSelectorWidget repopulates); the next click must not edit that one."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    slab = np.zeros(SHAPE, bool)
    slab[:, :, 25:] = True
    liverID = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    real_slicer.writeSegment(segmentation, liverID, slab, env.volume)
    pn.segmentationNode = segmentation
    widget.ui.segmentSelector.setCurrentNode(segmentation)
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 8)))
    target = pn.segmentID
    assert target and target != liverID
    segmentation.GetSegmentation().RemoveSegment(target)
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 20)))
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, liverID, env.volume), slab)
    assert pn.segmentID != liverID, "the next click went to a new segment"
    assert real_slicer.state().errorsInCallbacks == []


# ------------------------------------------------------------------------------------------ scene save / load
@pytest.mark.parametrize("bundle", [False, True], ids=["mrml", "mrb"])
def test_save_clear_reload_and_continue_clicking(env, tmp_path, bundle):
    """Save the scene (.mrml with .nrrd/.seg.nrrd/.mrk.json, or one .mrb), close it, load it again while the
    panel is shown, and go on clicking: the segment keeps its voxels and the loaded point lists are observed."""
    slicer = env.slicer
    scene = env.scene
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 8)))
    saved = real_slicer.segmentArray(pn.segmentationNode, pn.segmentID, env.volume)
    assert saved.any()
    path = real_slicer.saveScene(tmp_path / ("scene.mrb" if bundle else "scene"))
    scene.Clear(0)
    assert widget.logic.getParameterNode().segmentationNode is None
    real_slicer.loadScene(path)
    assert real_slicer.state().errorsInCallbacks == []
    pn = widget.logic.getParameterNode()
    volume, segmentation = pn.inputVolume, pn.segmentationNode
    assert volume is not None and segmentation is not None and pn.segmentID
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, pn.segmentID, volume), saved)
    segmentIDBefore = pn.segmentID
    real_slicer.placePoint(pn.positivePoints, world_of(volume, (15, 15, 22)))
    assert real_slicer.state().errorsInCallbacks == [] and real_slicer.state().errorDialogs == []
    mask = real_slicer.segmentArray(segmentation, pn.segmentID, volume)
    assert pn.segmentID == segmentIDBefore
    assert mask[15, 15, 22] and mask[15, 15, 8], "the click after loading edits the loaded segment"
    assert slicer.util.getNodesByClass("vtkMRMLSegmentationNode") == [segmentation]


# ------------------------------------------------------------------------------------------ self-test
@pytest.mark.slow
def test_the_in_slicer_self_test_runs_end_to_end_on_the_real_core(env):
    """SAMVolSegment/Testing/Python/SAMVolSegmentSelfTest.py (Reload and Test) with the bundled model on real MRML:
    click -> segment -> undo -> redo -> box -> next segment under Protect, edit an existing segment, lasso and
    scribble -> undo, the console segmentVolume path, propose -> refine -> undo -> redo, on an oblique phantom
    under a parent transform. Its
    helpers read and write segments transform-safe (slicer.util's labelmap helpers double the transform)."""
    pytest.importorskip("torch")
    import unittest

    from test_slicer_module_real import load_self_test

    module = load_self_test()
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(module.SAMVolSegmentSelfTest).run(result)
    assert result.testsRun == 5 and not result.skipped
    assert not result.errors and not result.failures, (result.errors + result.failures)[0][1]
    assert real_slicer.state().errorsInCallbacks == []


@pytest.mark.slow
def test_a_plain_script_outside_pytest_runs_the_logic_on_real_nodes(tmp_path):
    """``real_slicer.install()`` is all a script needs: ``import SAMVolSegment`` and ``SAMVolSegmentLogic()`` on a
    real volume and segmentation, one click, read back from MRML."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(Path(__file__).parent)!r}]\n"
        "import numpy as np\n"
        "import real_slicer\n"
        "slicer = real_slicer.install()\n"
        "import SAMVolSegment\n"
        "from test_slicer_module_real import ball_session\n"
        "logic = SAMVolSegment.SAMVolSegmentLogic()\n"
        "logic.sessionFactory = ball_session\n"
        "logic.loadModel()\n"
        "volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, (20, 20, 20)).astype(np.float32))\n"
        "segmentation = slicer.mrmlScene.AddNewNodeByClass('vtkMRMLSegmentationNode')\n"
        "segmentID = logic.setTarget(volume, segmentation, '')\n"
        "logic.addPoint([10.0, 10.0, 10.0])\n"
        "print(type(segmentation).__module__, int(real_slicer.segmentArray(segmentation, segmentID, volume)[10, 10, 10]))\n"
        "logic.cleanup()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["slicer_core.MRMLCore", "1"], done.stdout


# ------------------------------------------------------------------------------------------ probable bugs (issue 21)
def test_markers_of_a_dropped_history_are_removed_when_the_volume_or_model_changes(env):
    """A new input volume or a new model starts a new engine history: the locked markers of the old one can no
    longer be undone and must not stay behind as stale prompts (a backend change already removed them)."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 15)))
    assert pn.positivePoints.GetNumberOfControlPoints() == 1 and widget.logic.canUndo
    other = real_slicer.addVolume(np.random.default_rng(5).normal(100, 10, SHAPE).astype(np.float32), ijk_to_ras(),
                                  name="mr")
    widget.ui.inputVolumeSelector.setCurrentNode(other)
    assert pn.positivePoints.GetNumberOfControlPoints() == 0, "stale marker after a volume change"
    real_slicer.placePoint(pn.positivePoints, world_of(other, (15, 15, 15)))
    assert pn.positivePoints.GetNumberOfControlPoints() == 1 and widget.logic.canUndo
    widget.logic.modelSource = "another model"  # as the settings panel sets it
    real_slicer.placePoint(pn.negativePoints, world_of(other, (15, 15, 20)))
    assert pn.positivePoints.GetNumberOfControlPoints() == 0, "stale marker after a model change"
    assert pn.negativePoints.GetNumberOfControlPoints() == 1, "the click that loaded the new model keeps its marker"
    widget.logic.modelSource = "a third model"
    widget.onAction("box")
    real_slicer.placeROICorners(pn.boxROI, world_of(other, (8, 8, 8)), world_of(other, (22, 22, 22)))
    assert pn.negativePoints.GetNumberOfControlPoints() == 0, "stale marker after a model change"
    assert pn.boxROI.GetNumberOfControlPoints() > 0, "the box that loaded the new model stays drawn"
    assert widget.logic.canUndo
    assert real_slicer.state().errorDialogs == [] and real_slicer.state().errorsInCallbacks == []


def test_an_error_dialog_comes_after_the_progress_dialog_closed(env):
    """A step that fails after its progress dialog appeared: the dialog is closed before the error is shown,
    so the error is never hidden behind (or blocked by) a modal progress dialog."""
    from test_session_initial_mask import BallModel

    from SAMVolSegmentLib.engine.session import InteractiveSession

    holder = {}

    class SlowFailingSession(InteractiveSession):
        def add_click(self, point_ras, positive=True):
            holder["widget"].progress.onSlow(2.5, 0.5, "Encoding")  # the worker's slow callback, 2.5 s in
            raise RuntimeError("engine failed")

    widget = env.make_widget(lambda *a: SlowFailingSession(BallModel(), auto_extend=False))
    holder["widget"] = widget
    real_slicer.placePoint(widget.logic.getParameterNode().positivePoints, world_of(env.volume, (15, 15, 15)))
    state = real_slicer.state()
    assert len(state.errorDialogs) == 1 and state.progressDialogs
    assert state.errorDialogsWithProgressOpen == [0], "the error dialog opened over the progress dialog"


def test_the_category_uses_slicers_module_category_translation_context(env):
    """Module categories are translated in the context "qSlicerAbstractCoreModule" (Slicer's module template,
    Utilities/Templates/Modules/Scripted/TemplateKey.py), so that "Segmentation" joins Slicer's own category in a
    translated Slicer instead of making a second one."""
    parent = types.SimpleNamespace()
    env.module.SAMVolSegment(parent)
    assert ("qSlicerAbstractCoreModule", "Segmentation") in real_slicer.state().translations
    assert parent.categories == ["Segmentation"]


def test_cleanup_while_a_step_runs_ends_cleanly(env):
    """The module is cleaned up (Slicer closing, Reload) while a click is being computed and events are pumped:
    the cleanup closed the session under the running step ("The previous step is still running" dialog, worker
    left running); now it waits for the step, which ends normally, then releases session and worker."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    widget.onLoadModel()
    session = widget.logic.session
    original = session.add_click
    cleaned = []

    def slow_click(*args, **kwargs):
        time.sleep(0.2)
        return original(*args, **kwargs)

    def pump():
        if not cleaned:
            cleaned.append(True)
            widget.cleanup()

    session.add_click = slow_click
    widget.logic.processEvents = pump
    real_slicer.placePoint(pn.positivePoints, world_of(env.volume, (15, 15, 15)))
    assert cleaned
    assert real_slicer.state().errorsInCallbacks == [] and real_slicer.state().errorDialogs == []
    assert not widget.logic.busy and widget.logic.session is None
    assert not widget.logic.worker.thread.is_alive()
    assert real_slicer.segmentArray(pn.segmentationNode, pn.segmentID, env.volume)[15, 15, 15]
