"""``SAMVolSegmentLogic.segmentVolume`` (the console/batch path) on Slicer's real MRML (``real_slicer``), on a real model.

The model is a frozen copy of the bundled default (training may replace the original while tests run). The
reference is always the engine's own Python API, ``SAMVolSegmentLib.segment``, on the same voxels, IJK → world
matrix and prompts: the Logic must give the same mask, write it into a new segment, leave every other segment
and the interactive session alone, and change nothing when the input is bad. The README's Slicer-console loop
runs here too, word for word.
"""

from __future__ import annotations

import re
import shutil
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import real_slicer
import vtk

torch = pytest.importorskip("torch")

from SAMVolSegmentLib import batch, segment  # noqa: E402
from SAMVolSegmentLib.errors import InvalidPromptError  # noqa: E402
from SAMVolSegmentLib.model import load_model  # noqa: E402
from SAMVolSegmentLib.model.registry import resolve_model_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 40, 36)  # (k, j, i)
CENTRE_IJK = np.array([18.0, 20.0, 16.0])
SPACING_IJK = np.array([1.2, 1.0, 1.5])
RADIUS_MM = 9.0

pytestmark = pytest.mark.skipif(not real_slicer.available(), reason="slicer-core is not installed (Python >= 3.10)")


def ijk_to_ras() -> np.ndarray:
    """An oblique grid: spacing 1.2 × 1.0 × 1.5 mm, rotated about S, off the origin."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(SPACING_IJK)
    matrix[:3, 3] = [-20.0, 10.0, -5.0]
    return matrix


def parent_to_world() -> np.ndarray:
    """The volume's parent transform: a rotation about R and a translation (as the self-test's phantom)."""
    transform = vtk.vtkTransform()
    transform.Translate(12.0, -7.0, 30.0)
    transform.RotateX(-15.0)
    return np.array([[transform.GetMatrix().GetElement(r, c) for c in range(4)] for r in range(4)])


def phantom() -> np.ndarray:
    k, j, i = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((i, j, k), CENTRE_IJK, SPACING_IJK)))
    noise = np.random.default_rng(0).normal(0, 5, SHAPE)
    return (np.where(dist < RADIUS_MM, 300.0, 20.0) + noise).astype(np.float32)


IJK_TO_WORLD = parent_to_world() @ ijk_to_ras()
CENTRE_WORLD = (IJK_TO_WORLD @ np.append(CENTRE_IJK, 1.0))[:3]
#: One positive click at the ball's centre and a negative one 5 mm off it (inside the volume).
POINTS = np.array([CENTRE_WORLD, CENTRE_WORLD + [0.0, 0.0, 5.0]])
LABELS = [1, 0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "default_snapshot.pt"
    shutil.copyfile(resolve_model_path("default"), path)
    return load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def expected(model) -> np.ndarray:
    """The engine's API on the same voxels, world geometry and prompts: what segmentVolume must write."""
    mask = segment(phantom(), POINTS, LABELS, model=model, ijk_to_ras=IJK_TO_WORLD)
    assert mask.shape == SHAPE and 100 < mask.sum() < mask.size // 4, "the phantom must give a real mask"
    return mask > 0


#: The phantom volume of the running test (the grid ``segment_mask`` reads on).
CURRENT = types.SimpleNamespace(volume=None)


@pytest.fixture
def env(model):
    slicer = real_slicer.install()
    import SAMVolSegment as module

    env = types.SimpleNamespace(slicer=slicer, module=module, scene=slicer.mrmlScene, logics=[], loads=[])
    transform = real_slicer.addLinearTransform(parent_to_world(), "parent")
    env.transform = transform
    env.volume = real_slicer.addVolume(phantom(), ijk_to_ras(), name="ct")
    env.volume.SetAndObserveTransformNodeID(transform.GetID())
    CURRENT.volume = env.volume

    def make_logic():
        logic = module.SAMVolSegmentLogic()

        def model_factory(source, device, download, progress):
            env.loads.append((source, device, threading.current_thread()))
            return model

        logic.modelFactory = model_factory
        env.logics.append(logic)
        return logic

    env.make_logic = make_logic
    yield env
    for logic in env.logics:
        logic.cleanup()


def segment_mask(segmentationNode, segmentID, volume=None) -> np.ndarray:
    """A segment at the voxels of ``volume`` (default: the transformed phantom), read independently of the module."""
    volume = volume if volume is not None else CURRENT.volume
    return real_slicer.segmentArray(segmentationNode, segmentID, volume)


