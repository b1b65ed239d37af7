"""The module's *Propose* control (issue 13) on Slicer's real MRML (``real_slicer``: slicer-core, Qt stand-ins), on the real engine.

The model is ``BallModel`` (test_session_initial_mask: the mask prompt plus a ±ball around each click) with a
transparent proposal head: class ``ball`` is a ball of radius 2 low-res voxels (12 mm) in the middle of the
ROI, class ``absent`` is nothing. So every expectation can be read off the engine's own rules: the proposal
lands in the target segment as one step of the module's history, a click after it changes it only near the
click, undo/redo restore segment and markers, and a proposal that fails changes nothing.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import real_slicer
from test_slicer_module_real import CENTRE, SHAPE, assert_clean, ijk_to_ras, segment_array, state

torch = pytest.importorskip("torch")

from test_session_initial_mask import BallModel  # noqa: E402

from SAMVolSegmentLib.engine.session import InteractiveSession  # noqa: E402
from SAMVolSegmentLib.errors import InvalidPromptError  # noqa: E402

LOW = BallModel.config.low_res_size
CLASSES = ("ball", "absent")
#: The proposal's click: the deepest point of the ball, in world RAS (the engine's choice, see the probe test).
PROPOSAL_CLICK = np.array([-3.5, -3.5, -3.5])
NEAR_EDGE = (15, 15, 4)  # (k, j, i): inside the proposed ball, 11 mm from CENTRE

pytestmark = pytest.mark.skipif(not real_slicer.available(), reason="slicer-core is not installed (Python >= 3.10)")


class BallHead(torch.nn.Module):
    """A proposal head (``ProposalHead``'s interface): ``ball`` everywhere within 2 low-res voxels of the ROI's
    centre, ``absent`` nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(classes=CLASSES)

    def forward(self, embedding):
        grid = torch.stack(torch.meshgrid(*(torch.arange(LOW, dtype=torch.float32),) * 3, indexing="ij"), -1)
        logits = torch.full((1, len(CLASSES), LOW, LOW, LOW), -10.0)
        logits[0, 0][(grid - (LOW - 1) / 2).norm(dim=-1) <= 2.0] = 10.0
        return logits[:, :, ::2, ::2, ::2], logits


class ProposingBallModel(BallModel):
    model_id = "test:ball+head"

    def __init__(self) -> None:
        super().__init__()
        self.proposal_head = BallHead()


def proposing_session(*_args) -> InteractiveSession:
    return InteractiveSession(ProposingBallModel(), auto_extend=False)


class AdaptedBallModel(ProposingBallModel):
    """As if taught with adapter scope "all": its clicks are tuned to its classes (the engine's rule reads this)."""

    decoder_adapter_on_every_click = True


def plain_session(*_args) -> InteractiveSession:
    return InteractiveSession(BallModel(), auto_extend=False)


def volume_array() -> np.ndarray:
    return np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def proposal() -> np.ndarray:
    """The engine's own proposal of ``ball`` on the test volume: what the segment must hold after Propose."""
    with proposing_session() as session:
        session.set_volume(volume_array(), ijk_to_ras())
        session.propose("ball")
        np.testing.assert_allclose(session.clicks[0].point_ras, PROPOSAL_CLICK)
        mask = session.mask_array_kji() > 0
    assert mask[15, 15, 15] and mask[NEAR_EDGE] and not mask[2, 2, 2] and 1000 < mask.sum() < mask.size // 2
    return mask


@pytest.fixture
def env():
    slicer = real_slicer.install()
    import SAMVolSegment as module

    env = types.SimpleNamespace(slicer=slicer, module=module, scene=slicer.mrmlScene, widgets=[])
    env.volume = real_slicer.addVolume(volume_array(), ijk_to_ras(), name="ct")

    def make_widget(factory=proposing_session, load=True):
        widget = module.SAMVolSegmentWidget()
        widget.setup()
        widget.enter()
        widget.logic.sessionFactory = factory
        env.widgets.append(widget)
        if load:
            widget.onLoadModel()
        return widget

    env.make_widget = make_widget
    yield env
    for widget in env.widgets:
        widget.cleanup()


def press_propose(widget, className: str = "ball") -> None:
    """The user picks the class and presses Propose (through the button's connection)."""
    combo = widget.ui.proposeClassComboBox
    combo.setCurrentIndex(combo.findData(className))
    widget.ui.proposeButton.emit("clicked(bool)")


def points(node):
    """(position, locked, visible, label) of each control point."""
    result = []
    for index in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        result.append((tuple(position), node.GetNthControlPointLocked(index),
                       node.GetNthControlPointVisibility(index), node.GetNthControlPointLabel(index)))
    return result


def visible_points(node) -> int:
    return sum(node.GetNthControlPointVisibility(index) for index in range(node.GetNumberOfControlPoints()))


# ------------------------------------------------------------------------------------------ class list
def test_the_class_list_comes_from_the_loaded_model_and_follows_model_and_backend(env):
    widget = env.make_widget(load=False)
    combo, button = widget.ui.proposeClassComboBox, widget.ui.proposeButton
    assert combo.items == [] and not combo.enabled and not button.enabled
    assert "Load the model" in combo.toolTip and "samvolseg teach" in combo.toolTip

    widget.onLoadModel()
    assert [data for _text, data in combo.items] == list(CLASSES) and combo.currentData == "ball"
    assert combo.enabled and button.enabled and "without a click" in button.toolTip
    assert "ball, absent" in widget.ui.statusLabel.text and "tuned" not in widget.ui.statusLabel.text
    combo.setCurrentIndex(combo.findData("absent"))

    # Another model (a new session on the next load) without a head: nothing to propose, and the tooltip says why.
    widget.logic.sessionFactory = plain_session
    ui = widget.ui
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData("sam-med3d-turbo"))
    widget.onLoadModel()
    assert combo.items == [] and not combo.enabled and not button.enabled
    assert "no proposal head" in combo.toolTip and "structure.pt" in combo.toolTip

    # Back to a model with a head: the list comes back; then another backend closes the session: empty again.
    widget.logic.sessionFactory = proposing_session
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData("default"))
    widget.onLoadModel()
    assert [data for _text, data in combo.items] == list(CLASSES)
    ui.backendComboBox.setCurrentIndex(ui.backendComboBox.findData("remote"))
    assert widget.logic.session is None and combo.items == [] and not button.enabled
    assert "Load the model" in combo.toolTip
    assert_clean()
    assert state().errorDialogs == []


