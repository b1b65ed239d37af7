"""InteractiveSession under misuse (issue 14): closed sessions, boxes over several ROIs, reads racing steps,
non-bool click signs, oversized model grids and unbounded click histories. Every refused call changes nothing.

The transparent ``BallModel`` (a ±ball of logits around each click) makes the masks predictable without a
trained model, and stays fast.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
from test_session_initial_mask import BallModel

from SAMVolSegmentLib.engine import session as session_module
from SAMVolSegmentLib.engine.mask_update import MaskUpdate
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.errors import InvalidImageError, InvalidPromptError, SessionStateError


def volume(shape_kji=(30, 30, 30), spacing=1.0, seed=0):
    """A noise volume with a bright cube; returns (array (k, j, i), ijk_to_ras 4×4) centred on RAS 0."""
    array = np.random.default_rng(seed).normal(0.0, 1.0, shape_kji).astype(np.float32)
    matrix = np.diag([spacing, spacing, spacing, 1.0])
    matrix[:3, 3] = -(np.array(shape_kji[::-1]) - 1) / 2 * spacing
    return array, matrix


def voxel_ras(matrix, index_kji):
    return (matrix[:3, :3] @ np.asarray(index_kji[::-1], float)) + matrix[:3, 3]


@pytest.fixture()
def session():
    s = InteractiveSession(BallModel(radius_low=1.5))
    yield s
    s.close()


def state_of(s):
    return s.mask_array_kji(), s.clicks, s.can_undo, s.can_redo, s.volume.fingerprint


def assert_same_state(s, before):
    mask, clicks, can_undo, can_redo, fingerprint = before
    np.testing.assert_array_equal(s.mask_array_kji(), mask)
    assert s.clicks == clicks and s.can_undo == can_undo and s.can_redo == can_redo
    assert s.volume.fingerprint == fingerprint


# ---------------------------------------------------------------- 2: set_volume after close
def test_set_volume_after_close_is_refused_and_changes_nothing(session):
    array, matrix = volume()
    session.set_volume(array, matrix)
    session.add_click((0.0, 0.0, 0.0), True)
    before = state_of(session)
    session.close()
    other, other_matrix = volume((20, 24, 28), seed=1)
    with pytest.raises(SessionStateError, match="closed"):
        session.set_volume(other, other_matrix)
    assert_same_state(session, before)
    with pytest.raises(SessionStateError, match="closed"):
        session.add_click((1.0, 0.0, 0.0), True)
    assert_same_state(session, before)


# ---------------------------------------------------------------- 3: a box bounds the whole mask
def test_a_box_bounds_the_mask_of_every_roi(session):
    array, matrix = volume((20, 20, 240))  # 240 mm along R: two clicks 200 mm apart open two 48 mm ROIs
    session.set_volume(array, matrix)
    first, second = np.array([-100.0, 0.0, 0.0]), np.array([100.0, 0.0, 0.0])
    session.add_click(first, True)
    session.add_click(second, True)
    mask = session.mask_array_kji()
    ras = np.array([voxel_ras(matrix, kji) for kji in np.argwhere(mask)])
    assert np.any(ras[:, 0] < 0) and np.any(ras[:, 0] > 0)  # both objects are in the mask
    lo, hi = second - 6.0, second + 6.0
    update = session.set_box(lo, hi)
    mask = session.mask_array_kji()
    ras = np.array([voxel_ras(matrix, kji) for kji in np.argwhere(mask)])
    assert len(ras) and np.all(ras >= lo - 1e-6) and np.all(ras <= hi + 1e-6)
    session.undo()
    restored = session.mask_array_kji()
    assert np.any(restored[:, :, :100])  # undo brings the first object back
    update_again = session.redo()
    np.testing.assert_array_equal(session.mask_array_kji(), mask)
    assert update_again.bbox_kji == update.bbox_kji


# ---------------------------------------------------------------- 4: reads take the lock
def test_mask_reads_never_see_a_half_restored_mask(session, monkeypatch):
    array, matrix = volume()
    session.set_volume(array, matrix)
    session.add_click((0.0, 0.0, 0.0), True)
    full = session.mask_array_kji()
    assert full.any()
    half_written, read_done = threading.Event(), threading.Event()
    original = MaskUpdate.apply_to

    def slow_apply(self, label_kji):
        # Write the first half of the box, let a reader in, then the rest (a preempted undo, made deterministic).
        if threading.current_thread().name == "undo" and not self.is_empty_box:
            half = self.mask.shape[0] // 2
            (k0, _), jj, ii = self.bbox_kji
            label_kji[k0 : k0 + half, jj[0] : jj[1], ii[0] : ii[1]] = self.mask[:half]
            half_written.set()
            read_done.wait(timeout=0.5)
        original(self, label_kji)

    monkeypatch.setattr(MaskUpdate, "apply_to", slow_apply)
    seen = {}

    def read():
        half_written.wait(timeout=5)
        seen["mask"] = session.mask_array_kji()
        seen["image"] = sitk.GetArrayFromImage(session.mask())
        read_done.set()

    undo = threading.Thread(target=session.undo, name="undo")
    reader = threading.Thread(target=read)
    undo.start()
    reader.start()
    undo.join(5)
    reader.join(5)
    assert half_written.is_set()
    for key in ("mask", "image"):
        assert not seen[key].any(), f"{key} read a state that never existed ({int(seen[key].sum())} voxels)"


def test_mask_read_racing_set_volume_is_consistent(session, monkeypatch):
    array, matrix = volume()
    session.set_volume(array, matrix)
    switched, read_done = threading.Event(), threading.Event()
    original = session_module.np.zeros

    def slow_zeros(*args, **kwargs):
        out = original(*args, **kwargs)
        if threading.current_thread().name == "switch":
            switched.set()
            read_done.wait(timeout=0.5)
        return out

    monkeypatch.setattr(session_module.np, "zeros", slow_zeros)
    errors = []

    def read():
        switched.wait(timeout=5)
        try:
            image = session.mask()
            assert image.GetSize()[::-1] == sitk.GetArrayViewFromImage(image).shape
        except Exception as exc:  # the race is what this test looks for
            errors.append(exc)
        read_done.set()

    other, other_matrix = volume((20, 24, 28), seed=1)
    switch = threading.Thread(target=session.set_volume, args=(other, other_matrix), name="switch")
    reader = threading.Thread(target=read)
    switch.start()
    reader.start()
    switch.join(5)
    reader.join(5)
    monkeypatch.undo()
    assert switched.is_set() and not errors, errors
    assert session.mask().GetSize() == (28, 24, 20)


# ---------------------------------------------------------------- 5: click sign is a bool
@pytest.mark.parametrize("sign", ["false", "negative", float("nan"), 0, 1.0, None], ids=repr)
def test_a_click_sign_that_is_not_a_bool_is_refused(session, sign):
    array, matrix = volume()
    session.set_volume(array, matrix)
    session.add_click((0.0, 0.0, 0.0), True)
    before = state_of(session)
    with pytest.raises(InvalidPromptError, match="True or False"):
        session.add_click((3.0, 0.0, 0.0), sign)
    assert_same_state(session, before)


def test_numpy_bool_signs_are_accepted(session):
    array, matrix = volume()
    session.set_volume(array, matrix)
    session.add_click((0.0, 0.0, 0.0), np.bool_(True))
    session.add_click((0.0, 0.0, 0.0), np.array([False])[0])
    assert [c.positive for c in session.clicks] == [True, False]
    assert all(type(c.positive) is bool for c in session.clicks)


# ---------------------------------------------------------------- 7: bounded model grid
def test_a_volume_with_a_huge_model_grid_is_refused_before_any_state_changes(session):
    array, matrix = volume()
    session.set_volume(array, matrix)
    session.add_click((0.0, 0.0, 0.0), True)
    before = state_of(session)
    coarse, coarse_matrix = volume((48, 48, 48), spacing=20.0)  # 960 mm cube: a 640³ model grid (1 GB float32)
    with pytest.raises(InvalidImageError, match="model grid"):
        session.set_volume(coarse, coarse_matrix)
    assert_same_state(session, before)
    session.add_click((2.0, 0.0, 0.0), True)  # the session still works on its volume


# ---------------------------------------------------------------- 12: bounded click history
def test_clicks_beyond_the_limit_are_refused(session, monkeypatch):
    monkeypatch.setattr(session_module, "MAX_CLICKS", 3)
    array, matrix = volume()
    session.set_volume(array, matrix)
    for x in (0.0, 1.0, 2.0):
        session.add_click((x, 0.0, 0.0), True)
    before = state_of(session)
    with pytest.raises(InvalidPromptError, match="3 clicks"):
        session.add_click((3.0, 0.0, 0.0), True)
    assert_same_state(session, before)
    session.reset()  # a reset starts the count again
    session.add_click((3.0, 0.0, 0.0), True)


def test_clicks_the_engine_adds_do_not_count_towards_the_limit(session, monkeypatch):
    """A box's centre click (like a proposal's anchor or an extension seed) comes on top of the caller's
    MAX_CLICKS, so prompts within the limit never fail half-way."""
    monkeypatch.setattr(session_module, "MAX_CLICKS", 3)
    array, matrix = volume()
    session.set_volume(array, matrix)
    session.set_box((-8.0, -8.0, -8.0), (8.0, 8.0, 8.0))
    for x in (0.0, 1.0, 2.0):
        session.add_click((x, 0.0, 0.0), x != 1.0)
    assert len(session.clicks) == 4
    before = state_of(session)
    with pytest.raises(InvalidPromptError, match="3 clicks"):
        session.add_click((3.0, 0.0, 0.0), True)
    assert_same_state(session, before)
    session.undo()  # undo gives a click back
    session.add_click((3.0, 0.0, 0.0), True)


def test_array_prompts_within_the_limit_run_and_beyond_it_are_refused_before_the_work(monkeypatch):
    from SAMVolSegmentLib.batch import segment
    from SAMVolSegmentLib.engine import prompts_io

    monkeypatch.setattr(session_module, "MAX_CLICKS", 3)
    monkeypatch.setattr(prompts_io, "MAX_CLICKS", 3)
    array, matrix = volume()
    points = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (3.0, 0.0, 0.0)]
    with pytest.raises(InvalidPromptError, match="4 points; a mask takes at most 3"):
        segment(array, points, [True] * 4, model="no-such-model-file.pt", ijk_to_ras=matrix)  # before the model
    box = ((-8.0, -8.0, -8.0), (8.0, 8.0, 8.0))
    mask = segment(array, points[:3], [True, False, True], box, model=BallModel(radius_low=1.5), ijk_to_ras=matrix)
    assert mask.shape == array.shape and mask.any()


# ---------------------------------------------------------------- 14: readable numbers in messages
def test_a_far_click_is_reported_with_its_real_coordinates(session):
    array, matrix = volume()
    session.set_volume(array, matrix)
    with pytest.raises(InvalidPromptError) as info:
        session.add_click((1e308, 0.0, 0.0), True)
    message = str(info.value)
    assert "inf" not in message and "RAS [1e+308, 0.0, 0.0]" in message
    # The distance too: 1e+308 mm, not its 309 digits.
    assert "1e+308 mm beyond its R side" in message and len(message) < 400, message
    with pytest.raises(InvalidPromptError) as info:
        session.add_click((-3e7, 0.0, 0.0), True)
    assert "-3e+07, 0.0, 0.0" in str(info.value) and "3e+07 mm beyond its L side" in str(info.value)
    assert session.clicks == ()


def test_an_lps_click_is_named_as_probably_lps_and_a_far_one_says_which_way(session):
    array, matrix = volume()
    matrix[:3, 3] += (40.0, 50.0, 0.0)  # off the origin so that negating x and y leaves the volume
    session.set_volume(array, matrix)
    inside_ras = voxel_ras(matrix, (15, 15, 15))
    with pytest.raises(InvalidPromptError, match="probably LPS") as info:
        session.add_click(inside_ras * (-1.0, -1.0, 1.0), True)
    assert "beyond its L side" in str(info.value) and "beyond its P side" in str(info.value)
    with pytest.raises(InvalidPromptError, match="beyond its S side") as info:
        session.add_click(inside_ras + (0.0, 0.0, 100.0), True)
    assert "LPS" in str(info.value) and "probably" not in str(info.value)
    assert session.clicks == ()


def test_a_worker_shut_down_twice_stays_quiet():
    worker = session_module._DaemonWorker("twice")
    assert worker.submit(lambda: 1).result(5) == 1
    worker.shutdown()
    worker.shutdown()  # the first call's stop marker is still queued: no TypeError
    with pytest.raises(SessionStateError):
        worker.submit(lambda: 2)