def add_segment(segmentationNode, name: str, mask: np.ndarray) -> str:
    """A segment written as Slicer stores one: a labelmap on the volume's grid (as the module writes)."""
    segmentID = segmentationNode.GetSegmentation().AddEmptySegment("", name)
    real_slicer.writeSegment(segmentationNode, segmentID, mask, CURRENT.volume)
    return segmentID


def snapshot(segmentationNode):
    """Everything a write could change: segment IDs, names, statuses, voxels, reference geometry."""
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    status = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentStatus
    geometry = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    return ({sid: (segmentation.GetSegment(sid).GetName(), status(segmentation.GetSegment(sid)),
                   segment_mask(segmentationNode, sid).copy()) for sid in segmentation.GetSegmentIDs()},
            {geometry: segmentation.GetConversionParameter(geometry)})


def node_ids(scene):
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def assert_same(before, after) -> None:
    assert list(before[0]) == list(after[0]) and before[1] == after[1]
    for sid, (name, status, voxels) in before[0].items():
        assert after[0][sid][:2] == (name, status)
        np.testing.assert_array_equal(after[0][sid][2], voxels, err_msg=f"segment {sid} changed")


# ------------------------------------------------------------------------------------------ same path
def test_segment_volume_writes_the_batch_api_mask_on_a_transformed_volume(env, expected, monkeypatch):
    logic = env.make_logic()
    calls = []
    original = batch.segment_volume

    def spy(*args, **kwargs):
        calls.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, "segment_volume", spy)
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentID = logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, segmentName="ball", device="cpu")

    np.testing.assert_array_equal(segment_mask(segmentation, segmentID), expected)
    assert calls == [logic.worker.thread], "the batch path runs once, on the Logic's worker thread"
    assert [(s, d) for s, d, _t in env.loads] == [("default", "cpu")]
    assert env.loads[0][2] is logic.worker.thread, "the model is loaded on the worker too"
    segment = segmentation.GetSegmentation().GetSegment(segmentID)
    assert segment.GetName() == "ball"
    segmentationsLogic = env.slicer.vtkSlicerSegmentationsModuleLogic
    assert segmentationsLogic.GetSegmentStatus(segment) == segmentationsLogic.Completed
    geometry = env.slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentation.GetSegmentation().GetConversionParameter(geometry), \
        "a segmentation without geometry gets the volume's"
    assert {"resample_s", "encode_s", "write_s", "total_s"} <= set(logic.lastTiming)
    assert not logic.busy and logic.session is None, "no interactive session was started"


def test_segment_volume_takes_lassos_and_scribbles_as_the_batch_api_does(env, model):
    """A lasso alone (no points) and a negative scribble, on the transformed volume: the engine API's mask."""
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    axes = IJK_TO_WORLD[:3, :2] / np.linalg.norm(IJK_TO_WORLD[:3, :2], axis=0)  # the volume's i and j directions
    lasso = CENTRE_WORLD + 0.8 * RADIUS_MM * (np.cos(t)[:, None] * axes[:, 0] + np.sin(t)[:, None] * axes[:, 1])
    scribble = CENTRE_WORLD + np.outer([-4.0, 4.0], axes[:, 0]) + 6.0 * axes[:, 1]
    prompts = dict(lassos=[(lasso, True)], scribbles=[(scribble, False)])
    expected = segment(phantom(), [], [], model=model, ijk_to_ras=IJK_TO_WORLD, **prompts) > 0
    assert expected.sum() > 100
    logic = env.make_logic()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentID = logic.segmentVolume(env.volume, segmentation, [], [], device="cpu", **prompts)
    np.testing.assert_array_equal(segment_mask(segmentation, segmentID), expected)
    with pytest.raises(InvalidPromptError, match="no points and no box"):
        logic.segmentVolume(env.volume, segmentation, [], [], device="cpu", scribbles=[(scribble, False)])


def test_other_segments_never_change_overlap_and_protect(env, expected):
    logic = env.make_logic()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    liver = np.zeros(SHAPE, bool)
    liver[:, :, :18] = True  # half of the ball and more
    liverID = add_segment(segmentation, "liver", liver)
    other = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    otherID = add_segment(other, "kidney", ~liver)
    before, beforeOther = snapshot(segmentation), snapshot(other)

    protectID = logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, device="cpu", otherSegments="protect")
    protected = expected & ~liver
    assert protected.any() and (expected & liver).any()
    np.testing.assert_array_equal(segment_mask(segmentation, protectID), protected)  # leaves the liver out
    overlapID = logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, device="cpu")
    np.testing.assert_array_equal(segment_mask(segmentation, overlapID), expected)  # the default may overlap

    after = snapshot(segmentation)
    assert list(after[0]) == [liverID, protectID, overlapID]
    np.testing.assert_array_equal(after[0][liverID][2], before[0][liverID][2])
    np.testing.assert_array_equal(segment_mask(segmentation, protectID), protected)
    assert_same(beforeOther, snapshot(other))
    assert list(other.GetSegmentation().GetSegmentIDs()) == [otherID]
    assert len(env.loads) == 1, "the model is loaded once for both calls"