def test_loading_a_model_whose_clicks_are_tuned_to_its_structures_says_so(env):
    widget = env.make_widget(factory=lambda *_args: InteractiveSession(AdaptedBallModel(), auto_extend=False))
    status = widget.ui.statusLabel.text
    assert "tuned to ball, absent" in status and "load the base model" in status
    assert state().errorDialogs == []


# ------------------------------------------------------------------------------------------ the step
def test_propose_lands_in_the_target_segment_as_one_undoable_step(env, proposal):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    press_propose(widget)
    assert_clean()
    assert state().errorDialogs == []
    assert pn.segmentationNode is not None and pn.segmentID
    assert widget.ui.segmentSelector.currentSegmentID() == pn.segmentID
    np.testing.assert_array_equal(segment_array(env, pn), proposal)
    assert "Segment updated" in widget.ui.statusLabel.text
    # The engine's click is shown: one locked positive point at the proposal's deepest point, named after the class.
    assert points(pn.positivePoints) == [(tuple(PROPOSAL_CLICK), True, True, "ball")]
    assert len(widget.logic.session.clicks) == 1 and widget.logic.canUndo and widget.ui.undoButton.enabled

    widget.onAction("undo")
    assert not segment_array(env, pn).any() and pn.positivePoints.GetNumberOfControlPoints() == 0
    assert widget.logic.canRedo and not widget.logic.canUndo
    widget.onAction("redo")
    np.testing.assert_array_equal(segment_array(env, pn), proposal)
    assert points(pn.positivePoints) == [(tuple(PROPOSAL_CLICK), True, True, "ball")]
    widget.onAction("undo")  # the marker re-created by redo has a new ID; undo must find that one
    assert pn.positivePoints.GetNumberOfControlPoints() == 0 and not segment_array(env, pn).any()
    assert_clean()


