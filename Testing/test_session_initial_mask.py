"""InteractiveSession against the session protocol: edit an existing mask, annotations on steps, readiness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.engine.session_protocol import REQUIRED_MEMBERS, SegmentationSession, check_session
from SAMVolSegmentLib.errors import InvalidPromptError, SessionStateError


class _Config:
    image_size = 32
    low_res_size = 8


class BallModel(torch.nn.Module):
    """A transparent model: the mask prompt plus a ±ball of logits around each click (low-res voxels).

    With it, whatever the session feeds as the mask prompt is visible in the output, so a test can tell a
    session that seeds the model with the existing mask from one that does not.
    """

    model_id = "test:ball"
    config = _Config()

    def __init__(self, radius_low: float = 1.0) -> None:
        super().__init__()
        self.radius_low = radius_low

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return torch.zeros((1, 1, 1, 1, 1))

    def decode_prompts(self, embedding, points, labels, mask_logits):
        low = self.config.low_res_size
        grid = torch.stack(torch.meshgrid(*(torch.arange(low, dtype=torch.float32),) * 3, indexing="ij"), -1)
        logits = mask_logits.clone().float()
        scale = self.config.image_size / low
        for point, label in zip(points[0], labels[0]):
            centre = (point + 0.5) / scale - 0.5
            inside = (grid - centre).norm(dim=-1) <= self.radius_low
            logits[0, 0][inside] = 10.0 if int(label) == 1 else -10.0
        return logits, torch.ones((1, 1))


SHAPE_KJI = (30, 30, 30)


def ijk_to_ras() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (-15.0, -15.0, -15.0)
    return matrix


def cube_mask() -> np.ndarray:
    mask = np.zeros(SHAPE_KJI, np.uint8)
    mask[4:26, 4:26, 4:26] = 1
    return mask


@pytest.fixture()
def session():
    s = InteractiveSession(BallModel(), auto_extend=False)
    rng = np.random.default_rng(0)
    s.set_volume(rng.normal(100, 10, SHAPE_KJI).astype(np.float32), ijk_to_ras())
    s.wait_until_ready()
    yield s
    s.close()


def centre_ras() -> np.ndarray:
    return np.array([0.0, 0.0, 0.0])  # voxel (15, 15, 15): inside the cube


def test_interactive_session_satisfies_the_protocol(session):
    assert isinstance(session, SegmentationSession)
    check_session(session)
    assert session.model_id == "test:ball" and session.is_ready
    for name in REQUIRED_MEMBERS:
        assert hasattr(session, name), name


def test_check_session_names_what_is_missing():
    class Half:
        def add_click(self, point_ras, positive=True):
            return None

    with pytest.raises(TypeError, match="lacks .*undo"):
        check_session(Half())


def test_negative_click_removes_voxels_of_the_initial_mask(session):
    update = session.set_initial_mask(cube_mask())
    np.testing.assert_array_equal(session.mask_array_kji(), cube_mask())
    assert not update.is_empty_box and not session.can_undo  # the start of an edit is not a step
    session.add_click(centre_ras(), positive=False)
    mask = session.mask_array_kji()
    assert mask[15, 15, 15] == 0, "the negative click must remove the voxel it was placed on"
    assert mask[6, 6, 6] == 1, "voxels of the initial mask away from the click stay"
    assert mask.sum() < cube_mask().sum()


def test_without_initial_mask_a_negative_click_has_nothing_to_remove(session):
    session.add_click(centre_ras(), positive=False)
    assert session.mask_array_kji().sum() == 0


def test_undo_and_reset_return_to_the_initial_mask(session):
    session.set_initial_mask(cube_mask())
    session.add_click(centre_ras(), positive=False)
    session.add_click(np.array([8.0, 8.0, 8.0]), positive=True)
    session.undo()
    session.undo()
    np.testing.assert_array_equal(session.mask_array_kji(), cube_mask())
    session.redo()
    session.redo()
    session.reset()
    np.testing.assert_array_equal(session.mask_array_kji(), cube_mask())
    assert session.clicks == ()
    session.undo()  # reset is a step
    assert session.mask_array_kji()[15, 15, 15] == 0


def test_initial_mask_none_and_wrong_shape(session):
    session.set_initial_mask(cube_mask())
    update = session.set_initial_mask(None)
    assert session.mask_array_kji().sum() == 0 and update.mask.sum() == 0 and not update.is_empty_box
    with pytest.raises(InvalidPromptError, match="shape"):
        session.set_initial_mask(np.zeros((3, 3, 3), np.uint8))
    assert session.mask_array_kji().sum() == 0


class Record:
    def __init__(self, name: str, nbytes: int = 0) -> None:
        self.name, self.nbytes = name, nbytes


def test_annotations_travel_with_their_steps(session):
    with pytest.raises(SessionStateError):
        session.annotate_last_step(Record("none"))
    session.add_click(centre_ras(), True)
    session.annotate_last_step(Record("first"))
    session.add_click(np.array([5.0, 0.0, 0.0]), True)
    assert session.last_annotation is None  # a new step starts without one
    session.annotate_last_step(Record("second"))
    session.undo()
    assert session.last_annotation.name == "second"
    session.undo()
    assert session.last_annotation.name == "first"
    session.redo()
    assert session.last_annotation.name == "first"


def test_annotation_bytes_count_towards_the_history_bound():
    s = InteractiveSession(BallModel(), auto_extend=False, max_undo_bytes=1000)
    try:
        s.set_volume(np.random.default_rng(1).normal(0, 1, SHAPE_KJI).astype(np.float32), ijk_to_ras())
        for n in range(3):
            s.add_click(np.array([float(n), 0.0, 0.0]), True)
            s.annotate_last_step(Record(str(n), nbytes=600))
        undone = 0
        while s.can_undo:
            s.undo()
            undone += 1
        assert undone == 1, "600-byte annotations under a 1000-byte bound leave only the newest step"
    finally:
        s.close()


def test_is_ready_is_false_before_a_volume():
    s = InteractiveSession(BallModel())
    try:
        assert not s.is_ready
    finally:
        s.close()
