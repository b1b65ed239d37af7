"""InteractiveSession: encoder once per ROI, multi-ROI policy, box, undo/redo, bad input changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib.engine.predictor import EmbeddingCache, Predictor
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.errors import InvalidImageError, InvalidPromptError, SessionStateError
from SAMVolSegmentLib.model import ModelConfig, build_model

TINY = dict(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=14,
    prompt_embed_dim=48,
    image_size=64,
    patch_size=16,
)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY)).eval()
    with torch.no_grad():  # bias the decoder output upwards so a random model predicts some foreground
        model.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.add_(0.3)
    return model


@pytest.fixture()
def ct_session(tiny_model):
    """A session on the default synthetic CT (closed after the test)."""
    image = ct_image()
    session = InteractiveSession(tiny_model)
    session.set_volume(image)
    yield session, image
    session.close()


def ct_image(size=(70, 60, 40), spacing=(0.8, 0.8, 2.0), direction=None) -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.normal(0, 20, size[::-1]).astype(np.float32)
    array[10:30, 20:40, 25:50] += 300
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def centre_ras(image: sitk.Image) -> np.ndarray:
    idx = [(s - 1) / 2 for s in image.GetSize()]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(idx)) * np.array([-1, -1, 1])


def test_encoder_runs_once_for_clicks_inside_the_roi(ct_session):
    session, image = ct_session
    centre = centre_ras(image)
    for offset, positive in [((0, 0, 0), True), ((3, -2, 1), False), ((-4, 2, 2), True), ((1, 1, -3), True)]:
        update = session.add_click(centre + np.array(offset), positive)
        assert update.mask.dtype == np.uint8
    assert session.predictor.encoder_calls == 1
    assert len(session.clicks) == 4


def test_update_matches_full_mask_and_geometry(ct_session):
    session, image = ct_session
    mirror = np.zeros(image.GetSize()[::-1], np.uint8)
    for offset in [(0, 0, 0), (5, 0, 0)]:
        session.add_click(centre_ras(image) + np.array(offset), True).apply_to(mirror)
    np.testing.assert_array_equal(mirror, session.mask_array_kji())
    out = session.mask()
    assert out.GetSize() == image.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-12)


def test_undo_redo_restore_exact_masks_without_recompute(ct_session):
    session, image = ct_session
    masks = [session.mask_array_kji()]
    for offset, positive in [((0, 0, 0), True), ((6, 3, 0), False), ((-5, 0, 2), True)]:
        session.add_click(centre_ras(image) + np.array(offset), positive)
        masks.append(session.mask_array_kji())
    calls = session.predictor.encoder_calls
    decode_before = session.last_timing
    mirror = masks[-1].copy()
    for expected in reversed(masks[:-1]):
        session.undo().apply_to(mirror)
        np.testing.assert_array_equal(session.mask_array_kji(), expected)
        np.testing.assert_array_equal(mirror, expected)
    assert not session.can_undo and session.undo().is_empty_box
    for expected in masks[1:]:
        session.redo().apply_to(mirror)
        np.testing.assert_array_equal(session.mask_array_kji(), expected)
        np.testing.assert_array_equal(mirror, expected)
    assert session.predictor.encoder_calls == calls
    assert session.last_timing["decode_s"] == 0.0 and decode_before is not None
    assert len(session.clicks) == 3


def test_new_click_after_undo_drops_redo(ct_session):
    session, image = ct_session
    session.add_click(centre_ras(image), True)
    session.add_click(centre_ras(image) + 4, False)
    session.undo()
    assert session.can_redo
    session.add_click(centre_ras(image) - 3, True)
    assert not session.can_redo
    assert [c.positive for c in session.clicks] == [True, True]


def test_reset_is_undoable(ct_session):
    session, image = ct_session
    session.add_click(centre_ras(image), True)
    before = session.mask_array_kji()
    session.reset()
    assert not session.mask_array_kji().any() and session.clicks == ()
    session.undo()
    np.testing.assert_array_equal(session.mask_array_kji(), before)
    assert len(session.clicks) == 1


def test_click_far_away_opens_and_caches_a_second_roi(tiny_model):
    image = ct_image(size=(200, 60, 40), spacing=(1.0, 1.0, 2.0))  # 200 mm along i: more than one 96 mm ROI
    session = InteractiveSession(tiny_model)
    session.set_volume(image)
    centre = centre_ras(image)
    left, right = centre + np.array([-70.0, 0, 0]), centre + np.array([70.0, 0, 0])
    session.add_click(left, True)
    calls = session.predictor.encoder_calls
    session.add_click(right, True)
    assert session.predictor.encoder_calls > calls
    calls = session.predictor.encoder_calls
    session.add_click(left + 1, False)  # back in the first ROI: cached
    session.add_click(right + 1, False)
    assert session.predictor.encoder_calls == calls
    session.close()


def test_box_clips_the_mask(ct_session):
    session, image = ct_session
    centre = centre_ras(image)
    lo, hi = centre - np.array([6.0, 5.0, 4.0]), centre + np.array([6.0, 5.0, 4.0])
    session.set_box(lo, hi)
    assert len(session.clicks) == 1 and session.clicks[0].positive
    mask = session.mask_array_kji()
    kji = np.argwhere(mask)
    if len(kji):
        ras = session.geometry.ijk_to_ras_points(kji[:, ::-1].astype(float))
        assert np.all(ras >= lo - 1e-6) and np.all(ras <= hi + 1e-6)


def test_oblique_volume_click_lands_near_click(tiny_model):
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image = ct_image(direction=tuple(rot.ravel()))
    session = InteractiveSession(tiny_model)
    session.set_volume(image)
    update = session.add_click(centre_ras(image), True)
    assert not update.is_empty_box
    (k0, k1), (j0, j1), (i0, i1) = update.bbox_kji
    size = image.GetSize()
    assert 0 <= k0 < k1 <= size[2] and 0 <= j0 < j1 <= size[1] and 0 <= i0 < i1 <= size[0]
    session.close()


@pytest.mark.parametrize(
    "point", [(1e6, 0, 0), (np.nan, 0, 0), (1, 2), "abc"], ids=["outside", "nan", "two-values", "text"]
)
def test_bad_click_changes_nothing(ct_session, point):
    session, image = ct_session
    session.add_click(centre_ras(image), True)
    before, clicks, can_undo = session.mask_array_kji(), session.clicks, session.can_undo
    with pytest.raises(InvalidPromptError):
        session.add_click(point, True)
    np.testing.assert_array_equal(session.mask_array_kji(), before)
    assert session.clicks == clicks and session.can_undo == can_undo


def test_bad_volume_keeps_previous_one(ct_session):
    session, image = ct_session
    session.add_click(centre_ras(image), True)
    before = session.mask_array_kji()
    bad = sitk.GetArrayFromImage(image)
    bad[0, 0, 0] = np.nan
    bad_image = sitk.GetImageFromArray(bad)
    bad_image.CopyInformation(image)
    with pytest.raises(InvalidImageError):
        session.set_volume(bad_image)
    np.testing.assert_array_equal(session.mask_array_kji(), before)
    assert len(session.clicks) == 1


def test_click_before_volume_is_a_clear_error(tiny_model):
    session = InteractiveSession(tiny_model)
    with pytest.raises(SessionStateError, match="set_volume"):
        session.add_click((0, 0, 0), True)
    session.close()


def test_same_volume_again_keeps_state_and_cache(ct_session):
    session, image = ct_session
    session.add_click(centre_ras(image), True)
    session.set_volume(image)
    assert len(session.clicks) == 1
    session.add_click(centre_ras(image) + 2, False)
    assert session.predictor.encoder_calls == 1


def test_shared_predictor_reuses_embeddings_across_sessions(tiny_model):
    image = ct_image()
    predictor = Predictor(tiny_model)
    for _ in range(2):
        session = InteractiveSession(predictor)
        session.set_volume(image)
        session.add_click(centre_ras(image), True)
        session.close()
    assert predictor.encoder_calls == 1


def test_embedding_cache_is_bounded_in_bytes():
    cache = EmbeddingCache(max_bytes=3 * 4 * 100)
    for i in range(5):
        cache.put(("vol", i), torch.zeros(100))
    assert len(cache) == 3 and cache.nbytes == 1200
    assert cache.get(("vol", 0)) is None and cache.get(("vol", 4)) is not None
    cache.get(("vol", 2))  # now most recent: survives the next insert
    cache.put(("vol", 9), torch.zeros(100))
    assert ("vol", 2) in cache and ("vol", 3) not in cache
    cache.put(("big", 0), torch.zeros(1000))  # larger than the budget: not cached, nothing evicted
    assert ("big", 0) not in cache and len(cache) == 3
    assert cache.invalidate("vol") == 3 and cache.nbytes == 0


def test_undo_history_is_bounded_in_bytes(tiny_model):
    image = ct_image()
    with InteractiveSession(tiny_model, max_undo_bytes=1) as session:  # room for the newest step only
        session.set_volume(image)
        session.add_click(centre_ras(image), True)
        session.add_click(centre_ras(image) + 2, False)
        before_last = session.mask_array_kji()
        session.add_click(centre_ras(image) - 2, True)
        session.undo()
        np.testing.assert_array_equal(session.mask_array_kji(), before_last)
        assert not session.can_undo