def test_a_click_after_propose_refines_it_near_the_click(env, proposal):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    press_propose(widget)
    real_slicer.placePoint(pn.negativePoints, CENTRE)
    assert_clean()
    assert state().errorDialogs == []
    refined = segment_array(env, pn)
    assert not refined[15, 15, 15], "the negative click removes the proposal there"
    assert refined[NEAR_EDGE], "and keeps it away from the click"
    assert np.count_nonzero(refined & ~proposal) < np.count_nonzero(proposal & ~refined)
    assert len(widget.logic.session.clicks) == 2
    assert pn.positivePoints.GetNumberOfControlPoints() == 1 and pn.negativePoints.GetNumberOfControlPoints() == 1

    widget.onAction("undo")  # back to the proposal: the click's marker goes, the proposal's stays
    np.testing.assert_array_equal(segment_array(env, pn), proposal)
    assert pn.negativePoints.GetNumberOfControlPoints() == 0 and visible_points(pn.positivePoints) == 1
    widget.onAction("reset")
    assert not segment_array(env, pn).any() and pn.positivePoints.GetNumberOfControlPoints() == 0
    widget.onAction("redo")
    np.testing.assert_array_equal(segment_array(env, pn), proposal)
    assert visible_points(pn.positivePoints) == 1
    assert_clean()


def test_the_prompts_a_proposal_replaces_are_hidden_until_it_is_undone(env, proposal):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, [6.0, 0.0, 0.0])
    widget.onAction("box")
    real_slicer.placeROICorners(pn.boxROI, [-10.0, -10.0, -10.0], [10.0, 10.0, 10.0])
    assert widget.logic.canUndo and visible_points(pn.positivePoints) == 1
    press_propose(widget)
    # The engine dropped the click and the box (the proposal replaces them): their markers are hidden, not deleted.
    np.testing.assert_array_equal(segment_array(env, pn), proposal)
    assert [p[2] for p in points(pn.positivePoints)] == [False, True]
    assert pn.boxROI.GetDisplayNode().GetVisibility() == 0
    press_propose(widget)  # a second proposal hides the first one's click
    assert [p[2] for p in points(pn.positivePoints)] == [False, False, True]

    widget.onAction("undo")
    assert [p[2] for p in points(pn.positivePoints)] == [False, True], "only what the second one hid comes back"
    widget.onAction("undo")
    assert [p[2] for p in points(pn.positivePoints)] == [True] and pn.boxROI.GetDisplayNode().GetVisibility() == 1
    assert points(pn.positivePoints)[0][0] == (6.0, 0.0, 0.0)  # the user's click, shown again
    widget.onAction("redo")
    assert [p[2] for p in points(pn.positivePoints)] == [False, True]
    assert pn.boxROI.GetDisplayNode().GetVisibility() == 0
    widget.onAction("box")  # a new box is shown again
    assert pn.boxROI.GetDisplayNode().GetVisibility() == 1 and pn.boxROI.GetNumberOfControlPoints() == 0
    widget.onAction("accept")
    assert pn.positivePoints.GetNumberOfControlPoints() == 0
    assert_clean()
    assert state().errorDialogs == []