# ------------------------------------------------------------------------------------------ bad input
BAD_PROMPTS = {
    "no point and no box": ([], [], None, InvalidPromptError, "no points and no box"),
    "only negative points": ([CENTRE_WORLD], [0], None, InvalidPromptError, "positive point"),
    "fewer labels than points": (POINTS, [1], None, InvalidPromptError, "2 points but 1"),
    "a label that is not 0/1": ([CENTRE_WORLD], [2], None, InvalidPromptError, "True/False or 1/0"),
    "a label given as text": ([CENTRE_WORLD], ["yes"], None, InvalidPromptError, "True/False or 1/0"),
    "a NaN coordinate": ([[np.nan, 0.0, 0.0]], [1], None, InvalidPromptError, "finite"),
    "points that are not 3D": ([[1.0, 2.0]], [1], None, InvalidPromptError, "(N, 3)"),
    "a box with one corner": ([], [], [[0.0, 0.0, 0.0]], InvalidPromptError, "two RAS corners"),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS), ids=lambda c: c.replace(" ", "-"))
def test_bad_prompts_change_nothing_and_load_nothing(env, case):
    points, labels, box, error, text = BAD_PROMPTS[case]
    logic = env.make_logic()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    add_segment(segmentation, "liver", np.ones(SHAPE, bool))
    before, nodes = snapshot(segmentation), node_ids(env.scene)
    with pytest.raises(error, match=re.escape(text)):
        logic.segmentVolume(env.volume, segmentation, points, labels, box=box)
    assert_same(before, snapshot(segmentation))
    assert node_ids(env.scene) == nodes and env.loads == [] and not logic.busy


def test_bad_targets_change_nothing_and_load_nothing(env):
    from SAMVolSegmentSlicerLib import backend, segment_io

    logic = env.make_logic()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    add_segment(segmentation, "liver", np.ones(SHAPE, bool))
    before = snapshot(segmentation)
    empty = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image data")

    with pytest.raises(ValueError, match="image data"):
        logic.segmentVolume(empty, segmentation, POINTS, LABELS)
    with pytest.raises(ValueError, match="segmentation node"):
        logic.segmentVolume(env.volume, None, POINTS, LABELS)
    with pytest.raises(ValueError, match="never changes other segments"):
        logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, otherSegments="overwrite")
    with pytest.raises(ValueError, match="OVERLAP or"):
        logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, otherSegments="merge")
    warp = real_slicer.addThinPlateSplineTransform("warp")
    env.volume.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(ValueError, match="non-linear transform"):
        logic.segmentVolume(env.volume, segmentation, POINTS, LABELS)
    env.volume.SetAndObserveTransformNodeID(env.transform.GetID())
    surface = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "from a model")
    surface.GetSegmentation().SetSourceRepresentationName(
        env.slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
    with pytest.raises(segment_io.SegmentWriteError, match="Binary labelmap"):
        logic.segmentVolume(env.volume, surface, POINTS, LABELS)
    assert surface.GetSegmentation().GetNumberOfSegments() == 0
    logic.backend = backend.Backend(kind=backend.REMOTE, url="https://gpu-box:8765")
    with pytest.raises(ValueError, match="its own model"):
        logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, model="sam-med3d-turbo")

    assert_same(before, snapshot(segmentation))
    assert env.loads == [] and not logic.busy


def test_a_point_outside_the_volume_fails_after_the_model_and_writes_nothing(env):
    logic = env.make_logic()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    before = snapshot(segmentation)
    with pytest.raises(InvalidPromptError, match="outside"):
        logic.segmentVolume(env.volume, segmentation, [CENTRE_WORLD + [0.0, 0.0, 500.0]], [1], device="cpu")
    assert_same(before, snapshot(segmentation))
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0 and not logic.busy


def test_a_refused_write_removes_the_new_segment(env):
    from SAMVolSegmentSlicerLib import segment_io

    logic = env.make_logic()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    add_segment(segmentation, "liver", np.zeros(SHAPE, bool))
    before = snapshot(segmentation)
    with real_slicer.refusingWrites(), pytest.raises(segment_io.SegmentWriteError, match="refused"):
        logic.segmentVolume(env.volume, segmentation, POINTS, LABELS, device="cpu")
    (geometry,) = before[1]
    before[1][geometry] = segmentation.GetSegmentation().GetConversionParameter(geometry)
    assert_same(before, snapshot(segmentation))