@pytest.mark.parametrize("otherSegments", ["protect", "overlap"])
def test_propose_never_damages_other_segments(env, proposal, otherSegments):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    otherID = segmentation.GetSegmentation().AddEmptySegment("", "other")
    slab = np.zeros(SHAPE, np.uint8)
    slab[13:17, :, :] = 1  # through the proposed ball
    real_slicer.writeSegment(segmentation, otherID, slab, env.volume)
    widget.ui.segmentSelector.setCurrentNode(segmentation)
    combo = widget.ui.otherSegmentsComboBox
    combo.setCurrentIndex(combo.findData(otherSegments))
    press_propose(widget)
    assert_clean()
    assert state().errorDialogs == [] and pn.segmentID and pn.segmentID != otherID
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, otherID, env.volume), slab > 0)
    expected = proposal & (slab == 0) if otherSegments == "protect" else proposal
    np.testing.assert_array_equal(segment_array(env, pn), expected)
    widget.onAction("undo")
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, otherID, env.volume), slab > 0)
    assert not segment_array(env, pn).any()


# ------------------------------------------------------------------------------------------ errors
def scene_snapshot(env, pn):
    segmentations = env.slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    return ([(node.GetID(), node.GetSegmentation().GetSegmentIDs()) for node in segmentations],
            pn.segmentationNode, pn.segmentID, points(pn.positivePoints), points(pn.negativePoints))


def test_nothing_found_shows_one_message_and_changes_nothing(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    before = scene_snapshot(env, pn)
    press_propose(widget, "absent")
    assert_clean()
    assert len(state().errorDialogs) == 1 and "No absent was found" in state().errorDialogs[0]
    assert scene_snapshot(env, pn) == before, "no segmentation or segment is left behind"
    assert not widget.logic.canUndo and not widget.logic.busy

    # With a target and a click: the segment, the markers and the history stay as they were.
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    mask = segment_array(env, pn)
    before = scene_snapshot(env, pn)
    press_propose(widget, "absent")
    assert len(state().errorDialogs) == 2 and "No absent was found" in state().errorDialogs[1]
    assert scene_snapshot(env, pn) == before
    np.testing.assert_array_equal(segment_array(env, pn), mask)
    widget.onAction("undo")
    assert not segment_array(env, pn).any() and pn.positivePoints.GetNumberOfControlPoints() == 0
    assert not widget.logic.canUndo

    # A segmentation chosen without a segment: the segment made for the proposal goes again, the node stays.
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen")
    widget.ui.segmentSelector.setCurrentNode(segmentation)
    before = scene_snapshot(env, pn)
    press_propose(widget, "absent")
    assert scene_snapshot(env, pn) == before and segmentation.GetSegmentation().GetNumberOfSegments() == 0
    press_propose(widget, "ball")  # and the next step starts on what is selected
    assert len(state().errorDialogs) == 3 and pn.segmentationNode is segmentation
    assert list(segmentation.GetSegmentation().GetSegmentIDs()) == [pn.segmentID] and segment_array(env, pn).any()
    assert_clean()


def test_an_unknown_class_or_a_model_without_head_is_refused_before_anything_changes(env):
    widget = env.make_widget()
    logic = widget.logic
    pn = logic.getParameterNode()
    before = scene_snapshot(env, pn)
    with pytest.raises(InvalidPromptError, match="cannot propose 'liver'; it proposes ball, absent"):
        logic.propose("liver")
    assert scene_snapshot(env, pn) == before and not logic.busy

    plain = env.make_widget(plain_session)
    before = scene_snapshot(env, pn)
    with pytest.raises(InvalidPromptError, match="no proposal head.*samvolseg teach"):
        plain.logic.propose("ball")
    assert scene_snapshot(env, pn) == before
    plain.onPropose()  # the button is disabled; pressed anyway (no class listed) it does nothing
    assert state().errorDialogs == []
    assert_clean()


def test_a_propose_pressed_while_a_step_runs_is_dropped(env):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    pressed = []

    def pump():  # the user presses Propose while the click's step runs
        if not pressed:
            pressed.append(True)
            press_propose(widget)

    widget.logic.processEvents = pump
    original = widget.logic.session.add_click

    def slow_click(*args, **kwargs):
        import time

        time.sleep(0.1)
        return original(*args, **kwargs)

    widget.logic.session.add_click = slow_click
    real_slicer.placePoint(pn.positivePoints, [6.0, 0.0, 0.0])
    assert_clean()
    assert pressed and state().errorDialogs == []
    assert len(widget.logic.session.clicks) == 1 and pn.positivePoints.GetNumberOfControlPoints() == 1
    widget.onAction("undo")
    assert not widget.logic.canUndo, "the click was the only step"


def test_the_logic_proposes_without_the_widget(env, proposal):
    """Console use: the target comes from the parameter node, as for a click."""
    slicer = env.slicer
    from SAMVolSegment import SAMVolSegmentLogic

    logic = SAMVolSegmentLogic()
    try:
        logic.sessionFactory = proposing_session
        pn = logic.getParameterNode()
        pn.inputVolume = env.volume
        logic.markers.ensureNodes()
        assert logic.proposalClasses() == ()
        logic.propose("ball")
        assert logic.proposalClasses() == CLASSES
        segmentation = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")[0]
        np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, pn.segmentID, env.volume), proposal)
        logic.addPoint(CENTRE, positive=False)
        assert not real_slicer.segmentArray(segmentation, pn.segmentID, env.volume)[15, 15, 15]
        logic.undo()
        logic.undo()
        assert not real_slicer.segmentArray(segmentation, pn.segmentID, env.volume).any()
    finally:
        logic.cleanup()