# ------------------------------------------------------------------------------------------ with the GUI
def test_interactive_session_shares_the_model_and_keeps_its_history(env, expected):
    """A click in the module, then segmentVolume on another segmentation: one model load for both (device
    "auto" is "cpu" here), and the click's segment can still be undone."""
    widget = env.module.SAMVolSegmentWidget()
    widget.setup()
    widget.enter()
    logic = widget.logic
    logic.modelFactory = env.make_logic().modelFactory
    env.logics.append(logic)
    pn = logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE_WORLD)
    assert real_slicer.state().errorDialogs == [] and logic.canUndo
    clicked = segment_mask(pn.segmentationNode, pn.segmentID).copy()
    assert clicked.any()

    console = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "console")
    newID = logic.segmentVolume(env.volume, console, POINTS, LABELS)
    np.testing.assert_array_equal(segment_mask(console, newID), expected)
    assert [(s, d) for s, d, _t in env.loads] == [("default", "auto")], "one load, shared"
    np.testing.assert_array_equal(segment_mask(pn.segmentationNode, pn.segmentID), clicked)
    assert logic.canUndo
    widget.onAction("undo")
    assert real_slicer.state().errorDialogs == []
    assert not segment_mask(pn.segmentationNode, pn.segmentID).any()
    np.testing.assert_array_equal(segment_mask(console, newID), expected)
    widget.cleanup()


# ------------------------------------------------------------------------------------------ README
def readme_console_example() -> str:
    """The README's Slicer-console loop (the python block that calls logic.segmentVolume)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "logic.segmentVolume" in b]
    assert len(blocks) == 1, "the README has one Slicer-console segmentVolume example"
    return blocks[0]


def test_readme_console_example_segments_each_volume_from_its_markups(env, expected, model, capsys):
    logic = env.make_logic()
    real_slicer.registerWidget(types.SimpleNamespace(logic=logic))
    env.volume.SetName("ct")
    prompts = env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ct prompts")
    prompts.AddControlPoint(list(POINTS[0]), "F-1")
    prompts.AddControlPoint(list(POINTS[1]), "neg-1")

    second = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mr")  # no parent transform
    real_slicer.setVolume(second, phantom()[::-1].copy(), ijk_to_ras())
    mrPoint = (ijk_to_ras() @ np.append(CENTRE_IJK * [1, 1, 0] + [0, 0, SHAPE[0] - 1 - CENTRE_IJK[2]], 1.0))[:3]
    env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "mr prompts").AddControlPoint(list(mrPoint), "F-1")

    real_slicer.addVolume(phantom(), ijk_to_ras(), name="pet")
    env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pet prompts").AddControlPoint(list(mrPoint), "neg")
    # A labelmap volume (a subclass of vtkMRMLScalarVolumeNode) with prompts, and a volume without: both skipped.
    labels = env.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    real_slicer.setVolume(labels, np.zeros(SHAPE, np.uint8), ijk_to_ras())
    env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "labels prompts").AddControlPoint(list(mrPoint))
    real_slicer.addVolume(phantom(), ijk_to_ras(), name="no prompts")

    exec(compile(readme_console_example(), "README.md", "exec"), {"slicer": env.slicer})

    out = capsys.readouterr().out
    segmentations = {n.GetName(): n for n in env.slicer.util.getNodesByClass("vtkMRMLSegmentationNode")}
    assert set(segmentations) == {"ct SAM", "mr SAM"}, "pet failed (only a negative point) and was removed"
    assert "pet skipped" in out and "positive point" in out
    (ctID,) = segmentations["ct SAM"].GetSegmentation().GetSegmentIDs()
    assert segmentations["ct SAM"].GetSegmentation().GetSegment(ctID).GetName() == "structure"
    np.testing.assert_array_equal(segment_mask(segmentations["ct SAM"], ctID), expected)
    (mrID,) = segmentations["mr SAM"].GetSegmentation().GetSegmentIDs()
    mrExpected = segment(env.slicer.util.arrayFromVolume(second), [mrPoint], [True], model=model, ijk_to_ras=ijk_to_ras()) > 0
    assert mrExpected.any()
    np.testing.assert_array_equal(segment_mask(segmentations["mr SAM"], mrID, second), mrExpected)
    assert len(env.loads) == 1, "the module's model is loaded once for the whole loop"