# ------------------------------------------------------------------------------------------ a real model
def test_the_bundled_model_with_a_constant_head_through_the_kept_model_path(env, tmp_path):
    """What the in-Slicer self-test does (SAMVolSegmentSelfTest.test_propose_refine_undo_redo): the Logic's own
    session factory on the model it keeps, that model given a constant head by ``modelFactory`` (as
    Testing/test_proposals.py builds one). The head proposes the whole model region, which holds the volume."""
    import shutil

    from test_proposals import _constant_head

    from SAMVolSegmentLib.model import load_model
    from SAMVolSegmentLib.model.registry import resolve_model_path

    snapshot = tmp_path / "default_snapshot.pt"  # training may replace the bundled file while tests run
    shutil.copyfile(resolve_model_path("default"), snapshot)

    def model_with_head(source, device, download, progress):
        model = load_model(str(snapshot), device="cpu")
        _constant_head(model, 5.0, classes=("everything",))
        return model

    k, j, i = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ball = np.sqrt((k - 15.0) ** 2 + (j - 15.0) ** 2 + (i - 15.0) ** 2) < 7
    real_slicer.setVolume(env.volume, (np.where(ball, 300.0, 20.0) + np.random.default_rng(1).normal(0, 5, SHAPE))
                        .astype(np.float32), ijk_to_ras())
    widget = env.make_widget(load=False)
    widget.logic.sessionFactory = env.module.local_session.localSession  # the default: a session on the kept model
    widget.logic.modelFactory = model_with_head
    widget.onLoadModel()
    assert [data for _text, data in widget.ui.proposeClassComboBox.items] == ["everything"]
    pn = widget.logic.getParameterNode()
    press_propose(widget, "everything")
    assert_clean()
    assert state().errorDialogs == []
    assert segment_array(env, pn).all()
    assert points(pn.positivePoints)[0][1:] == (True, True, "everything")
    real_slicer.placePoint(pn.negativePoints, [-12.0, -12.0, -12.0])  # voxel (3, 3, 3), in the background
    refined = segment_array(env, pn)
    assert not refined[3, 3, 3] and refined[25:, 25:, 25:].all()
    widget.onAction("undo")
    assert segment_array(env, pn).all()
    widget.onAction("undo")
    assert not segment_array(env, pn).any() and pn.positivePoints.GetNumberOfControlPoints() == 0
    assert_clean()
